from __future__ import annotations

import copy
import json
import struct
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
from netchisel.quantize import BinaryConfig, quantize_
from netchisel.quantize.binary import SignFakeQuant, binary_codes, quantize_binary, ternary_codes
from netchisel.quantize.formats import PackedConv2d, PackedLinear


def _task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = x[:, :4].argmax(dim=1)
    return classification_task(
        {"train": TensorDataset(x[:384], y[:384]), "val": TensorDataset(x[384:], y[384:])}, 32
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Task]:
    """A 16-32-32-4 MLP trained in float (92.2% val); by default only its middle layer changes."""
    torch.manual_seed(0)
    task = _task()
    net = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    fit(net, task, TrainSettings(steps=200, lr=1e-2), Context(task, quiet=True))
    return net, task


def _safetensors_sizes(path: Path) -> dict[str, int]:
    """Bytes of every tensor in the artifact's weights file, read from its header."""
    raw = (path / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    return {
        k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k[0] != "_"
    }


def test_binary_codes_take_two_values_per_channel_scaled_by_mean_abs() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 20)
    q, scale, zero = binary_codes(w)
    wb = (q.float() - zero) * scale
    for row, original in zip(wb, w, strict=True):
        alpha = original.abs().mean()
        assert sorted(row.unique().tolist()) == pytest.approx([-float(alpha), float(alpha)])
        assert torch.equal(row > 0, original >= 0)


def test_ternary_codes_follow_twn_threshold_and_scale() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 50)
    q, scale, zero = ternary_codes(w)
    wt = (q.float() - zero) * scale
    for row, original in zip(wt, w, strict=True):
        delta = 0.7 * original.abs().mean()
        above = original.abs() > delta
        alpha = original.abs()[above].mean()
        assert len(row.unique()) == 3
        assert torch.equal(row == 0, ~above)
        assert float(row.abs().max()) == pytest.approx(float(alpha), rel=1e-6)
    assert sorted(q.unique().tolist()) == [0, 1, 2]


def test_straight_through_gradient_is_identity_within_the_clip() -> None:
    w = torch.tensor([[0.5, -0.2, 1.5, -3.0, 1.0]], requires_grad=True)
    for kind in ("binary", "ternary"):
        out = SignFakeQuant(kind)(w)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(out, w, torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]))
        assert grad.tolist() == [[1.0, 2.0, 0.0, 0.0, 5.0]]


@pytest.mark.parametrize(("kind", "bits", "values"), [("binary", 1, 2), ("ternary", 2, 3)])
def test_trained_layers_store_exact_bits_and_round_trip(
    trained: tuple[nn.Module, Task], tmp_path: Path, kind: str, bits: int, values: int
) -> None:
    base, task = trained
    net = copy.deepcopy(base)
    ctx = Context(task, quiet=True)
    quantize_binary(net, BinaryConfig(kind=kind, steps=30), ctx)  # type: ignore[arg-type]
    assert isinstance(net[0], nn.Linear) and isinstance(net[4], nn.Linear)  # first, last float
    layer = net[2]
    assert isinstance(layer, PackedLinear) and layer.bits == bits
    # Every channel takes values in {-a, +a} (binary) or {-a, 0, +a} (ternary) for its own a;
    # a channel whose large latent weights all have one sign uses fewer of them.
    for row in layer.dequantized_weight():
        assert len(row.unique()) <= values and len(row[row != 0].abs().unique()) == 1
    assert len(layer.dequantized_weight().sign().unique()) == values
    assert layer.packed.numel() == 32 * 32 * bits // 8  # 128 or 256 bytes, exactly
    assert ctx.records["float_layers"] == ["0", "4"] and ctx.records["simulated_layers"] == ["2"]
    path = save(net, tmp_path / kind)
    assert _safetensors_sizes(path)["2.packed"] == 32 * 32 * bits // 8
    x = torch.randn(9, 16)
    assert torch.equal(load(path)(x), net.eval()(x))


def test_training_recovers_what_binarizing_alone_loses(trained: tuple[nn.Module, Task]) -> None:
    base, task = trained
    accuracy = {"float": task.evaluate(base)["accuracy"]}
    for name, config in {
        "binary0": BinaryConfig(steps=0, keep_first_last=False),
        "binary": BinaryConfig(steps=150, keep_first_last=False, lr=1e-2),
        "ternary0": BinaryConfig(kind="ternary", steps=0, keep_first_last=False),
        "ternary": BinaryConfig(kind="ternary", steps=150, keep_first_last=False, lr=1e-2),
        "middle": BinaryConfig(steps=150, lr=1e-2),
    }.items():
        net = copy.deepcopy(base)
        quantize_(net, config, task)
        assert isinstance(net[2], PackedLinear)
        accuracy[name] = task.evaluate(net)["accuracy"]
    # Measured (128 val samples): float 92.2; every layer binary 59.4 untrained, 79.7 trained;
    # ternary 75.0 and 84.4; only the middle layer binary, trained: 92.2.
    assert accuracy["float"] >= 90.0
    assert accuracy["binary0"] <= 65.0 and accuracy["binary"] >= accuracy["binary0"] + 15.0
    assert accuracy["ternary"] >= accuracy["ternary0"] + 5.0
    assert accuracy["middle"] >= 90.0


def test_convolutions_become_packed_bitplanes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)
    )
    quantize_(net, BinaryConfig(steps=0))
    conv = net[1]
    assert isinstance(conv, PackedConv2d) and isinstance(net[0], nn.Conv2d)
    assert conv.packed.numel() == 6 * 4 * 9 // 8  # 216 weights, 1 bit each: 27 bytes
    assert all(len(row.unique()) == 2 for row in conv.dequantized_weight().reshape(6, -1))


def test_bad_settings_are_config_errors_naming_the_value() -> None:
    with pytest.raises(ConfigError, match="kind 'quaternary'"):
        BinaryConfig(kind="quaternary")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'quaternary' is not one of"):
        BinaryConfig.from_dict({"kind": "quaternary"})
    with pytest.raises(ConfigError, match=r"threshold 1\.5"):
        BinaryConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="steps must be >= 0, got -1"):
        BinaryConfig(steps=-1)
    two = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="keep_first_last: false"):
        quantize_(two, BinaryConfig(steps=0))
    assert isinstance(two[0], nn.Linear) and isinstance(two[1], nn.Linear)
