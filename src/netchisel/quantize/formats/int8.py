"""int8 rows with one scale per row: `Int8WeightOnlyLinear` (bf16 scales, bf16 activations, on
`aten._weight_int8pack_mm`, CPU and CUDA) and `Int8Embedding` (a token table looked up as int8
rows and scaled: 4x smaller on disk and in memory, no more work than a float lookup).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.quantize.formats.base import QuantizedLinear
from netchisel.quantize.formats.kernels import kernel_qparams
from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize

_INT8_INPUTS = 16  # the CPU int8 kernel wants the input features in multiples of 16


class Int8WeightOnlyLinear(QuantizedLinear):
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
        # The kernel reads rows with stride 1 (a transposed input, e.g. MLP-Mixer's token mix
        # at batch 1, is rejected): copy only such an input.
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self._kernel_weight(), self.scales)
        return self._finish(y, x)


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
