"""The packed format: exact bit counts, Linear and Conv2d computing with the unpacked weight."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netchisel.quantize.formats import Int4WeightOnlyLinear, PackedConv2d, PackedLinear
from netchisel.quantize.primitives import QuantSpec
from tests.quantize.formats import rel as _rel


def test_packed_linear_stores_exact_bits():
    lin = nn.Linear(10, 7)
    layer = PackedLinear.from_float(lin, QuantSpec(bits=3, symmetric=False))
    assert layer.packed.numel() == (70 * 3 + 7) // 8
    assert layer.simulated and not Int4WeightOnlyLinear.simulated
    x = torch.randn(4, 10)
    assert _rel(layer(x), F.linear(x, layer.dequantized_weight(), lin.bias)) < 1e-6


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="reflect", bias=False),
        nn.Conv2d(4, 6, 3, padding="same", dilation=2),
    ],
)
def test_packed_conv_computes_the_conv_of_its_unpacked_weight(conv: nn.Conv2d) -> None:
    layer = PackedConv2d.from_float(conv, QuantSpec(bits=2, symmetric=False))
    assert layer.packed.numel() == conv.weight.numel() * 2 // 8
    reference = nn.Conv2d(
        4,
        6,
        3,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    reference.load_state_dict({**conv.state_dict(), "weight": layer.dequantized_weight()})
    x = torch.randn(2, 4, 7, 7)
    assert torch.allclose(layer(x), reference(x), atol=1e-6)
