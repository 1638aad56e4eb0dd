"""The int32 packing of compressed-tensors' `pack-quantized` format, written from its spec.

A row of signed `bits`-bit integers becomes a dense little-endian bit stream: value `i` of a
row, offset by `2**(bits - 1)` to be unsigned, occupies bits `[i * bits, (i + 1) * bits)`,
word `i * bits // 32` holding the lowest. Rows are padded with zeros to whole words. Weights
are packed along their inputs (dim 1); asymmetric zero points along their outputs (dim 0).
netchisel stores only 4 and 8 bits, whose values never straddle a word, so only widths that
divide 32 are packed here (1, 2, 4, 8).

The package's own `pack_to_int32` / `unpack_from_int32` are the oracle of the tests, never
imported here: netchisel writes and reads the format without the package installed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from netchisel.core.errors import ArtifactError

PACKABLE_BITS = (1, 2, 4, 8)


def packed_words(count: int, bits: int) -> int:
    """int32 words that hold `count` values of `bits` bits.

    Example:
        >>> packed_words(64, 4), packed_words(65, 4), packed_words(64, 8)
        (8, 9, 16)
    """
    return -(-count * bits // 32)


def pack_int32(values: Tensor, bits: int, dim: int = 1) -> Tensor:
    """Pack a 2-D tensor of signed `bits`-bit integers into int32 words along `dim`.

    Example:
        >>> pack_int32(torch.tensor([[-8, -7, 0, 7]]), 4)  # 0 + 1 * 16 + 8 * 256 + 15 * 4096
        tensor([[63504]], dtype=torch.int32)
    """
    _check_bits(bits)
    if values.dim() != 2:
        raise ArtifactError(f"pack_int32 takes a 2-D tensor, got shape {list(values.shape)}")
    rows = values if dim == 1 else values.t()
    offset = 1 << (bits - 1)
    unsigned = rows.to(torch.int64) + offset
    if unsigned.numel() and (int(unsigned.min()) < 0 or int(unsigned.max()) >= 1 << bits):
        raise ArtifactError(f"values outside the signed {bits}-bit range cannot be packed")
    per_word = 32 // bits
    count = unsigned.shape[1]
    words = packed_words(count, bits)
    padded = torch.zeros(unsigned.shape[0], words * per_word, dtype=torch.int64)
    padded[:, :count] = unsigned
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    stream = (padded.reshape(-1, words, per_word) << shifts).sum(dim=-1)
    # Words are unsigned 32-bit patterns; int32 holds the same bits as two's complement.
    packed = torch.where(stream >= 1 << 31, stream - (1 << 32), stream).to(torch.int32)
    return (packed if dim == 1 else packed.t()).contiguous()


def unpack_int32(packed: Tensor, bits: int, count: int, dim: int = 1) -> Tensor:
    """The signed integers (int8) of `pack_int32`, `count` of them along `dim`.

    Example:
        >>> unpack_int32(torch.tensor([[63504]], dtype=torch.int32), 4, 4)
        tensor([[-8, -7,  0,  7]], dtype=torch.int8)
    """
    _check_bits(bits)
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ArtifactError(
            f"packed weights must be 2-D int32, got {packed.dtype} of shape {list(packed.shape)}"
        )
    rows = packed if dim == 1 else packed.t()
    if rows.shape[1] != packed_words(count, bits):
        raise ArtifactError(
            f"{rows.shape[1]} packed words along dim {dim} cannot hold {count} values of "
            f"{bits} bits (need {packed_words(count, bits)})"
        )
    per_word = 32 // bits
    stream = rows.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    unsigned = (stream.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    values = (unsigned.reshape(rows.shape[0], -1)[:, :count] - (1 << (bits - 1))).to(torch.int8)
    return (values if dim == 1 else values.t()).contiguous()


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ArtifactError(
            f"num_bits={bits} is not packed by netchisel (widths that divide 32: "
            f"{', '.join(map(str, PACKABLE_BITS))})"
        )
