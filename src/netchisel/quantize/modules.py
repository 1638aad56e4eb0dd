"""Quantized Linear layers that hold packed integers and run integer kernels.

- `Int8WeightOnlyLinear`: int8 weights, one scale per output row, bf16 activations, on
  `aten._weight_int8pack_mm` (CPU and CUDA).
- `Int4WeightOnlyLinear`: 4-bit weights in groups along the input, on
  `aten._weight_int4pack_mm_for_cpu` (CPU) or `aten._weight_int4pack_mm` (CUDA).
- `DynamicInt8Linear`: int8 weights and int8 activations quantized at run time: per row on
  `torch._int_mm` (int8 x int8 -> int32), or per tensor on fbgemm's fused
  `quantized::linear_dynamic` (CPU).
- `PackedLinear`: any other bit width (1-8) or layout: stored packed at its real size, but
  computed in float after unpacking once. It is simulated for speed: `simulated = True`.

Every module keeps a portable layout in its buffers (what the artifact stores) and builds the
kernel's own layout on first use; the cache is rebuilt when the buffers change.
`quantized_linear` picks the module with a real kernel for a spec when there is one.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.artifact.bits import pack_bits, unpack_bits
from netchisel.core.config import check_choice
from netchisel.core.errors import ModelError
from netchisel.measure.machine import cpu_flags
from netchisel.quantize.primitives import (
    QuantSpec,
    ScaleMethod,
    choose_qparams,
    dequantize,
    quantize,
)

INT4_GROUP_SIZES = (32, 64, 128, 256)
_INT4_ROWS = 16  # the CPU int4 kernel wants the output features in multiples of 16
_INT8_INPUTS = 16  # the CPU int8 kernel wants the input features in multiples of 16


class _QuantizedLinear(nn.Module):
    """Shared parts: shapes, bias, the cache of the kernel layout, and the repr."""

    simulated = False
    bits = 8

    in_features: int
    out_features: int

    def _setup(self, in_features: int, out_features: int, bias: Tensor | None) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def _cached(self, key_tensors: Tensor | tuple[Tensor | None, ...], build: Any) -> Any:
        # Keyed by storage and version, so load_state_dict (copy or assign) invalidates it.
        # Tensors made under inference_mode have no version counter (and cannot be changed).
        tensors = key_tensors if isinstance(key_tensors, tuple) else (key_tensors,)
        cache = self.__dict__.get("_netchisel_kernel_cache")
        absent = tuple(t is None for t in tensors)
        if cache is not None and torch.compiler.is_compiling() and cache[2] == absent:
            # torch.compile cannot read storage or versions (each read would split the graph):
            # it takes the layout built before compiling, so one graph holds the whole model.
            return cache[1]
        key = tuple(
            None if t is None else (t.data_ptr(), 0 if t.is_inference() else t._version, t.device)
            for t in tensors
        )
        if cache is None or cache[0] != key:
            cache = (key, build(), absent)
            self.__dict__["_netchisel_kernel_cache"] = cache
        return cache[1]

    def prepare_kernels(self) -> None:
        """Build the kernel's layout of the weight now (otherwise it is built on first use)."""

    def _finish(self, y: Tensor, x: Tensor) -> Tensor:
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, bias={self.bias is not None}"
        )


class Int8WeightOnlyLinear(_QuantizedLinear):
    """int8 weights with a bf16 scale per output row; activations run in bf16.

    Example:
        >>> layer = Int8WeightOnlyLinear.from_float(nn.Linear(64, 32))
        >>> layer.weight_int8.dtype, layer(torch.ones(2, 64)).shape
        (torch.int8, torch.Size([2, 32]))
    """

    weight_int8: Tensor
    scales: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16))

    @classmethod
    def from_float(
        cls, linear: nn.Linear, q: Tensor | None = None, scale: Tensor | None = None
    ) -> Int8WeightOnlyLinear:
        """Quantize `linear` round-to-nearest, or take given int8 `q` and row `scale`."""
        if q is None or scale is None:
            spec = QuantSpec(bits=8)
            scale, zero = kernel_qparams(linear.weight, spec)
            q = quantize(linear.weight, scale, zero, spec)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        layer.weight_int8.copy_(q.reshape(layer.weight_int8.shape))
        layer.scales.copy_(scale.reshape(-1).to(torch.bfloat16))
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> Tensor:
        return self.weight_int8.float() * self.scales.float()[:, None]

    def _pad(self) -> int:
        # The CPU kernel reads inputs in blocks of 16: other widths crash or return garbage
        # (measured: 100 inputs segfault, 104 give inf), so inputs are zero-padded.
        return -self.in_features % _INT8_INPUTS

    def prepare_kernels(self) -> None:
        self._kernel_weight()

    def _kernel_weight(self) -> Tensor:
        pad = self._pad()
        if not pad:
            return self.weight_int8
        return self._cached(self.weight_int8, lambda: F.pad(self.weight_int8, (0, pad)))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if pad := self._pad():
            x2 = F.pad(x2, (0, pad))
        y = torch.ops.aten._weight_int8pack_mm(x2, self._kernel_weight(), self.scales)
        return self._finish(y, x)


class Int4WeightOnlyLinear(_QuantizedLinear):
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
        self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128
    ) -> None:
        super().__init__()
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self.group_size = group_size
        self.padded_in = -(-in_features // group_size) * group_size
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
        group_size: int = 128,
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
            padded = F.pad(weight, (0, layer.padded_in - layer.in_features))
            scale, zero = kernel_qparams(padded, spec)
            q = quantize(padded, scale, zero, spec)
        layer.load_quantized(q, scale, zero, symmetric)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        return layer.to(linear.weight.device)

    def load_quantized(self, q: Tensor, scale: Tensor, zero: Tensor, symmetric: bool) -> None:
        """Fill the buffers from `primitives`-style integers (`[out, in or padded_in]`)."""
        unsigned = q.to(torch.int16) + (8 if symmetric else 0)  # now in [0, 15]
        zero = zero.float() + (8 if symmetric else 0)
        rows, cols = unsigned.shape
        full = torch.full((self.padded_out, self.padded_in), 8, dtype=torch.int16)
        full[:rows, :cols] = unsigned
        self.qweight.copy_((full[:, 0::2] | (full[:, 1::2] << 4)).to(torch.uint8))
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
                tiles = next(t for t in (8, 4, 2) if self.padded_in % (32 * t) == 0)
                out: Tensor = torch.ops.aten._convert_weight_to_int4pack(packed, tiles)
            else:
                out = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpacked, 1)
            return out

        return self._cached(self.qweight, build)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
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


class DynamicInt8Linear(_QuantizedLinear):
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


class PackedLinear(_QuantizedLinear):
    """Weights of any bit width stored bit-packed; computed in float (no integer kernel).

    The file holds `bits` bits per weight plus the scales; at run time the weight is
    unpacked once and kept in float, so it is no faster and no smaller in memory.

    Example:
        >>> layer = PackedLinear.from_float(nn.Linear(8, 4), QuantSpec(bits=3, symmetric=False))
        >>> layer.packed.numel()  # 32 weights x 3 bits
        12
    """

    simulated = True
    packed: Tensor
    scale: Tensor
    zero: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        symmetric: bool = True,
        granularity: str = "channel",
        group_size: int = 128,
    ) -> None:
        super().__init__()
        self._setup(in_features, out_features, torch.zeros(out_features) if bias else None)
        self.bits = bits
        self.symmetric = symmetric
        self.granularity = granularity
        self.group_size = group_size
        groups = self._groups()
        self.register_buffer(
            "packed", torch.zeros((out_features * in_features * bits + 7) // 8, dtype=torch.uint8)
        )
        self.register_buffer("scale", torch.ones(groups[0], groups[1]))
        self.register_buffer("zero", torch.zeros(groups[0], groups[1]))

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.symmetric, self.granularity, self.group_size)  # type: ignore[arg-type]

    def _groups(self) -> tuple[int, int]:
        if self.granularity == "tensor":
            return 1, 1
        if self.granularity == "channel":
            return self.out_features, 1
        return self.out_features, self.in_features // self.group_size

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
        if q is None or scale is None or zero is None:
            scale, zero = choose_qparams(linear.weight, spec)
            q = quantize(linear.weight, scale, zero, spec)
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            spec.bits,
            spec.symmetric,
            spec.granularity,
            spec.group_size,
        )
        layer.packed.copy_(pack_bits(q.cpu(), spec.bits))
        layer.scale.copy_(scale.reshape(layer.scale.shape))
        layer.zero.copy_(zero.reshape(layer.zero.shape))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> Tensor:
        numel = self.out_features * self.in_features
        q = unpack_bits(self.packed.cpu(), self.bits, numel, signed=self.symmetric)
        q = q.reshape(self.out_features, self.in_features).to(self.scale.device)
        return dequantize(q, self.scale, self.zero, self.spec())

    def prepare_kernels(self) -> None:
        with torch.no_grad():
            self._cached(self.packed, self.dequantized_weight)

    def forward(self, x: Tensor) -> Tensor:
        weight = self._cached(self.packed, self.dequantized_weight)
        return self._finish(F.linear(x.reshape(-1, self.in_features), weight.to(x.dtype)), x)


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row.

    A lookup gathers int8 rows and scales them: the table is 4x smaller on disk and in
    memory, and the lookup does no more work than a float one.

    Example:
        >>> table = Int8Embedding.from_float(nn.Embedding(100, 16))
        >>> table.weight_int8.dtype, table(torch.tensor([[1, 2]])).shape
        (torch.int8, torch.Size([1, 2, 16]))
    """

    bits = 8
    simulated = False
    weight_int8: Tensor
    scales: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer(
            "weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8)
        )
        self.register_buffer("scales", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> Int8Embedding:
        """Quantize each row symmetrically to int8 (round to nearest)."""
        spec = QuantSpec(bits=8)
        scale, zero = choose_qparams(embedding.weight, spec)
        table = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        table.weight_int8.copy_(quantize(embedding.weight, scale, zero, spec))
        table.scales.copy_(scale.reshape(-1))
        return table.to(embedding.weight.device)

    def dequantized_weight(self) -> Tensor:
        return self.weight_int8.float() * self.scales[:, None]

    def forward(self, ids: Tensor) -> Tensor:
        rows = F.embedding(ids, self.weight_int8).float()
        return rows * F.embedding(ids, self.scales.unsqueeze(1))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8"


QUANTIZED_LINEARS = (Int8WeightOnlyLinear, Int4WeightOnlyLinear, DynamicInt8Linear, PackedLinear)


def has_kernel(spec: QuantSpec) -> bool:
    """True when `quantized_linear` gives a module with a real integer kernel for `spec`."""
    if spec.bits == 8:
        return spec.symmetric and spec.granularity == "channel"
    return spec.bits == 4 and spec.granularity == "group" and spec.group_size in INT4_GROUP_SIZES


def kernel_qparams(
    weight: Tensor, spec: QuantSpec, method: ScaleMethod = "minmax"
) -> tuple[Tensor, Tensor]:
    """`choose_qparams`, with scales rounded up to what the kernel stores (bf16).

    Rounding the scale after quantizing would move every weight by up to 127 x 2**-8 of a
    step; rounding it first, and up so nothing clips, keeps the error within half a step.

    Example:
        >>> s, _ = kernel_qparams(torch.tensor([[0.3, -1.0]]), QuantSpec(bits=8))
        >>> bool(s.to(torch.bfloat16).float() == s)
        True
    """
    scale, zero = choose_qparams(weight, spec, method)
    return (bf16_round_up(scale) if has_kernel(spec) else scale), zero


def bf16_round_up(scale: Tensor) -> Tensor:
    """The smallest bf16 value >= each scale (float32), so nothing the scale covered clips.

    Example:
        >>> float(bf16_round_up(torch.tensor([1.001])))
        1.0078125
    """
    rounded = scale.to(torch.bfloat16)
    up = torch.nextafter(rounded, torch.tensor(float("inf"), dtype=torch.bfloat16))
    return torch.where(rounded.float() < scale, up, rounded).float()


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


def padded_weight(linear: nn.Linear, spec: QuantSpec, name: str = "") -> Tensor:
    """`linear`'s float weight, inputs zero-padded to a multiple of the group size."""
    weight = linear.weight.detach().float()
    if spec.granularity != "group" or weight.shape[1] % spec.group_size == 0:
        return weight
    if not has_kernel(spec):
        from netchisel.core.errors import ConfigError

        raise ConfigError(
            f"{f'layer {name}: ' if name else ''}group_size {spec.group_size} does not divide "
            f"in_features {weight.shape[1]}; "
            "pick a divisor (only the int4 kernel pads, for group sizes 32-256)"
        )
    pad = -weight.shape[1] % spec.group_size
    return F.pad(weight, (0, pad))
