from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import Task, classification_task
from netchisel.core.train import TrainSettings, fit
from netchisel.prune import UnstructuredConfig, prune_
from netchisel.quantize import QATConfig, quantize_
from netchisel.quantize.fake import InputFakeQuant
from netchisel.quantize.formats import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    PackedConv2d,
    PackedLinear,
)
from netchisel.quantize.qat import quantize_qat


def _task(n: int = 512) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = x[:, :4].argmax(dim=1)
    split = 3 * n // 4
    return classification_task(
        {"train": TensorDataset(x[:split], y[:split]), "val": TensorDataset(x[split:], y[split:])},
        32,
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Task]:
    """A 16-32-4 MLP trained in float on a 4-class problem (about 92% on its val split)."""
    torch.manual_seed(0)
    task = _task()
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    fit(net, task, TrainSettings(steps=200, lr=1e-2), Context(task, quiet=True))
    return net, task


def _accuracy(net: nn.Module, task: Task) -> float:
    return task.evaluate(net)["accuracy"]


def test_qat_recovers_the_accuracy_ptq_loses(trained: tuple[nn.Module, Task]) -> None:
    base, task = trained
    assert _accuracy(base, task) >= 90.0
    results = {}
    for name, config in {
        "ptq2": QATConfig(bits=2, per_channel=True, steps=0),
        "lsq2": QATConfig(bits=2, per_channel=True, steps=150),
        "lsq4": QATConfig(bits=4, per_channel=True, steps=150),
        "ste2": QATConfig(bits=2, per_channel=True, steps=150, method="ste", scale_method="minmax"),
    }.items():
        net = copy.deepcopy(base)
        quantize_(net, config, task)
        results[name] = _accuracy(net, task)
    # Measured: float 92.2, PTQ 2-bit 75.8, LSQ 2-bit 89.8, LSQ 4-bit 94.5 (128 val samples).
    assert results["ptq2"] <= 80.0
    assert results["lsq4"] >= 92.0
    assert results["lsq2"] >= 87.0 and results["ste2"] >= 85.0


def test_conversion_picks_kernels_and_records_which_are_simulated(
    trained: tuple[nn.Module, Task],
) -> None:
    base, task = trained
    # 784 inputs: a multiple of 16, which the CPU int8 kernel needs.
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 16))
    conv_task = classification_task(
        {"train": TensorDataset(torch.randn(64, 1, 16, 16), torch.randint(0, 16, (64,)))}, 16
    )
    ctx = Context(conv_task, quiet=True)
    quantize_qat(net, QATConfig(bits=8, steps=2), ctx)
    assert isinstance(net[0], PackedConv2d) and isinstance(net[2], Int8WeightOnlyLinear)
    assert ctx.records["integer_kernel_layers"] == ["2"]
    assert ctx.records["simulated_layers"] == ["0"]
    assert "no speed-up claimed (0)" in ctx.records["note"]
    assert net[0].packed.numel() == 4 * 9  # 36 weights x 8 bits

    four = copy.deepcopy(base)
    quantize_(four, QATConfig(bits=4, group_size=32, steps=2), task)
    assert isinstance(four[0], Int4WeightOnlyLinear) and isinstance(four[2], Int4WeightOnlyLinear)
    two = copy.deepcopy(base)
    quantize_(two, QATConfig(bits=2, per_channel=True, steps=2), task)
    assert isinstance(two[0], PackedLinear) and two[0].packed.numel() == 32 * 16 * 2 // 8


def test_packed_conv_stores_the_exact_bit_count_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    x = torch.randn(2, 3, 6, 6)
    task = classification_task({"train": TensorDataset(x, torch.zeros(2, dtype=torch.long))}, 2)
    quantize_(net, QATConfig(bits=3, steps=0), task)
    conv = net[0]
    assert isinstance(conv, PackedConv2d)
    assert conv.packed.numel() == (5 * 3 * 9 * 3 + 7) // 8  # 135 weights x 3 bits = 51 bytes
    assert conv.packed.numel() == 51
    assert all(len(row.unique()) <= 8 for row in conv.dequantized_weight().reshape(5, -1))
    expected = net.eval()(x)  # the unpacked weight is cached now; the artifact must skip it
    loaded = load(save(net, tmp_path / "conv"))
    assert torch.equal(loaded(x), expected)


def test_activation_fake_quant_survives_conversion_and_the_artifact(
    trained: tuple[nn.Module, Task], tmp_path: Path
) -> None:
    base, task = trained
    net = copy.deepcopy(base)
    quantize_(net, QATConfig(bits=8, method="lsq", activation_bits=4, steps=20), task)
    first = net[0]
    assert isinstance(first, nn.Sequential) and isinstance(first[0], InputFakeQuant)
    assert first[0].frozen and not first[0].scale.requires_grad
    x = torch.randn(5, 16)
    assert len(first[0](x).unique()) <= 16  # 4-bit inputs
    loaded = load(save(net, tmp_path / "act"))
    assert torch.equal(loaded(x), net.eval()(x))


def test_artifact_round_trip_is_exact(trained: tuple[nn.Module, Task], tmp_path: Path) -> None:
    base, task = trained
    for bits in (8, 4, 2):
        net = copy.deepcopy(base)
        quantize_(net, QATConfig(bits=bits, group_size=None, per_channel=bits == 2, steps=5), task)
        loaded = load(save(net, tmp_path / f"b{bits}"))
        x = torch.randn(7, 16)
        assert torch.equal(loaded(x), net.eval()(x))


def test_pruned_zeros_stay_zero_through_qat(trained: tuple[nn.Module, Task]) -> None:
    base, task = trained
    net = copy.deepcopy(base)
    prune_(net, UnstructuredConfig(sparsity=0.5))
    quantize_(net, QATConfig(bits=2, per_channel=True, steps=20), task)
    weight = net[0].dequantized_weight()
    assert int((weight == 0).sum()) >= 16 * 32 // 2


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_bad_bits_is_a_config_error_naming_the_value(bits: int) -> None:
    with pytest.raises(ConfigError, match=f"bits={bits} is outside 2-8"):
        QATConfig(bits=bits)
    with pytest.raises(ConfigError, match=f"bits={bits}"):
        QATConfig.from_dict({"bits": bits})
    with pytest.raises(ConfigError, match="activation_bits=12"):
        QATConfig(activation_bits=12)
    with pytest.raises(ConfigError, match="'sign'"):
        QATConfig(method="sign")  # type: ignore[arg-type]


def test_a_failure_leaves_the_model_unchanged(trained: tuple[nn.Module, Task]) -> None:
    base, task = trained
    # Conv rows of 2 * 3 * 3 = 18 inputs: groups of 4 do not divide them.
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match="layer 0: group_size 4 does not divide its 18"):
        quantize_(net, QATConfig(bits=4, group_size=4, steps=1), task)
    assert isinstance(net[0], nn.Conv2d) and isinstance(net[2], nn.Linear)
    # Training diverges midway: the wrappers come out and every weight goes back.
    net = copy.deepcopy(base)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match="diverged"):
        quantize_(net, QATConfig(bits=4, per_channel=True, steps=50, lr=1e30), task)
    assert isinstance(net[0], nn.Linear) and isinstance(net[2], nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
