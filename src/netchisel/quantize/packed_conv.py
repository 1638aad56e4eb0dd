"""`PackedConv2d`: a Conv2d whose weights are stored bit-packed at any width 1-8.

No integer convolution kernel is used: the weight is unpacked once and the convolution runs
in float, so the layer is no faster and no smaller in memory than a float one. It is simulated
for speed (`simulated = True`); the artifact holds `bits` bits per weight plus the scales.
`quantized_layer` picks the module for a Linear (`modules.quantized_linear`: a real kernel where
one exists) or a Conv2d (this one).
"""

from __future__ import annotations

import typing
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.artifact.bits import pack_bits, unpack_bits
from netchisel.core.errors import ModelError
from netchisel.quantize.modules import quantized_linear
from netchisel.quantize.primitives import (
    QuantSpec,
    choose_qparams,
    dequantize,
    quantize,
)


class PackedConv2d(nn.Module):
    """A Conv2d with `bits`-bit weights packed in a uint8 stream; computed in float.

    The weight is quantized over its rows `[out_channels, in_channels / groups * kh * kw]`, so
    per-channel scales are one per output channel, as for `PackedLinear`.

    Example:
        >>> conv = PackedConv2d.from_float(nn.Conv2d(2, 4, 3), QuantSpec(bits=2, symmetric=False))
        >>> conv.packed.numel(), conv(torch.zeros(1, 2, 5, 5)).shape  # 72 weights x 2 bits
        (18, torch.Size([1, 4, 3, 3]))
    """

    simulated = True
    packed: Tensor
    scale: Tensor
    zero: Tensor

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
        group_size: int = 128,
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
        self.bits = bits
        self.symmetric = symmetric
        self.granularity = granularity
        self.group_size = group_size
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        rows, groups_per_row = self._scale_shape()
        numel = out_channels * self._row_length()
        self.register_buffer("packed", torch.zeros((numel * bits + 7) // 8, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, groups_per_row))
        self.register_buffer("zero", torch.zeros(rows, groups_per_row))

    def _row_length(self) -> int:
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def _scale_shape(self) -> tuple[int, int]:
        if self.granularity == "tensor":
            return 1, 1
        if self.granularity == "channel":
            return self.out_channels, 1
        return self.out_channels, self._row_length() // self.group_size

    def weight_shape(self) -> tuple[int, int, int, int]:
        kh, kw = self.kernel_size
        return self.out_channels, self.in_channels // self.groups, kh, kw

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.symmetric, self.granularity, self.group_size)  # type: ignore[arg-type]

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        spec: QuantSpec,
        q: Tensor | None = None,
        scale: Tensor | None = None,
        zero: Tensor | None = None,
    ) -> PackedConv2d:
        """Quantize `conv` with `spec` (round to nearest), or take given integers and params."""
        if isinstance(conv.padding, str) and conv.padding_mode != "zeros":
            raise ModelError(
                f"PackedConv2d: padding={conv.padding!r} with padding_mode={conv.padding_mode!r} "
                "is not supported; use numeric padding"
            )
        if q is None or scale is None or zero is None:
            scale, zero = choose_qparams(conv.weight, spec)
            q = quantize(conv.weight, scale, zero, spec)
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
            spec.bits,
            spec.symmetric,
            spec.granularity,
            spec.group_size,
        )
        layer.packed.copy_(pack_bits(q.detach().cpu(), spec.bits))
        layer.scale.copy_(scale.detach().reshape(layer.scale.shape))
        layer.zero.copy_(zero.detach().reshape(layer.zero.shape))
        if conv.bias is not None:
            layer.bias = nn.Parameter(conv.bias.detach().float().clone())
        return layer.to(conv.weight.device)

    def dequantized_weight(self) -> Tensor:
        """The float weight the convolution computes with, `[out, in / groups, kh, kw]`."""
        shape = self.weight_shape()
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        q = unpack_bits(self.packed.cpu(), self.bits, numel, signed=self.symmetric)
        q = q.reshape(shape).to(self.scale.device)
        return dequantize(q, self.scale, self.zero, self.spec())

    def _weight(self) -> Tensor:
        # Unpacked once; keyed by the buffer's storage and version so a reload rebuilds it.
        key = (self.packed.data_ptr(), self.packed._version, self.scale._version)
        cache = self.__dict__.get("_netchisel_weight_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.dequantized_weight())
            self.__dict__["_netchisel_weight_cache"] = cache
        weight: Tensor = cache[1]
        return weight

    def prepare_kernels(self) -> None:
        """Unpack the weight now (otherwise on first use); FLOP counts call this first."""
        self._weight()

    def forward(self, x: Tensor) -> Tensor:
        weight = self._weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            pad_h, pad_w = typing.cast(tuple[int, int], self.padding)
            x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bits={self.bits}, bias={self.bias is not None}"
        )


def quantized_layer(
    layer: nn.Module, spec: QuantSpec, q: Tensor, scale: Tensor, zero: Tensor
) -> nn.Module:
    """The stored-integer module for a Linear (a real kernel where one exists) or a Conv2d.

    Example:
        >>> conv, spec = nn.Conv2d(1, 2, 3), QuantSpec(bits=4, symmetric=False)
        >>> s, z = choose_qparams(conv.weight, spec)
        >>> type(quantized_layer(conv, spec, quantize(conv.weight, s, z, spec), s, z)).__name__
        'PackedConv2d'
    """
    if isinstance(layer, nn.Linear):
        return quantized_linear(layer, spec, q, scale, zero)
    if isinstance(layer, nn.Conv2d):
        return PackedConv2d.from_float(layer, spec, q, scale, zero)
    raise ModelError(f"no quantized module for {type(layer).__name__}: only Linear and Conv2d")
