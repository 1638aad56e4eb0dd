import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.prune import UnstructuredConfig, prune_
from netchisel.quantize import DynamicInt8Config, RTNConfig, quantize_
from netchisel.quantize.formats import (
    DynamicInt8Linear,
    Int4WeightOnlyLinear,
    Int8Embedding,
    Int8WeightOnlyLinear,
    PackedLinear,
)
from netchisel.quantize.primitives import QuantSpec, choose_qparams
from netchisel.stages import get_stage


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def test_rtn_picks_the_kernel_module_per_bit_width():
    net = quantize_(_mlp(), RTNConfig(bits=4, group_size=64, per_layer_bits={"4": 8, "2": 3}))
    assert [type(net[i]) for i in (0, 2, 4)] == [
        Int4WeightOnlyLinear,
        PackedLinear,
        Int8WeightOnlyLinear,
    ]


@pytest.mark.parametrize("bits, bound", [(8, 0.01), (4, 0.12)])
def test_rtn_output_error_is_bounded(bits, bound):
    float_net = _mlp().eval()
    x = torch.randn(32, 256)
    expected = float_net(x).detach()
    net = quantize_(_mlp(), RTNConfig(bits=bits, group_size=None if bits == 8 else 64))
    assert float((net(x).detach() - expected).norm() / expected.norm()) < bound


def test_int4_artifact_is_under_a_sixth_of_fp32(tmp_path):
    net = _mlp()
    fp32 = nc.save(net, tmp_path / "fp32")
    int4 = nc.save(quantize_(net, RTNConfig(bits=4, group_size=64)), tmp_path / "int4")
    fp32_bytes = (fp32 / "model.safetensors").stat().st_size
    int4_bytes = (int4 / "model.safetensors").stat().st_size
    assert int4_bytes <= fp32_bytes / 6
    x = torch.randn(3, 256)
    assert torch.equal(nc.load(int4)(x), net(x))


def test_dynamic_int8_replaces_every_linear():
    net = quantize_(_mlp(), DynamicInt8Config(exclude=("4",)))
    assert [type(net[i]) for i in (0, 2, 4)] == [DynamicInt8Linear, DynamicInt8Linear, nn.Linear]


def test_dynamic_int8_modes_reach_the_layers_and_bad_modes_are_one_line():
    net = quantize_(_mlp(), DynamicInt8Config(activations="per_tensor", weights="per_tensor"))
    assert net[0].activations == "per_tensor" and net[0].weight_scale.unique().numel() == 1
    reference = _mlp()
    with torch.no_grad():
        reference[0].weight[0, 0] = 5.0  # an outlier that mse clips
    scales = []
    for method in ("minmax", "mse"):
        config = DynamicInt8Config(weights="per_tensor", scale_method=method)
        net = quantize_(copy.deepcopy(reference), config)
        scale, _ = choose_qparams(reference[0].weight, QuantSpec(8, granularity="tensor"), method)
        assert torch.equal(net[0].weight_scale, scale.reshape(-1).expand(net[0].out_features))
        scales.append(scale)
    assert not torch.equal(*scales)  # so the method did reach the layer
    with pytest.raises(ConfigError, match="activations"):
        DynamicInt8Config(activations="per_row")
    with pytest.raises(ConfigError, match="scale_method"):
        DynamicInt8Config(scale_method="max")


def test_pruned_zeros_survive_and_masks_are_forgotten():
    net = _mlp()
    prune_(net, UnstructuredConfig(sparsity=0.5))
    assert masks_of(net)
    quantize_(net, RTNConfig(bits=8))
    assert masks_of(net) == {}
    assert float((net[0].weight_int8 == 0).float().mean()) >= 0.5


def test_convolutions_are_reported_once_and_left_float():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(net, RTNConfig(bits=8))
    messages = [str(w.message) for w in caught if "no kernel" in str(w.message)]
    assert len(messages) == 1 and "0 (Conv2d), 1 (Conv2d)" in messages[0]
    assert isinstance(net[0], nn.Conv2d) and isinstance(net[3], Int8WeightOnlyLinear)


def test_a_failure_leaves_the_model_as_it_was():
    net = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # Layer 4 has 64 inputs: 3-bit groups of 128 do not divide it (layer 0 would have worked).
    with pytest.raises(ConfigError, match="layer 4: group_size 128 does not divide in_features 64"):
        quantize_(net, RTNConfig(bits=3, group_size=128, layers=("0", "4")))
    assert all(isinstance(net[i], nn.Linear) for i in (0, 2, 4))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bits": 9}, "quantize.rtn: bits=9 is outside 1-8"),
        ({"bits": 4, "per_layer_bits": {"0": 0}}, r"per_layer_bits\['0'\]=0"),
        ({"scale_method": "max"}, "unknown scale_method 'max'"),
        ({"bits": 1, "symmetric": True}, "1-bit"),
        ({"layers": ["nope"]}, "include pattern 'nope' matches no layer"),
    ],
)
def test_bad_configs_name_the_value(data, message):
    stage = get_stage("quantize.rtn")
    with pytest.raises(ConfigError, match=message):
        quantize_(_mlp(), stage.config_class.from_dict(data))


def test_a_model_without_linears_is_an_error():
    with pytest.raises(ConfigError, match="no Linear layer"):
        quantize_(nn.Sequential(nn.Conv2d(1, 1, 1)), DynamicInt8Config())


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.head = nn.Linear(32, 50)

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_embeddings_become_int8_rows_within_half_a_step(tmp_path):
    torch.manual_seed(0)
    net = _Tagger()
    table = net.embed.weight.detach().clone()
    quantize_(net, RTNConfig(bits=8, embeddings=True))
    assert isinstance(net.embed, Int8Embedding)
    ids = torch.arange(50)
    looked_up = net.embed(ids)
    step = net.embed.scales[:, None]
    assert bool(((looked_up - table).abs() <= step / 2 + 1e-7).all())
    saved = nc.save(net, tmp_path / "m")
    # int8 table + a float scale per row, int8 head + a bf16 scale per row, float bias.
    stored = sum(
        t.numel() * t.element_size() for t in load_file(str(saved / "model.safetensors")).values()
    )
    assert stored == 50 * 32 + 50 * 4 + 50 * 32 + 50 * 2 + 50 * 4
    assert torch.equal(nc.load(saved, trust=[_Tagger])(ids), net(ids))


def test_embeddings_are_listed_as_float_unless_asked():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(_Tagger(), RTNConfig(bits=8))
    assert any("embed (Embedding)" in str(w.message) for w in caught)


def test_a_quantized_model_keeps_its_parameter_count_in_profiles():
    from netchisel.measure.size import count_params

    net = _mlp()
    prune_(net, UnstructuredConfig(sparsity=0.5, layers=("0",)))
    dense_total, dense_nonzero, _ = count_params(net)
    quantize_(net, RTNConfig(bits=4, group_size=64, embeddings=True))
    total, nonzero, by_module = count_params(net)
    assert total == dense_total == 256 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert by_module["0"] == 256 * 128 + 128
    assert nonzero <= dense_nonzero  # pruned zeros stay zero; rounding may add a few
    assert nonzero >= dense_nonzero - 0.05 * total
