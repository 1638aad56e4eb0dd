"""Static int8: int8 weights with a scale per output channel and a uint8 input whose scale and
zero point were calibrated on data, on oneDNN's x86 kernels (`quantize.static_int8` makes them).

`StaticInt8Weight` is the format (buffers `weight_int8`, `weight_scale`; attributes
`input_scale`, `input_zero_point`); `StaticInt8Conv2d` and `StaticInt8Linear` add their shape
and kernel call. In eager mode each layer quantizes its input and calls
`onednn.qconv_pointwise` / `onednn.qlinear_pointwise` on the weight packed once on first use;
under torch.compile, torch.export and ONNX export each emits the reference pattern
(quantize -> dequantize -> float op), which inductor (with freezing) lowers to the same
kernels and the ONNX exporter writes as QDQ nodes. The layers run with autograd enabled too;
no gradient passes them (the input is rounded, the weights are frozen integers).

Example:
    >>> conv = StaticInt8Conv2d.from_float(nn.Conv2d(3, 8, 3), input_scale=0.02)
    >>> conv.weight_int8.dtype, conv(torch.rand(1, 3, 8, 8)).shape
    (torch.int8, torch.Size([1, 8, 6, 6]))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.core.errors import ModelError
from netchisel.core.modules import replace_module
from netchisel.measure.machine import cpu_flags
from netchisel.quantize.formats.base import CACHE, kernel_cache
from netchisel.quantize.formats.weight_view import HasWeightView
from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize

# The x86 (oneDNN) int8 formats: uint8 activations with a zero point, symmetric int8 weights.
ACT_MIN, ACT_MAX, ACT_DTYPE = 0, 255, torch.uint8
# Without VNNI, x86 int8 kernels add pairs of u8 x s8 products in saturating int16: inputs then
# use 7 bits (0-127), as torchao's x86 quantizer recommends for such CPUs (`reduce_range`).
ACT_MAX_REDUCED = 127
W_MIN, W_MAX, W_DTYPE = -128, 127, torch.int8
# oneDNN's output arguments: scale 1 and zero point 0 (no requantization), float32, no fused op.
_FLOAT_OUTPUT: tuple[Any, ...] = (1.0, 0, torch.float32, "none", [], "")


@cache
def full_int8_range() -> bool:
    """Whether this CPU's int8 kernels take 8-bit inputs without saturating: with VNNI (or
    AMX) they add u8 x s8 products in int32; without, pairs in saturating int16, and the
    inputs need 7 bits. Unknown (no flags): 7 bits, the safe side.

    Example:
        >>> isinstance(full_int8_range(), bool)
        True
    """
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _decomposed_ops() -> Any:
    # Importing it registers the quantized_decomposed ops.
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


class StaticInt8Weight(HasWeightView, nn.Module):
    """The static int8 format: the int8 weight and its scales, the input's qparams, the kernel."""

    weight_int8: Tensor
    weight_scale: Tensor
    input_scale: float
    input_zero_point: int
    # A class default: artifacts saved before 7-bit inputs existed hold 8-bit ones.
    input_quant_max: int = ACT_MAX

    def _setup(self, weight: Tensor, bias: Tensor | None, scale: float, zero_point: int) -> None:
        if not 0.0 < scale < float("inf"):
            raise ModelError(f"{type(self).__name__}: input scale must be > 0, got {scale}")
        if not ACT_MIN <= zero_point <= ACT_MAX:
            raise ModelError(f"{type(self).__name__}: input zero point {zero_point} is not 0-255")
        self.register_buffer("weight_int8", torch.zeros(weight.shape, dtype=W_DTYPE))
        self.register_buffer("weight_scale", torch.ones(weight.shape[0]))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.input_scale = float(scale)
        self.input_zero_point = int(zero_point)

    def _view_shape(self) -> tuple[int, ...]:
        return tuple(self.weight_int8.shape)

    def set_input_quant_max(self, quant_max: int) -> None:
        """Quantize inputs to 0-`quant_max`: 255, or 127 (`ACT_MAX_REDUCED`) for CPUs whose
        int8 kernels saturate (no VNNI)."""
        if quant_max not in (ACT_MAX, ACT_MAX_REDUCED):
            raise ModelError(
                f"{type(self).__name__}: input range 0-{quant_max} is not 0-255 or 0-127"
            )
        if self.input_zero_point > quant_max:
            raise ModelError(
                f"{type(self).__name__}: input zero point {self.input_zero_point} "
                f"is above {quant_max}"
            )
        self.input_quant_max = int(quant_max)

    def load_int8(self, q: Tensor, scale: Tensor) -> None:
        """Take an int8 weight (this layer's shape) and its per-output-channel scales."""
        if q.dtype != W_DTYPE or q.shape != self.weight_int8.shape:
            raise ModelError(
                f"{type(self).__name__}: expected an int8 weight of shape "
                f"{list(self.weight_int8.shape)}, got {q.dtype} {list(q.shape)}"
            )
        with torch.no_grad():
            self.weight_int8.copy_(q)
            self.weight_scale.copy_(scale.reshape(-1).float())

    def dequantized_weight(self) -> Tensor:
        """The float weight the layer computes with: int8 times its channel's scale."""
        shape = [-1] + [1] * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.reshape(shape)

    def input_qparams(self) -> tuple[float, int, int]:
        """(scale, zero point, top) the kernels quantize inputs with: the stored ones, or, for
        8-bit inputs on a CPU whose int8 kernels saturate on them (`full_int8_range`), 7 bits
        of twice the step over the same range, so an artifact calibrated elsewhere runs right.

        Example:
            >>> layer = StaticInt8Linear.from_float(nn.Linear(4, 2), input_scale=0.1)
            >>> layer.input_qparams() in [(0.1, 0, 255), (0.2, 0, 127)]
            True
        """
        s, z, top = self.input_scale, self.input_zero_point, self.input_quant_max
        if top == ACT_MAX and not full_int8_range():
            return s * 2, (z + 1) // 2, ACT_MAX_REDUCED
        return s, z, top

    def _reference_input(self, x: Tensor) -> Tensor:
        # quantize -> dequantize, the pattern inductor and the ONNX exporter recognise.
        qd = _decomposed_ops()
        s, z, top = self.input_qparams()
        if top != ACT_MAX and torch.compiler.is_exporting():
            # ONNX's QuantizeLinear saturates at 255 only: clip to the 7-bit range first.
            x = x.clamp((ACT_MIN - z) * s, (top - z) * s)
        q = qd.quantize_per_tensor(x.float(), s, z, ACT_MIN, top, ACT_DTYPE)
        return qd.dequantize_per_tensor(q, s, z, ACT_MIN, top, ACT_DTYPE)  # type: ignore[no-any-return]

    def _reference_weight(self) -> Tensor:
        qd = _decomposed_ops()
        # Inductor lowers this without freezing only with a zero-point tensor (made from a
        # buffer so freezing folds it to a constant); ONNX export wants none (zero).
        zero = None if torch.compiler.is_exporting() else self.weight_scale.mul(0).long()
        return qd.dequantize_per_channel(  # type: ignore[no-any-return]
            self.weight_int8, self.weight_scale, zero, 0, W_MIN, W_MAX, W_DTYPE
        )

    def _quantized_input(self, x: Tensor) -> Tensor:
        qd = _decomposed_ops()
        s, z, top = self.input_qparams()
        return qd.quantize_per_tensor(x.float(), s, z, ACT_MIN, top, ACT_DTYPE)  # type: ignore[no-any-return]

    def _kernel(self) -> tuple[Tensor, Tensor]:
        """(oneDNN-packed weight, zero weight zero points), rebuilt when the weight changes."""

        def build() -> tuple[Tensor, Tensor]:
            return self._pack(), torch.zeros(self.weight_int8.shape[0], dtype=torch.int64)

        tensors = (self.weight_int8, self.weight_scale)
        return kernel_cache(self, tensors, build, self.input_qparams())

    def _pack(self) -> Tensor:
        raise NotImplementedError

    def _kernel_args(self, x: Tensor) -> tuple[Any, ...]:
        """The int8 kernel's first arguments: `x` quantized and its qparams, the packed weight
        with its scales and (zero) zero points, the bias."""
        packed, zeros = self._kernel()
        scale, zero, _ = self.input_qparams()
        return (
            self._quantized_input(x),
            scale,
            zero,
            packed,
            self.weight_scale,
            zeros,
            self.bias,
        )

    def prepare_kernels(self) -> None:
        """Pack the weight for oneDNN now (otherwise it is packed on the first eager call)."""
        with torch.no_grad():
            self._kernel()

    def _kernel_input(self, x: Tensor) -> Tensor:
        """`x` for the int8 kernel: on the CPU, and detached, since no gradient passes the
        rounding of the input (the kernels have no backward; the weights are frozen)."""
        if x.device.type != "cpu":
            raise ModelError(f"{type(self).__name__} runs on x86 CPUs only, got {x.device}")
        return x.detach()

    def __getstate__(self) -> dict[str, Any]:
        # The packed weight is an opaque oneDNN tensor: it cannot be copied or pickled.
        state = dict(self.__dict__)
        state.pop(CACHE, None)
        return state

    def extra_repr(self) -> str:
        return (
            f"weight={list(self.weight_int8.shape)}, input_scale={self.input_scale:.4g}, "
            f"input_zero_point={self.input_zero_point}, bias={self.bias is not None}"
        )


class StaticInt8Conv2d(StaticInt8Weight):
    """A Conv2d with int8 weights (a scale per output channel) and a calibrated uint8 input.

    Example:
        >>> conv = StaticInt8Conv2d.from_float(nn.Conv2d(4, 8, 3, padding=1), input_scale=0.01)
        >>> conv(torch.rand(2, 4, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        input_scale: float,
        input_zero_point: int,
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ModelError(f"StaticInt8Conv2d needs a 4-d weight, got {list(weight.shape)}")
        self._setup(weight, bias, input_scale, input_zero_point)
        self.stride = tuple(int(v) for v in stride)
        self.padding = tuple(int(v) for v in padding)
        self.dilation = tuple(int(v) for v in dilation)
        self.groups = int(groups)

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, input_scale: float, input_zero_point: int = 0
    ) -> StaticInt8Conv2d:
        """Round `conv`'s weight to int8 per output channel; the input qparams are given."""
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ModelError("StaticInt8Conv2d.from_float needs numeric zero padding")
        layer = cls(
            conv.weight,
            conv.bias,
            input_scale,
            input_zero_point,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        layer.load_int8(*int8_per_channel(conv.weight))
        return layer

    def _pack(self) -> Tensor:
        scale, zero, _ = self.input_qparams()
        return torch.ops.onednn.qconv_prepack(  # type: ignore[no-any-return]
            self.weight_int8,
            self.weight_scale,
            scale,
            zero,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
            None,
        )

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            y = F.conv2d(
                self._reference_input(x),
                self._reference_weight(),
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            return y.to(x.dtype)
        x = self._kernel_input(x)
        batched = x if x.dim() == 4 else x.unsqueeze(0)
        y = torch.ops.onednn.qconv_pointwise(
            *self._kernel_args(batched),
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
            *_FLOAT_OUTPUT,
        )
        y = y if x.dim() == 4 else y.squeeze(0)
        return y.to(x.dtype)  # type: ignore[no-any-return]


class StaticInt8Conv1d(StaticInt8Conv2d):
    """A Conv1d as a `StaticInt8Conv2d` of height 1: the weight is stored `(out, in, 1, k)` and
    the input `(N, C, L)` runs as `(N, C, 1, L)` on the same oneDNN kernel.

    Example:
        >>> conv = StaticInt8Conv1d.from_float(nn.Conv1d(2, 4, 3, stride=2), input_scale=0.02)
        >>> conv(torch.rand(3, 2, 9)).shape, list(conv.weight_int8.shape)
        (torch.Size([3, 4, 4]), [4, 2, 1, 3])
    """

    @classmethod
    def from_conv1d_args(
        cls,
        weight: Tensor,
        bias: Tensor | None,
        input_scale: float,
        input_zero_point: int,
        stride: Sequence[int] = (1,),
        padding: Sequence[int] = (0,),
        dilation: Sequence[int] = (1,),
        groups: int = 1,
    ) -> StaticInt8Conv1d:
        """The layer for a 3-d Conv1d weight and the Conv1d's 1-element stride, padding,
        dilation (the int8 weights still to be loaded, 4-d)."""
        if weight.dim() != 3:
            raise ModelError(f"StaticInt8Conv1d needs a 3-d weight, got {list(weight.shape)}")
        return cls(
            weight.unsqueeze(2),
            bias,
            input_scale,
            input_zero_point,
            (1, int(stride[0])),
            (0, int(padding[0])),
            (1, int(dilation[0])),
            groups,
        )

    @classmethod
    def from_float(  # type: ignore[override]
        cls, conv: nn.Conv1d, input_scale: float, input_zero_point: int = 0
    ) -> StaticInt8Conv1d:
        """Round `conv`'s weight to int8 per output channel; the input qparams are given."""
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ModelError("StaticInt8Conv1d.from_float needs numeric zero padding")
        layer = cls.from_conv1d_args(
            conv.weight,
            conv.bias,
            input_scale,
            input_zero_point,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        q, scale = int8_per_channel(conv.weight)
        layer.load_int8(q.unsqueeze(2), scale)
        return layer

    def _view_shape(self) -> tuple[int, ...]:
        out, inputs, _, span = self.weight_int8.shape
        return out, inputs, span

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.unsqueeze(-2)).squeeze(-2)


class StaticInt8Linear(StaticInt8Weight):
    """A Linear with int8 weights (a scale per output row) and a calibrated uint8 input.

    Example:
        >>> layer = StaticInt8Linear.from_float(nn.Linear(16, 4), input_scale=0.01)
        >>> layer(torch.rand(3, 16)).shape
        torch.Size([3, 4])
    """

    in_features: int
    out_features: int

    def __init__(
        self, weight: Tensor, bias: Tensor | None, input_scale: float, input_zero_point: int
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ModelError(f"StaticInt8Linear needs a 2-d weight, got {list(weight.shape)}")
        self._setup(weight, bias, input_scale, input_zero_point)
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])

    @classmethod
    def from_float(
        cls, linear: nn.Linear, input_scale: float, input_zero_point: int = 0
    ) -> StaticInt8Linear:
        """Round `linear`'s weight to int8 per output row; the input qparams are given."""
        layer = cls(linear.weight, linear.bias, input_scale, input_zero_point)
        layer.load_int8(*int8_per_channel(linear.weight))
        return layer

    def _pack(self) -> Tensor:
        return torch.ops.onednn.qlinear_prepack(self.weight_int8, None)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            y = F.linear(self._reference_input(x), self._reference_weight(), self.bias)
            return y.to(x.dtype)
        x = self._kernel_input(x)
        y = torch.ops.onednn.qlinear_pointwise(
            *self._kernel_args(x.reshape(-1, self.in_features)), *_FLOAT_OUTPUT
        )
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # type: ignore[no-any-return]


STATIC_INT8_MODULES = (StaticInt8Conv2d, StaticInt8Linear)  # StaticInt8Conv1d is a Conv2d


def int8_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 of `weight` with one scale per output channel (round to nearest).

    Example:
        >>> q, s = int8_per_channel(torch.tensor([[0.5, -1.0], [2.0, 1.0]]))
        >>> q.tolist(), [round(v * 127, 3) for v in s.tolist()]
        ([[64, -127], [127, 64]], [1.0, 2.0])
    """
    spec = QuantSpec(bits=8, symmetric=True, granularity="channel")
    scale, zero = choose_qparams(weight, spec)
    return quantize(weight, scale, zero, spec), scale.reshape(-1)


def has_static_int8(model: nn.Module) -> bool:
    """Whether any layer of `model` is a static int8 layer."""
    return any(isinstance(m, STATIC_INT8_MODULES) for m in model.modules())


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` whose static int8 layers are float Conv1d/Conv2d/Linear with the
    dequantized weights (BatchNorms stay folded): the float model the int8 one rounds
    activations of.

    Example:
        >>> net = nn.Sequential(StaticInt8Linear.from_float(nn.Linear(4, 2), input_scale=0.1))
        >>> type(float_twin(net)[0]).__name__
        'Linear'
    """
    twin = copy.deepcopy(model)
    for name, layer in list(twin.named_modules()):
        if not isinstance(layer, STATIC_INT8_MODULES):
            continue
        w = layer.dequantized_weight()
        new: nn.Conv1d | nn.Conv2d | nn.Linear
        if isinstance(layer, StaticInt8Conv1d):
            new = nn.Conv1d(
                w.shape[1] * layer.groups,
                w.shape[0],
                w.shape[3],
                layer.stride[1],
                layer.padding[1],
                layer.dilation[1],
                layer.groups,
                bias=layer.bias is not None,
            )
            w = w.squeeze(2)
        elif isinstance(layer, StaticInt8Conv2d):
            new = nn.Conv2d(
                w.shape[1] * layer.groups,
                w.shape[0],
                _pair(w.shape[2:]),
                _pair(layer.stride),
                _pair(layer.padding),
                _pair(layer.dilation),
                layer.groups,
                bias=layer.bias is not None,
            )
        else:
            new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
        with torch.no_grad():
            new.weight.copy_(w)
            if new.bias is not None and layer.bias is not None:
                new.bias.copy_(layer.bias)
        replace_module(twin, name, new)
    return twin


def _pair(values: Sequence[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])
