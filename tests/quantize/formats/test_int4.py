"""int4 groups: padding, symmetric integers from an algorithm."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netchisel.quantize.formats import Int4WeightOnlyLinear, quantized_linear
from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize
from tests.quantize.formats import rel as _rel


@pytest.mark.parametrize(
    "shape, group, stored", [((64, 16), 32, (16, 32)), ((100, 10), 32, (16, 64))]
)
def test_int4_pads_inputs_to_the_group_and_outputs_to_16(shape, group, stored):
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    layer = Int4WeightOnlyLinear.from_float(lin, group_size=group)
    assert tuple(layer.qweight.shape) == stored
    assert layer.dequantized_weight().shape == lin.weight.shape
    x = torch.randn(3, shape[0])
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01  # the kernel computes exactly what is stored
    assert _rel(layer(x), lin(x)) < 0.12  # 4-bit rounding of a random layer


def test_int4_accepts_symmetric_integers_from_an_algorithm():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    spec = QuantSpec(4, symmetric=True, granularity="group", group_size=32)
    scale, zero = choose_qparams(lin.weight, spec)
    q = quantize(lin.weight, scale, zero, spec)
    layer = quantized_linear(lin, spec, q, scale, zero)
    assert isinstance(layer, Int4WeightOnlyLinear)
    expected = (q.float().reshape(32, 2, 32) * scale[..., None]).reshape(32, 64)
    # Only the bf16 storage of scales moves values: by <= 8 levels x 2**-8 of a step.
    assert (layer.dequantized_weight() - expected).abs().max() <= 8 * 2**-8 * float(scale.max())


@pytest.mark.parametrize("inputs", [64, 40])
def test_int4_kernel_takes_an_input_transposed_in_its_last_dimension(inputs):
    # MLP-Mixer's token mixing at batch 1: the CPU kernel expects a contiguous input.
    torch.manual_seed(0)
    layer = Int4WeightOnlyLinear.from_float(nn.Linear(inputs, 8), group_size=32)
    x = torch.randn(1, inputs, 5).transpose(1, 2)
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.contiguous()))
