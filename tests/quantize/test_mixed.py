import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import classification_task
from netchisel.core.train import TrainSettings, fit
from netchisel.quantize import MixedPrecisionConfig, RTNConfig, quantize_
from netchisel.quantize.formats import Int4WeightOnlyLinear, Int8WeightOnlyLinear, PackedLinear
from netchisel.quantize.mixed import allocate, layer_sensitivity


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g)
    logits = x[:, :8] @ torch.randn(8, 4, generator=g)
    y = (logits + 0.5 * torch.randn(512, 4, generator=g)).argmax(dim=1)  # some label noise
    data = TensorDataset(x, y)
    return classification_task({"train": data, "val": data}, 64)


def _trained(task):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4)
    )
    fit(net, task, TrainSettings(steps=60, lr=1e-2), Context(task, quiet=True))
    return net


def test_allocate_prefers_cheap_losses_and_meets_the_budget_exactly():
    loss = {"a": [1.0, 1.01, 1.5], "b": [1.0, 2.0, 9.0], "c": [1.0, 1.02, 1.03]}
    sizes = {"a": 100, "b": 100, "c": 200}
    chosen = allocate(loss, sizes, [8, 4, 2], 4.0)
    assert chosen == {"a": 4, "b": 8, "c": 2}
    assert sum(chosen[n] * sizes[n] for n in sizes) / sum(sizes.values()) == 4.0


def test_sensitivity_restores_weights_bit_for_bit_and_grows_as_bits_shrink():
    task = _task()
    net = _trained(task)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    layers = {"0": net[0], "2": net[2], "4": net[4]}
    loss = layer_sensitivity(net, task, layers, [8, 4, 2], RTNConfig(group_size=32), samples=256)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for name in layers:
        assert abs(loss[name][0] - loss[""][0]) < 0.01  # 8 bits: nearly free
        assert loss[name][2] > loss[name][0]  # 2 bits: measurably worse


def test_mixed_beats_uniform_3_bit_at_the_same_average_bits():
    task = _task()
    net = _trained(task)
    batches = task.calibration_batches(256)

    @torch.no_grad()
    def loss(model):
        return sum(float(task.loss_fn(model, b)) for b in batches) / len(batches)

    uniform = quantize_(_trained(task), RTNConfig(bits=3, group_size=32))
    mixed = quantize_(
        net, MixedPrecisionConfig(candidates=(8, 4, 3, 2), average_bits=3.0, group_size=32), task
    )
    kinds = {type(m) for m in mixed.modules()}
    assert kinds & {Int8WeightOnlyLinear, Int4WeightOnlyLinear, PackedLinear}
    bits = {n: m.bits for n, m in mixed.named_children() if hasattr(m, "bits")}
    sizes = {"0": 32 * 128, "2": 128 * 128, "4": 128 * 4}
    assert sum(bits[n] * sizes[n] for n in sizes) / sum(sizes.values()) <= 3.0
    assert loss(mixed) < 0.95 * loss(uniform)  # measured 0.0194 vs 0.0218


@pytest.mark.parametrize(
    "data, message",
    [
        ({"candidates": []}, "candidates is empty"),
        ({"candidates": [8, 9]}, "candidate bits=9"),
        ({"candidates": [8, 4], "average_bits": 3}, "below the narrowest candidate"),
    ],
)
def test_bad_budgets_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        MixedPrecisionConfig.from_dict(data)


def test_needs_a_task():
    with pytest.raises(ConfigError, match="needs a task"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), MixedPrecisionConfig())
