"""Static int8 on 1-D models: Conv1d layers become `StaticInt8Conv1d` on oneDNN's kernel."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import netchisel as nc
from netchisel.core.context import Context
from netchisel.quantize.formats import StaticInt8Conv1d, StaticInt8Linear
from netchisel.quantize.formats.static_int8 import float_twin
from netchisel.quantize.static_int8 import StaticInt8Config, quantize_static_int8
from tests._models_1d import cnn1d, inputs_1d, relative_error, task_1d


def test_conv1d_layers_run_int8_within_2_percent_and_round_trip(tmp_path: Path) -> None:
    net, x = cnn1d(), inputs_1d(16)
    with torch.no_grad():
        ref = net(x)
    ctx = Context(task_1d(), quiet=True)
    quantize_static_int8(net, StaticInt8Config(calibration_samples=64), ctx)
    assert isinstance(net[0], StaticInt8Conv1d) and isinstance(net[3], StaticInt8Conv1d)
    assert isinstance(net[7], StaticInt8Linear)
    # the BatchNorm1d after a ReLU cannot fold: it stays, in float (and costs no slow path)
    assert type(net[2]) is nn.BatchNorm1d
    assert (ctx.records["quantized_layers"], ctx.records["float_layers"]) == (3, [])
    with torch.no_grad():
        out = net(x)
        assert out.shape == (16, 10)
        assert relative_error(out, ref) < 0.03
        # the int8 model computes what its dequantized float twin does, up to activation rounding
        assert relative_error(float_twin(net)(x), out) < 0.03
    count = nc.count_flops(net, x[:1])
    assert count.macs_by_dtype == {"int8": 25 * 18 * 5 + 25 * 16 * 25 * 3 + 200 * 10}
    assert count.uncounted_ops == ()
    nc.save(net, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(nc.load(tmp_path / "a")(x), out)


def test_batchnorm1d_after_conv1d_is_folded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 40, 10),
    ).eval()
    x = inputs_1d(16)
    with torch.no_grad():
        ref = net(x)
    ctx = Context(task_1d(), quiet=True)
    quantize_static_int8(net, StaticInt8Config(calibration_samples=64), ctx)
    assert ctx.records["folded_batchnorms"] == 1 and isinstance(net[1], nn.Identity)
    assert isinstance(net[0], StaticInt8Conv1d) and ctx.records["quantized_layers"] == 2
    with torch.no_grad():
        assert relative_error(net(x), ref) < 0.03


def test_from_float_matches_the_float_conv1d() -> None:
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    x = torch.rand(2, 4, 17)
    layer = StaticInt8Conv1d.from_float(conv, input_scale=1 / 255)
    with torch.no_grad():
        assert relative_error(layer(x), conv(x)) < 0.02


def test_exported_conv1d_runs_the_reference_pattern_to_the_same_numbers() -> None:
    layer = StaticInt8Conv1d.from_float(nn.Conv1d(4, 6, 3, stride=2, padding=1), 1 / 255)
    x = torch.rand(2, 4, 17)
    with torch.no_grad():
        exported = torch.export.export(layer, (x,)).module()
        torch.testing.assert_close(exported(x), layer(x), rtol=0, atol=1e-6)
