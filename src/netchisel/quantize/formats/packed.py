"""Integers of any width 1-8, bit-packed at their real size, with affine scales per tensor, row
or group: the format of bit widths and layouts no integer kernel takes (3-bit, 2-bit, binary
and ternary codes, grouped convolutions).

No kernel runs it: the weight is unpacked once and the op runs in float, so a packed layer is
smaller on disk only, never faster or smaller in memory (`simulated = True`). `PackedWeight`
is the format (buffers `packed`, `scale`, `zero`; attributes `bits`, `symmetric`,
`granularity`, `group_size`); `PackedLinear` and `PackedConv2d` add only their shape and op.
"""

from __future__ import annotations

import math
from dataclasses import astuple
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.artifact.bits import pack_bits, unpack_bits
from netchisel.core.errors import ModelError
from netchisel.quantize.formats.base import QuantizedLinear, conv_forward, kernel_cache
from netchisel.quantize.formats.weight_view import HasWeightView
from netchisel.quantize.primitives import (
    DEFAULT_GROUP_SIZE,
    QuantSpec,
    choose_qparams,
    dequantize,
    quantize,
)


class PackedWeight(HasWeightView, nn.Module):
    """The packed format: `bits`-bit integers in a uint8 stream and their scales and zeros.

    The weight is quantized over its rows `[out, inputs per output]` (a Conv2d's
    `in_channels / groups * kh * kw`), so per-channel scales are one per output channel.
    """

    simulated = True
    packed: Tensor
    scale: Tensor
    zero: Tensor
    bias: nn.Parameter | None
    bits: int
    symmetric: bool
    granularity: str
    group_size: int

    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the float weight the op computes with."""
        raise NotImplementedError

    def _view_shape(self) -> tuple[int, ...]:
        return self.weight_shape()

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.symmetric, self.granularity, self.group_size)  # type: ignore[arg-type]

    def _init_packed(self, spec: QuantSpec) -> None:
        self.bits = spec.bits
        self.symmetric = spec.symmetric
        self.granularity = spec.granularity
        self.group_size = spec.group_size
        rows, *rest = self.weight_shape()
        row_length = math.prod(rest)
        scales = {"tensor": (1, 1), "channel": (rows, 1)}.get(
            spec.granularity, (rows, row_length // spec.group_size)
        )
        numel = rows * row_length
        self.register_buffer("packed", torch.zeros((numel * spec.bits + 7) // 8, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(scales))
        self.register_buffer("zero", torch.zeros(scales))

    def _take(
        self, source: nn.Module, q: Tensor | None, scale: Tensor | None, zero: Tensor | None
    ) -> Self:
        """Pack `q` with its `scale` and `zero` (or `source`'s weight rounded to nearest when
        none are given), take `source`'s bias, and move to its device."""
        spec = self.spec()
        weight = source.get_parameter("weight")
        if q is None or scale is None or zero is None:
            scale, zero = choose_qparams(weight, spec)
            q = quantize(weight, scale, zero, spec)
        self.packed.copy_(pack_bits(q.detach().cpu(), spec.bits))
        self.scale.copy_(scale.detach().reshape(self.scale.shape))
        self.zero.copy_(zero.detach().reshape(self.zero.shape))
        bias = getattr(source, "bias", None)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().float().clone())
        return self.to(weight.device)

    def dequantized_weight(self) -> Tensor:
        """The float weight the op computes with, in `weight_shape()`."""
        shape = self.weight_shape()
        q = unpack_bits(self.packed.cpu(), self.bits, math.prod(shape), signed=self.symmetric)
        q = q.reshape(shape).to(self.scale.device)
        return dequantize(q, self.scale, self.zero, self.spec())

    def _weight(self) -> Tensor:
        # Unpacked once, until the stored integers or scales change (a reload).
        return kernel_cache(self, (self.packed, self.scale, self.zero), self.dequantized_weight)

    def prepare_kernels(self) -> None:
        """Unpack the weight now (otherwise on first use); FLOP counts call this first."""
        with torch.no_grad():
            self._weight()


class PackedLinear(PackedWeight, QuantizedLinear):
    """A Linear with weights of any bit width stored bit-packed; computed in float.

    The file holds `bits` bits per weight plus the scales; at run time the weight is
    unpacked once and kept in float, so it is no faster and no smaller in memory.

    Example:
        >>> layer = PackedLinear.from_float(nn.Linear(8, 4), QuantSpec(bits=3, symmetric=False))
        >>> layer.packed.numel()  # 32 weights x 3 bits
        12
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        symmetric: bool = True,
        granularity: str = "channel",
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        super().__init__()
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self._init_packed(QuantSpec(bits, symmetric, granularity, group_size))  # type: ignore[arg-type]

    def weight_shape(self) -> tuple[int, ...]:
        return self.out_features, self.in_features

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        spec: QuantSpec,
        q: Tensor | None = None,
        scale: Tensor | None = None,
        zero: Tensor | None = None,
    ) -> PackedLinear:
        """Quantize `linear` with `spec` (RTN), or take given integers and parameters."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            *astuple(spec),  # bits, symmetric, granularity, group_size
        )
        return layer._take(linear, q, scale, zero)

    def forward(self, x: Tensor) -> Tensor:
        weight = self._weight()
        return self._finish(F.linear(x.reshape(-1, self.in_features), weight.to(x.dtype)), x)


class PackedConv2d(PackedWeight):
    """A Conv2d with `bits`-bit weights packed in a uint8 stream; computed in float.

    Example:
        >>> conv = PackedConv2d.from_float(nn.Conv2d(2, 4, 3), QuantSpec(bits=2, symmetric=False))
        >>> conv.packed.numel(), conv(torch.zeros(1, 2, 5, 5)).shape  # 72 weights x 2 bits
        (18, torch.Size([1, 4, 3, 3]))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        bits: int = 8,
        symmetric: bool = True,
        granularity: str = "channel",
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_packed(QuantSpec(bits, symmetric, granularity, group_size))  # type: ignore[arg-type]

    def weight_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel_size
        return self.out_channels, self.in_channels // self.groups, kh, kw

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv1d | nn.Conv2d,
        spec: QuantSpec,
        q: Tensor | None = None,
        scale: Tensor | None = None,
        zero: Tensor | None = None,
    ) -> Self:
        """Quantize `conv` with `spec` (round to nearest), or take given integers and params."""
        if isinstance(conv.padding, str) and conv.padding_mode != "zeros":
            raise ModelError(
                f"{cls.__name__}: padding={conv.padding!r} with padding_mode={conv.padding_mode!r} "
                "is not supported; use numeric padding"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            *astuple(spec),  # bits, symmetric, granularity, group_size
        )
        return layer._take(conv, q, scale, zero)

    def forward(self, x: Tensor) -> Tensor:
        return conv_forward(self, x, self._weight())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bits={self.bits}, bias={self.bias is not None}"
        )


class PackedConv1d(PackedConv2d):
    """A Conv1d with `bits`-bit weights packed in a uint8 stream; computed in float (its
    `kernel_size`, `stride`, `padding`, `dilation` have one element, as the Conv1d's).

    Example:
        >>> conv = PackedConv1d.from_float(nn.Conv1d(2, 4, 3), QuantSpec(bits=2, symmetric=False))
        >>> conv.packed.numel(), conv(torch.zeros(1, 2, 5)).shape  # 24 weights x 2 bits
        (6, torch.Size([1, 4, 3]))
    """

    def weight_shape(self) -> tuple[int, ...]:
        return self.out_channels, self.in_channels // self.groups, self.kernel_size[0]
