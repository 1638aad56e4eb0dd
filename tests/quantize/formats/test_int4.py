"""int4 groups: padding, symmetric integers from an algorithm."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netchisel.quantize.formats import Int4WeightOnlyLinear, int4, quantized_linear
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


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_packs_rows_in_chunks_to_the_same_nibbles(symmetric, monkeypatch):
    # 37 outputs (padded to 48) and 100 inputs (padded to 128), integers for the unpadded inputs.
    g = torch.Generator().manual_seed(0)
    low = -8 if symmetric else 0
    q = torch.randint(low, low + 16, (37, 100), generator=g)
    q = q.to(torch.int8 if symmetric else torch.uint8)
    scale = torch.rand(37, 4, generator=g) + 0.1
    zero = torch.randint(0, 16, (37, 4), generator=g).float()
    lin = nn.Linear(100, 37)
    whole = Int4WeightOnlyLinear.from_float(lin, 32, q, scale, zero, symmetric)
    monkeypatch.setattr(int4, "_PACK_ROWS", 5)  # 8 chunks, the last of 2 rows
    chunked = Int4WeightOnlyLinear.from_float(lin, 32, q, scale, zero, symmetric)
    assert torch.equal(chunked.qweight, whole.qweight)
    unpacked = chunked.unpacked()
    assert torch.equal(unpacked[:37, :100], q.to(torch.int32) + (8 if symmetric else 0))
    assert bool((unpacked[37:] == 8).all()) and bool((unpacked[:, 100:] == 8).all())
