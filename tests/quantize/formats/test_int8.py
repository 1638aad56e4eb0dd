"""int8 rows: the weight-only Linear on the int8 kernel."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netchisel.quantize.formats import Int8WeightOnlyLinear
from tests.quantize.formats import rel as _rel


def test_int8_weight_only_matches_its_dequantized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    layer = Int8WeightOnlyLinear.from_float(lin)
    x = torch.randn(8, 256)
    # The scale is rounded to bf16 before rounding the weights: at most half a step off.
    step = layer.scales.float()[:, None]
    assert bool(((layer.dequantized_weight() - lin.weight).abs() <= step * 0.5 + 1e-9).all())
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01
    assert _rel(layer(x), lin(x)) < 0.01
    assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("inputs", [8, 100, 104, 300])
def test_int8_kernel_pads_inputs_that_are_not_a_multiple_of_16(inputs):
    # Unpadded, the CPU kernel segfaults at 100 inputs and returns inf at 104.
    torch.manual_seed(0)
    lin = nn.Linear(inputs, 10)
    layer = Int8WeightOnlyLinear.from_float(lin)
    x = torch.randn(3, inputs)
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01
    assert tuple(layer.weight_int8.shape) == (10, inputs)  # stored unpadded


@pytest.mark.parametrize("inputs", [64, 40])
def test_int8_kernel_takes_an_input_transposed_in_its_last_dimension(inputs):
    # MLP-Mixer's token mixing at batch 1: `_weight_int8pack_mm_cpu : A must be contiguous
    # on the last dimension`. Such an input is copied; the result is the contiguous one's.
    torch.manual_seed(0)
    layer = Int8WeightOnlyLinear.from_float(nn.Linear(inputs, 8))
    x = torch.randn(1, inputs, 5).transpose(1, 2)
    assert x.reshape(-1, inputs).stride(-1) != 1
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.contiguous()))
