"""The stored formats of quantized weights: one object per format, thin Linear/Conv wrappers.

A format is one module base class that owns the stored tensors (what the artifact holds) and
turns them into what the op computes with; its Linear and Conv classes only add their shape
and the op (`base.conv` is the one convolution with torch's padding modes). The stored
tensors stay the module's own buffers, not a child module or a tensor subclass, so the
state-dict keys and attribute names that saved artifacts use do not change.

| file | stored | runs on | modules |
|---|---|---|---|
| int8 | int8, scale per row | `_weight_int8pack_mm` | `Int8WeightOnlyLinear`, `Int8Embedding` |
| int4 | 4-bit pairs, bf16 scale, zero per group | `_weight_int4pack_mm` | `Int4WeightOnlyLinear` |
| dynamic_int8 | int8, f32 scale per row | `torch._int_mm`, fbgemm | `DynamicInt8Linear` |
| packed | any 1-8 bits, affine scales | float (simulated) | `PackedLinear`, `PackedConv1d/2d` |
| clustered | codebook, uint8 indices | float (simulated) | `ClusteredLinear`, `ClusteredConv` |
| static_int8 | int8, calibrated input qparams | oneDNN | `StaticInt8Linear`, `...Conv1d/2d` |

Example:
    >>> from torch import nn
    >>> from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize
    >>> lin, spec = nn.Linear(8, 4), QuantSpec(bits=3, symmetric=False)
    >>> s, z = choose_qparams(lin.weight, spec)
    >>> type(quantized_linear(lin, spec, quantize(lin.weight, s, z, spec), s, z)).__name__
    'PackedLinear'
"""

from __future__ import annotations

from netchisel.quantize.formats.choose import quantized_layer, quantized_linear
from netchisel.quantize.formats.clustered import ClusteredConv, ClusteredLinear, ClusteredWeight
from netchisel.quantize.formats.dynamic_int8 import DynamicInt8Linear
from netchisel.quantize.formats.int4 import Int4WeightOnlyLinear
from netchisel.quantize.formats.int8 import Int8Embedding, Int8WeightOnlyLinear
from netchisel.quantize.formats.kernels import has_kernel, kernel_qparams, padded_weight
from netchisel.quantize.formats.packed import (
    PackedConv1d,
    PackedConv2d,
    PackedLinear,
    PackedWeight,
)
from netchisel.quantize.formats.static_int8 import (
    StaticInt8Conv1d,
    StaticInt8Conv2d,
    StaticInt8Linear,
    StaticInt8Weight,
)

__all__ = [
    "ClusteredConv",
    "ClusteredLinear",
    "ClusteredWeight",
    "DynamicInt8Linear",
    "Int4WeightOnlyLinear",
    "Int8Embedding",
    "Int8WeightOnlyLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedLinear",
    "PackedWeight",
    "StaticInt8Conv1d",
    "StaticInt8Conv2d",
    "StaticInt8Linear",
    "StaticInt8Weight",
    "has_kernel",
    "kernel_qparams",
    "padded_weight",
    "quantized_layer",
    "quantized_linear",
]
