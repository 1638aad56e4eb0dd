"""Static int8 layers: int8 weights per channel, a calibrated uint8 input, oneDNN kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.core.errors import ModelError
from netchisel.quantize.formats.static_int8 import (
    StaticInt8Conv2d,
    StaticInt8Linear,
    int8_per_channel,
)

ROOT = Path(__file__).parents[2]


def test_layers_from_float_round_to_int8() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    q, scale = int8_per_channel(conv.weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and scale.shape == (4,)
    layer = StaticInt8Conv2d.from_float(conv, input_scale=1 / 255)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        err = (layer(x) - conv(x)).abs().max()
    assert float(err) < 0.02  # 8-bit weights and inputs on a [0, 1) input
    linear = StaticInt8Linear.from_float(nn.Linear(8, 2), input_scale=1 / 255)
    assert linear(torch.rand(3, 5, 8)).shape == (3, 5, 2)
    x = torch.rand(3, 8, requires_grad=True)  # runs with autograd on, as under no_grad
    with torch.no_grad():
        expected = linear(x)
    assert torch.equal(linear(x), expected) and not linear(x).requires_grad
    with pytest.raises(ModelError, match="input scale must be > 0"):
        StaticInt8Linear.from_float(nn.Linear(8, 2), input_scale=0.0)


def test_the_kernel_matches_its_reference_pattern_with_a_zero_point_near_128() -> None:
    # Without VNNI the oneDNN kernel's int16 pair sums saturated on 8-bit inputs around 128
    # (11% off here, an AVX2 CPU); such CPUs run the inputs as 7 bits (input_qparams).
    torch.manual_seed(0)
    conv = StaticInt8Conv2d.from_float(nn.Conv2d(16, 24, 3), input_scale=0.03, input_zero_point=130)
    linear = StaticInt8Linear.from_float(nn.Linear(64, 8), input_scale=1 / 255)
    with torch.no_grad():
        x = torch.randn(2, 16, 12, 12)
        reference = torch.nn.functional.conv2d(
            conv._reference_input(x), conv._reference_weight(), conv.bias
        )
        assert float((conv(x) - reference).abs().max()) < 1e-4
        x = torch.rand(4, 64)
        reference = torch.nn.functional.linear(
            linear._reference_input(x), linear._reference_weight(), linear.bias
        )
        assert float((linear(x) - reference).abs().max()) < 1e-4
    scale, zero, top = conv.input_qparams()
    assert (scale, zero, top) in [(0.03, 130, 255), (0.06, 65, 127)]
