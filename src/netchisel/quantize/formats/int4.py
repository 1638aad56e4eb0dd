"""`Int4WeightOnlyLinear`: 4-bit weights in groups along the input, on
`aten._weight_int4pack_mm_for_cpu` (CPU) or `aten._weight_int4pack_mm` (CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.quantize.formats.base import QuantizedLinear
from netchisel.quantize.formats.kernels import kernel_qparams
from netchisel.quantize.primitives import (
    DEFAULT_GROUP_SIZE,
    QuantSpec,
    group_padding,
    pad_to_groups,
    quantize,
)

_INT4_ROWS = 16  # the CPU int4 kernel wants the output features in multiples of 16
_PACK_ROWS = 1024  # rows packed at once by load_quantized (its uint8 temporaries: 3 x rows x in)


def cuda_inner_k_tiles(padded_in: int) -> int:
    """The CUDA int4 kernel's inner K tiles for `padded_in` inputs: the most of 8, 4, 2 whose
    super-tile (16 inputs a tile) divides it. Groups pad the inputs to a multiple of 32, so
    2 always fits.

    Example:
        >>> cuda_inner_k_tiles(4096), cuda_inner_k_tiles(352), cuda_inner_k_tiles(96)
        (8, 2, 2)
    """
    return next((t for t in (8, 4, 2) if padded_in % (16 * t) == 0), 2)


class Int4WeightOnlyLinear(QuantizedLinear):
    """4-bit weights, two per byte, with a bf16 scale and zero per group of inputs.

    Stored portably: `qweight[n, k // 2]` holds column 2k in its low nibble and 2k + 1 in its
    high nibble; a weight is `(q - 8) * scale + zero`. Inputs are padded to a multiple of the
    group size and outputs to a multiple of 16 (the CPU kernel's tile); the padding is zeros.

    Example:
        >>> layer = Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), group_size=32)
        >>> tuple(layer.qweight.shape), layer(torch.ones(1, 64)).shape
        ((16, 32), torch.Size([1, 16]))
    """

    bits = 4
    qweight: Tensor
    scales_and_zeros: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        super().__init__()
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self.group_size = group_size
        self.padded_in = in_features + group_padding(in_features, self.spec())
        self.padded_out = -(-out_features // _INT4_ROWS) * _INT4_ROWS
        groups = self.padded_in // group_size
        self.register_buffer(
            "qweight", torch.full((self.padded_out, self.padded_in // 2), 0x88, dtype=torch.uint8)
        )
        sz = torch.zeros(groups, self.padded_out, 2, dtype=torch.bfloat16)
        sz[..., 0] = 1.0
        self.register_buffer("scales_and_zeros", sz)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        group_size: int = DEFAULT_GROUP_SIZE,
        q: Tensor | None = None,
        scale: Tensor | None = None,
        zero: Tensor | None = None,
        symmetric: bool = False,
    ) -> Int4WeightOnlyLinear:
        """Quantize `linear` (RTN), or take given 4-bit `q` with group `scale` and `zero`.

        `q`, `scale` and `zero` follow `primitives`: `w = (q - zero) * scale`, `q` of shape
        `[out, in]` (int8 in [-8, 7] if `symmetric`, else uint8 in [0, 15]).
        """
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        spec = QuantSpec(bits=4, symmetric=symmetric, granularity="group", group_size=group_size)
        weight = linear.weight.detach().float()
        if q is None or scale is None or zero is None:
            padded = pad_to_groups(weight, spec)
            scale, zero = kernel_qparams(padded, spec)
            q = quantize(padded, scale, zero, spec)
        layer.load_quantized(q, scale, zero, symmetric)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        return layer.to(linear.weight.device)

    def spec(self) -> QuantSpec:
        """The grouping of the stored integers (asymmetric: the kernel's float zero)."""
        return QuantSpec(4, symmetric=False, granularity="group", group_size=self.group_size)

    def load_quantized(self, q: Tensor, scale: Tensor, zero: Tensor, symmetric: bool) -> None:
        """Fill the buffers from `primitives`-style integers (`[out, in or padded_in]`)."""
        zero = zero.float() + (8 if symmetric else 0)
        rows, cols = q.shape
        self.qweight.fill_(0x88)  # padding: 8 in both nibbles
        # A few rows at a time in uint8: a large layer (an LM head) gets no int16 copy.
        for start in range(0, rows, _PACK_ROWS):
            part = q[start : start + _PACK_ROWS]
            full = torch.full((len(part), self.padded_in), 8, dtype=torch.uint8)
            full[:, :cols] = part + 8 if symmetric else part  # now in [0, 15]
            self.qweight[start : start + len(part)] = full[:, 0::2] | (full[:, 1::2] << 4)
        groups = scale.shape[1]
        # (q - zero) * s == (q - 8) * s + (8 - zero) * s: the kernel's float zero.
        sz = torch.zeros(self.padded_in // self.group_size, self.padded_out, 2)
        sz[..., 0] = 1.0
        sz[:groups, :rows, 0] = scale.float().T
        sz[:groups, :rows, 1] = ((8 - zero) * scale.float()).T
        self.scales_and_zeros.copy_(sz.to(torch.bfloat16))

    def unpacked(self) -> Tensor:
        """The 4-bit values, `[padded_out, padded_in]`, in [0, 15]."""
        low = (self.qweight & 0x0F).to(torch.int32)
        high = (self.qweight >> 4).to(torch.int32)
        return torch.stack([low, high], dim=-1).reshape(self.padded_out, self.padded_in)

    def dequantized_weight(self) -> Tensor:
        sz = self.scales_and_zeros.float()
        scale = sz[..., 0].T.repeat_interleave(self.group_size, 1)
        zero = sz[..., 1].T.repeat_interleave(self.group_size, 1)
        w = (self.unpacked().float() - 8) * scale + zero
        return w[: self.out_features, : self.in_features]

    def prepare_kernels(self) -> None:
        with torch.no_grad():
            self._kernel_weight()

    def _kernel_weight(self) -> Tensor:
        def build() -> Tensor:
            unpacked = self.unpacked()
            if self.qweight.is_cuda:
                packed = (unpacked[:, 1::2] | (unpacked[:, 0::2] << 4)).to(torch.uint8)
                tiles = cuda_inner_k_tiles(self.padded_in)
                out: Tensor = torch.ops.aten._convert_weight_to_int4pack(packed, tiles)
            else:
                out = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpacked, 1)
            return out

        return self._cached(self.qweight, build)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        # The kernel wants a contiguous input (a transposed one, e.g. MLP-Mixer's token mix at
        # batch 1, is rejected); `contiguous` copies only such an input.
        x2 = x2.contiguous()
        kernel = self._kernel_weight()
        if x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(
                x2, kernel, self.group_size, self.scales_and_zeros
            )
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, kernel, self.group_size, self.scales_and_zeros
            )
        return self._finish(y[:, : self.out_features], x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"
