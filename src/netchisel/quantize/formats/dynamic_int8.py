"""`DynamicInt8Linear`: int8 weights and int8 activations quantized at run time: per row on
`torch._int_mm` (int8 x int8 -> int32), or per tensor on fbgemm's fused
`quantized::linear_dynamic` (CPU).
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.core.config import check_choice
from netchisel.core.errors import ModelError
from netchisel.measure.machine import cpu_flags
from netchisel.quantize.formats.base import QuantizedLinear
from netchisel.quantize.primitives import QuantSpec, ScaleMethod, choose_qparams, quantize

DYNAMIC_BLOCK_ROWS = 256  # rows per block: the fastest of 64-512 on MiniLM's layers here
ActivationGranularity = Literal["per_token", "per_tensor"]
WeightGranularity = Literal["per_channel", "per_tensor"]
ACTIVATION_GRANULARITIES: tuple[str, ...] = get_args(ActivationGranularity)
WEIGHT_GRANULARITIES: tuple[str, ...] = get_args(WeightGranularity)


@cache
def fbgemm_full_range() -> bool:
    """Whether fbgemm may quantize activations to the full 8 bits on this CPU.

    Without AVX512-VNNI its u8 x s8 kernel adds pairs of products in saturating int16, so
    torch reduces activations to 7 bits (`reduce_range`); with VNNI the sums are int32.
    """
    return "avx512_vnni" in cpu_flags()


# torch.ao's quantized tensors are deprecated; where they are gone, the per-row path runs.
FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
    torch.ops.quantized, "linear_dynamic"
)


class DynamicInt8Linear(QuantizedLinear):
    """int8 weights (a scale per row); activations quantized to int8 at run time.

    `activations="per_token"` (default) gives every row of the input its own scale and runs
    `torch._int_mm`: the closest to float. `"per_tensor"` gives the whole input one scale and,
    on a CPU with fbgemm, runs its fused `quantized::linear_dynamic` (the kernel of torch's
    `quantize_dynamic`): faster, a little less exact. `from_float(weights="per_tensor")` gives
    all rows of the weight one scale (stored per row all the same); fbgemm then runs its
    per-tensor kernel, a few percent faster again and less exact still.

    The input gets no gradient in either mode (as through any rounding); the bias trains.
    torch.export (and `torch.compile(fullgraph=True)`) cannot trace fbgemm's packed weight:
    export a model with per-token layers.

    Example:
        >>> layer = DynamicInt8Linear.from_float(nn.Linear(64, 32))
        >>> layer(torch.ones(4, 64)).shape
        torch.Size([4, 32])
        >>> DynamicInt8Linear.from_float(nn.Linear(64, 32), "per_tensor")(torch.ones(4, 64)).shape
        torch.Size([4, 32])
    """

    weight_int8: Tensor
    weight_scale: Tensor
    # A class default: artifacts saved before the modes existed have no such attribute.
    activations: ActivationGranularity = "per_token"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activations: ActivationGranularity = "per_token",
    ) -> None:
        super().__init__()
        check_choice("DynamicInt8Linear activations", activations, ACTIVATION_GRANULARITIES)
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self.activations = activations
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        activations: ActivationGranularity = "per_token",
        weights: WeightGranularity = "per_channel",
        scale_method: ScaleMethod = "minmax",
    ) -> DynamicInt8Linear:
        """Quantize `linear`'s weight per output row (or per tensor), symmetric, to nearest."""
        check_choice("DynamicInt8Linear weights", weights, WEIGHT_GRANULARITIES)
        spec = QuantSpec(bits=8, granularity="channel" if weights == "per_channel" else "tensor")
        scale, zero = choose_qparams(linear.weight, spec, scale_method)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, activations)
        layer.weight_int8.copy_(quantize(linear.weight, scale, zero, spec))
        layer.weight_scale.copy_(scale.reshape(-1).expand(linear.out_features))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        if self.activations == "per_tensor" and FBGEMM and x.is_cpu:
            return self._fbgemm(x)
        # The no-op reshape and casts are skipped: at one row they cost as much as the kernel.
        flat = x.dim() == 2 and x.dtype == torch.float32
        x2 = (x if flat else x.reshape(-1, x.shape[-1]).float()).detach()  # no gradient
        if x2.shape[0] == 0:
            y = x2.new_empty(0, self.out_features)
        else:
            y = x2.new_empty(x2.shape[0], self.out_features)
            # Row blocks keep each block's int32 product in cache for the scaling that
            # follows: unblocked, those element-wise passes over a large output cost as much
            # as the int8 matmul (bench/quant_minilm.py measures both).
            amax = None if self.activations == "per_token" else _amax(x2, dim=None)
            for start in range(0, x2.shape[0], DYNAMIC_BLOCK_ROWS):
                stop = start + DYNAMIC_BLOCK_ROWS
                self._block(x2[start:stop], y[start:stop], amax)
        return y if flat else y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _block(self, x: Tensor, out: Tensor, amax: Tensor | None) -> None:
        # abs().amax and multiply + round_ were much faster than aminmax and divide + round +
        # clamp on this CPU. |x * 127 / amax| <= 127, so no clamp is needed.
        amax = _amax(x, dim=1) if amax is None else amax
        xq = (x * (127.0 / amax)).round_().to(torch.int8)
        weight = self.weight_int8
        if self.in_features == 1:  # the CPU kernel returns garbage for K=1: pad with a zero
            xq, weight = F.pad(xq, (0, 1)), F.pad(weight, (0, 1))
        out.copy_(torch._int_mm(xq, weight.t()))
        out.mul_(amax * (1 / 127)).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)

    def prepare_kernels(self) -> None:
        if self.activations == "per_tensor" and FBGEMM:
            with torch.no_grad():
                self._packed(fuse_bias=True)

    def _fbgemm(self, x: Tensor) -> Tensor:
        # At one row this layer's Python costs as much as the kernel, so it reads its tensors
        # from the module's dicts (nn.Module.__getattr__ is slow) and skips no-op calls.
        if torch.compiler.is_exporting():
            raise ModelError(
                "torch.export cannot trace fbgemm's packed weight in a per_tensor "
                "DynamicInt8Linear: quantize with activations: per_token to export"
            )
        flat = x.dim() == 2 and x.dtype == torch.float32
        x2 = x if flat else x.reshape(-1, x.shape[-1]).float()
        if x2.requires_grad:
            x2 = x2.detach()  # no gradient through the rounding (fbgemm has no backward)
        # The bias is fused into the kernel unless it is being trained.
        bias = self._parameters.get("bias")
        trained = bias is not None and bias.requires_grad and torch.is_grad_enabled()
        packed, reduce_range = self._packed(fuse_bias=not trained)
        y: Tensor = torch.ops.quantized.linear_dynamic(x2, packed, reduce_range)
        if trained and bias is not None:
            y = y + bias
        return y if flat else y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _packed(self, fuse_bias: bool) -> tuple[Any, bool]:
        """fbgemm's packed weight (with the bias when `fuse_bias`) and its `reduce_range`."""
        weight, scales = self._buffers["weight_int8"], self._buffers["weight_scale"]
        bias = self._parameters.get("bias") if fuse_bias else None
        assert weight is not None and scales is not None

        def build() -> tuple[Any, bool]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch.ao's quantized dtypes
                if bool((scales == scales[0]).all()):  # one scale: fbgemm's faster kernel
                    qweight = torch._make_per_tensor_quantized_tensor(weight, float(scales[0]), 0)
                else:
                    qweight = torch._make_per_channel_quantized_tensor(
                        weight,
                        scales.double(),
                        torch.zeros(self.out_features, dtype=torch.long),
                        0,
                    )
                packed = torch.ops.quantized.linear_prepack(
                    qweight, None if bias is None else bias.detach()
                )
            return packed, not fbgemm_full_range()

        return self._cached((weight, scales, bias), build)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activations={self.activations}"


def _amax(x: Tensor, dim: int | None) -> Tensor:
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    return amax.clamp_min(1e-12)
