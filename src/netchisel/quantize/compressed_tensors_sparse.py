"""The sparse formats of compressed-tensors, written from their layout: a pruned float Linear
stored as its non-zero values and a bitmask of where they sit.

- `sparse-bitmask` (any pattern): `{layer}.compressed` the non-zeros in row-major order
  (1-D), `{layer}.bitmask` uint8 `[rows, ceil(cols / 8)]` (bit `i` of byte `j` is column
  `8 j + i`, as numpy's little-endian `packbits`), `{layer}.row_offsets` int64 (where each
  row starts in `compressed`), `{layer}.shape` int64 `[rows, cols]`.
- `sparse-24-bitmask` (2:4, the pattern vLLM's 2:4 kernels run): exactly two kept positions
  in every 4 consecutive inputs, so `compressed` is `[rows, cols / 2]` (a kept position may
  hold a zero when a group had more than two), the same bitmask, `shape` `[[rows], [cols]]`.

The package's sparse compressors (in releases up to 0.14; removed in 2026, vllm-project/
compressed-tensors#610 and llm-compressor#2452) are the oracle of the tests, never imported
here. Values are stored as they are: decompression gives back the weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from netchisel.artifact import bits
from netchisel.core.errors import ArtifactError, ModelError

BITMASK = "sparse-bitmask"
TWO_FOUR = "sparse-24-bitmask"
FORMATS = (BITMASK, TWO_FOUR)
Sparsity = Literal["auto", "none", "sparse-bitmask", "sparse-24-bitmask"]
SPARSITY_CHOICES: tuple[str, ...] = ("auto", "none", *FORMATS)


def pack_bits(mask: Tensor) -> Tensor:
    """A 2-D bool mask as uint8 `[rows, ceil(cols / 8)]`, bit `i` of byte `j` = column 8j+i:
    the artifact's 1-bit packing of each row padded to whole bytes.

    Example:
        >>> pack_bits(torch.tensor([[True, False, True] + [False] * 6 + [True]]))
        tensor([[5, 2]], dtype=torch.uint8)
    """
    rows, cols = mask.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.uint8)
    padded[:, :cols] = mask
    return bits.pack_bits(padded, 1).view(rows, -1)


def unpack_bits(packed: Tensor, cols: int) -> Tensor:
    """The bool mask `[rows, cols]` of `pack_bits`' output.

    Example:
        >>> unpack_bits(torch.tensor([[5, 2]], dtype=torch.uint8), 10).int().tolist()
        [[1, 0, 1, 0, 0, 0, 0, 0, 0, 1]]
    """
    rows, width = packed.shape
    flat = bits.unpack_bits(packed.contiguous(), 1, rows * width * 8)
    return flat.view(rows, width * 8)[:, :cols].bool()


def two_four_mask(weight: Tensor) -> Tensor | None:
    """Exactly two kept positions in every 4 consecutive inputs, covering every non-zero;
    None when a group has more than two non-zeros or the inputs are not a multiple of 4.

    Example:
        >>> two_four_mask(torch.tensor([[0.0, 3.0, 0.0, 0.0]])).int().tolist()
        [[1, 1, 0, 0]]
    """
    rows, cols = weight.shape
    if cols % 4:
        return None
    groups = (weight != 0).view(rows, cols // 4, 4)
    if bool((groups.sum(-1) > 2).any()):
        return None
    # Keep the non-zeros, then the first zeros of the group until two are kept.
    rank = groups.int() * 4 + torch.arange(3, -1, -1)  # non-zeros first, then by position
    keep = torch.zeros_like(groups)
    keep.scatter_(-1, rank.topk(2, dim=-1).indices, True)
    return keep.view(rows, cols)


@dataclass(frozen=True)
class SparseLayers:
    """The pruned float Linears an export compresses, in one format."""

    format: str
    tensors: dict[str, dict[str, Tensor]]  # layer -> its tensors, keys without the prefix
    zeros: int  # zeros in the compressed layers' weights
    weights: int  # weights in them

    def config(self) -> dict[str, Any]:
        """The checkpoint's `sparsity_config`."""
        return {
            "format": self.format,
            "targets": sorted(self.tensors),
            "ignore": [],
            "global_sparsity": self.zeros / self.weights,
            "sparsity_structure": "2:4" if self.format == TWO_FOUR else "unstructured",
        }


def compress(weight: Tensor, fmt: str) -> dict[str, Tensor]:
    """One weight in `fmt` (for 2:4, `weight` must be 2:4: see `two_four_mask`).

    Example:
        >>> w = torch.tensor([[0.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
        >>> parts = compress(w, "sparse-bitmask")
        >>> parts["compressed"].tolist(), parts["bitmask"].tolist(), parts["row_offsets"].tolist()
        ([2.0, 1.0, 3.0], [[10], [1]], [0, 2])
    """
    rows, cols = weight.shape
    w = weight.detach()
    if fmt == TWO_FOUR:
        mask = two_four_mask(w)
        if mask is None:
            raise ModelError("weight is not 2:4 sparse")
        return {
            "shape": torch.tensor([[rows], [cols]], dtype=torch.int64),
            "compressed": w[mask].reshape(rows, cols // 2).contiguous(),
            "bitmask": pack_bits(mask),
        }
    mask = w != 0
    counts = mask.sum(1)
    return {
        "shape": torch.tensor([rows, cols], dtype=torch.int64),
        "compressed": w[mask].contiguous(),
        "bitmask": pack_bits(mask),
        "row_offsets": (counts.cumsum(0) - counts).to(torch.int64),
    }


def decompress(name: str, fmt: str, tensors: dict[str, Tensor], rows: int, cols: int) -> Tensor:
    """The dense weight of one layer's checked tensors; a count that disagrees with its
    bitmask is one `ArtifactError` naming the layer.

    Example:
        >>> w = torch.tensor([[0.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
        >>> torch.equal(decompress("l", "sparse-bitmask", compress(w, "sparse-bitmask"), 2, 4), w)
        True
    """
    if [int(v) for v in tensors["shape"].flatten().tolist()] != [rows, cols]:
        raise ArtifactError(f"{name}.shape disagrees with the model's layer [{rows}, {cols}]")
    mask = unpack_bits(tensors["bitmask"], cols)
    values = tensors["compressed"]
    if fmt == TWO_FOUR:
        if cols % 4 or not bool((mask.view(rows, -1, 4).sum(-1) == 2).all()):
            raise ArtifactError(f"{name}.bitmask does not keep exactly 2 of every 4 inputs")
    else:
        counts = mask.sum(1)
        if values.numel() != int(counts.sum()):
            raise ArtifactError(
                f"{name}.compressed holds {values.numel()} values, its bitmask {int(counts.sum())}"
            )
        if not torch.equal(tensors["row_offsets"].to(torch.int64), counts.cumsum(0) - counts):
            raise ArtifactError(f"{name}.row_offsets disagree with its bitmask")
    dense = torch.zeros(rows, cols, dtype=values.dtype)
    dense[mask] = values.flatten()
    return dense


def keys_of(fmt: str) -> tuple[str, ...]:
    """The tensor names (after the layer's prefix) one layer has in `fmt`."""
    return ("shape", "compressed", "bitmask") + (("row_offsets",) if fmt == BITMASK else ())


def sparse_layers(model: nn.Module, sparsity: str) -> SparseLayers | None:
    """The plain float Linears of `model` worth storing sparse, in the format `sparsity` says:
    `auto` takes the 2:4 format when every such layer is 2:4, else the bitmask one; a
    layer is worth it when its bitmask form is smaller than its dense weight.

    Example:
        >>> layer = nn.Linear(8, 4)
        >>> with torch.no_grad():
        ...     _ = layer.weight[:, ::2].zero_()
        >>> sparse_layers(nn.Sequential(layer), "auto").format
        'sparse-24-bitmask'
    """
    if sparsity not in SPARSITY_CHOICES:
        raise ModelError(f"sparsity {sparsity!r} is not one of {', '.join(SPARSITY_CHOICES)}")
    if sparsity == "none":
        return None
    pruned = {
        name: module.weight.detach()
        for name, module in model.named_modules()
        if type(module) is nn.Linear and _smaller_sparse(module.weight)
    }
    if not pruned:
        return None
    two_four = {name for name, w in pruned.items() if two_four_mask(w) is not None}
    fmt = sparsity if sparsity != "auto" else TWO_FOUR if two_four == set(pruned) else BITMASK
    if fmt == TWO_FOUR and two_four != set(pruned):
        bad = sorted(set(pruned) - two_four)[0]
        raise ModelError(
            f"layer {bad} is not 2:4 sparse, which sparse-24-bitmask needs: prune it with "
            "prune.sparsegpt/magnitude pattern 2:4, or export with sparsity 'sparse-bitmask'"
        )
    return SparseLayers(
        format=fmt,
        tensors={name: compress(w, fmt) for name, w in pruned.items()},
        zeros=sum(int((w == 0).sum()) for w in pruned.values()),
        weights=sum(w.numel() for w in pruned.values()),
    )


def _smaller_sparse(weight: Tensor) -> bool:
    """Whether the bitmask form (values, 1 bit per weight, an int64 per row) is smaller."""
    rows, cols = weight.shape
    size = weight.element_size()
    sparse = int((weight != 0).sum()) * size + rows * (-(-cols // 8) + 8)
    return sparse < weight.numel() * size
