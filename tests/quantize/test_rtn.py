"""quantize.rtn: round to nearest into the kernel formats."""

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.prune import UnstructuredConfig, prune_
from netchisel.quantize import RTNConfig, quantize_
from netchisel.quantize.formats import Int4WeightOnlyLinear, Int8WeightOnlyLinear, PackedLinear
from netchisel.stages import get_stage


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def test_rtn_picks_the_kernel_module_per_bit_width():
    net = quantize_(mlp(), RTNConfig(bits=4, group_size=64, per_layer_bits={"4": 8, "2": 3}))
    assert [type(net[i]) for i in (0, 2, 4)] == [
        Int4WeightOnlyLinear,
        PackedLinear,
        Int8WeightOnlyLinear,
    ]


@pytest.mark.parametrize("bits, bound", [(8, 0.01), (4, 0.12)])
def test_rtn_output_error_is_bounded(bits, bound):
    float_net = mlp().eval()
    x = torch.randn(32, 256)
    expected = float_net(x).detach()
    net = quantize_(mlp(), RTNConfig(bits=bits, group_size=None if bits == 8 else 64))
    assert float((net(x).detach() - expected).norm() / expected.norm()) < bound


def test_int4_artifact_is_under_a_sixth_of_fp32(tmp_path):
    net = mlp()
    fp32 = nc.save(net, tmp_path / "fp32")
    int4 = nc.save(quantize_(net, RTNConfig(bits=4, group_size=64)), tmp_path / "int4")
    fp32_bytes = (fp32 / "model.safetensors").stat().st_size
    int4_bytes = (int4 / "model.safetensors").stat().st_size
    assert int4_bytes <= fp32_bytes / 6
    x = torch.randn(3, 256)
    assert torch.equal(nc.load(int4)(x), net(x))


def test_pruned_zeros_survive_and_masks_are_forgotten():
    net = mlp()
    prune_(net, UnstructuredConfig(sparsity=0.5))
    assert masks_of(net)
    quantize_(net, RTNConfig(bits=8))
    assert masks_of(net) == {}
    assert float((net[0].weight_int8 == 0).float().mean()) >= 0.5


def test_a_failure_leaves_the_model_as_it_was():
    net = mlp()
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
        quantize_(mlp(), stage.config_class.from_dict(data))


def test_a_quantized_model_keeps_its_parameter_count_in_profiles():
    from netchisel.measure.size import count_params

    net = mlp()
    prune_(net, UnstructuredConfig(sparsity=0.5, layers=("0",)))
    dense_total, dense_nonzero, _ = count_params(net)
    quantize_(net, RTNConfig(bits=4, group_size=64, embeddings=True))
    total, nonzero, by_module = count_params(net)
    assert total == dense_total == 256 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert by_module["0"] == 256 * 128 + 128
    assert nonzero <= dense_nonzero  # pruned zeros stay zero; rounding may add a few
    assert nonzero >= dense_nonzero - 0.05 * total
