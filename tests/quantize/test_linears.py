"""Which Linear layers a weight-quantization stage changes, and what it leaves in float."""

import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.quantize import DynamicInt8Config, RTNConfig, quantize_
from netchisel.quantize.formats import Int8Embedding, Int8WeightOnlyLinear


def test_convolutions_are_reported_once_and_left_float():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(net, RTNConfig(bits=8))
    messages = [str(w.message) for w in caught if "no kernel" in str(w.message)]
    assert len(messages) == 1 and "0 (Conv2d), 1 (Conv2d)" in messages[0]
    assert isinstance(net[0], nn.Conv2d) and isinstance(net[3], Int8WeightOnlyLinear)


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


@pytest.mark.parametrize("training", [True, False])
def test_new_layers_take_the_models_mode(training: bool) -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).train(training)
    quantize_(net, RTNConfig(bits=8))
    assert [m.training for m in net.modules()] == [training] * 4
