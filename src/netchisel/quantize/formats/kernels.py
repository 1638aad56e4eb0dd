"""Which formats have a real integer kernel, the scales those kernels store, and the one rule
for a grouped weight whose width the group size does not divide.

The int8 and int4 kernels store bf16 scales: rounding a scale after quantizing would move
every weight by up to 127 x 2**-8 of a step, so scales are rounded (up, so nothing clips)
before the integers are chosen. The int4 kernel pads a layer's inputs with zeros to a whole
number of groups; no other format can, so elsewhere such a group size is an error.
"""

from __future__ import annotations

from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.quantize.primitives import (
    QuantSpec,
    ScaleMethod,
    bf16_round_up,
    choose_qparams,
    group_padding,
    pad_to_groups,
)

INT4_GROUP_SIZES = (32, 64, 128, 256)


def has_kernel(spec: QuantSpec) -> bool:
    """True when `quantized_linear` gives a module with a real integer kernel for `spec`.

    Example:
        >>> has_kernel(QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64))
        True
    """
    if spec.bits == 8:
        return spec.symmetric and spec.granularity == "channel"
    return spec.bits == 4 and spec.granularity == "group" and spec.group_size in INT4_GROUP_SIZES


def kernel_scales(scale: Tensor, spec: QuantSpec) -> Tensor:
    """Scales as the kernel for `spec` stores them: rounded up to bf16 where there is one.

    Example:
        >>> import torch
        >>> float(kernel_scales(torch.tensor([0.1]), QuantSpec(bits=8))[0])
        0.10009765625
    """
    return bf16_round_up(scale) if has_kernel(spec) else scale


def kernel_qparams(
    weight: Tensor, spec: QuantSpec, method: ScaleMethod = "minmax"
) -> tuple[Tensor, Tensor]:
    """`choose_qparams`, with scales rounded up to what the kernel stores (bf16).

    Rounding the scale after quantizing would move every weight by up to 127 x 2**-8 of a
    step; rounding it first, and up so nothing clips, keeps the error within half a step.

    Example:
        >>> import torch
        >>> s, _ = kernel_qparams(torch.tensor([[0.3, -1.0]]), QuantSpec(bits=8))
        >>> bool(s.to(torch.bfloat16).float() == s)
        True
    """
    scale, zero = choose_qparams(weight, spec, method)
    return kernel_scales(scale, spec), zero


def stored_columns(columns: int, spec: QuantSpec, name: str = "") -> int:
    """How many inputs a quantized Linear stores for `columns`: padded up to whole groups
    where the int4 kernel pads, unchanged where the group size divides; else a ConfigError.

    Example:
        >>> int4 = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
        >>> stored_columns(100, int4)
        128
    """
    pad = group_padding(columns, spec)
    if pad and not has_kernel(spec):
        raise ConfigError(
            f"{f'layer {name}: ' if name else ''}group_size {spec.group_size} does not divide "
            f"in_features {columns}; "
            "pick a divisor (only the int4 kernel pads, for group sizes 32-256)"
        )
    return columns + pad


def padded_weight(linear: nn.Linear, spec: QuantSpec, name: str = "") -> Tensor:
    """`linear`'s float weight, inputs zero-padded to a multiple of the group size.

    Example:
        >>> spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)
        >>> tuple(padded_weight(nn.Linear(40, 2), spec).shape)
        (2, 64)
    """
    weight = linear.weight.detach().float()
    stored_columns(weight.shape[1], spec, name)
    return pad_to_groups(weight, spec)
