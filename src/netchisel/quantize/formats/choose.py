"""Which stored format holds a layer's integers: the one with a real kernel where there is one.

Every algorithm that ends in integers (RTN, GPTQ, AWQ, QAT, binary codes) hands them here, so
the same `q`, `scale` and `zero` become the same module whichever algorithm chose them.
"""

from __future__ import annotations

from torch import Tensor, nn

from netchisel.core.errors import ModelError
from netchisel.quantize.formats.int4 import Int4WeightOnlyLinear
from netchisel.quantize.formats.int8 import Int8WeightOnlyLinear
from netchisel.quantize.formats.kernels import has_kernel
from netchisel.quantize.formats.packed import PackedConv1d, PackedConv2d, PackedLinear
from netchisel.quantize.primitives import QuantSpec


def quantized_linear(
    linear: nn.Linear, spec: QuantSpec, q: Tensor, scale: Tensor, zero: Tensor
) -> nn.Module:
    """The module for integers `q` (as `primitives.quantize` returns them) of `linear`.

    For the int4 kernel, `q`, `scale` and `zero` may cover inputs padded to a multiple of the
    group size (see `padded_weight`).

    Example:
        >>> from netchisel.quantize.primitives import choose_qparams, quantize
        >>> lin, spec = nn.Linear(64, 16), QuantSpec(bits=8)
        >>> s, z = choose_qparams(lin.weight, spec)
        >>> type(quantized_linear(lin, spec, quantize(lin.weight, s, z, spec), s, z)).__name__
        'Int8WeightOnlyLinear'
    """
    if has_kernel(spec) and spec.bits == 8:
        return Int8WeightOnlyLinear.from_float(linear, q, scale)
    if has_kernel(spec):
        return Int4WeightOnlyLinear.from_float(
            linear, spec.group_size, q, scale, zero, spec.symmetric
        )
    return PackedLinear.from_float(linear, spec, q, scale, zero)


def quantized_layer(
    layer: nn.Module, spec: QuantSpec, q: Tensor, scale: Tensor, zero: Tensor
) -> nn.Module:
    """The stored-integer module for a Linear (a real kernel where one exists), a Conv2d or a
    Conv1d.

    Example:
        >>> from netchisel.quantize.primitives import choose_qparams, quantize
        >>> conv, spec = nn.Conv2d(1, 2, 3), QuantSpec(bits=4, symmetric=False)
        >>> s, z = choose_qparams(conv.weight, spec)
        >>> type(quantized_layer(conv, spec, quantize(conv.weight, s, z, spec), s, z)).__name__
        'PackedConv2d'
    """
    if isinstance(layer, nn.Linear):
        return quantized_linear(layer, spec, q, scale, zero)
    if isinstance(layer, nn.Conv2d):
        return PackedConv2d.from_float(layer, spec, q, scale, zero)
    if isinstance(layer, nn.Conv1d):
        return PackedConv1d.from_float(layer, spec, q, scale, zero)
    raise ModelError(
        f"no quantized module for {type(layer).__name__}: only Linear, Conv1d and Conv2d"
    )
