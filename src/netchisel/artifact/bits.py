"""Integers of 1-8 bits packed densely into bytes: the storage of packed weights and codecs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pack_bits(q: Tensor, bits: int) -> Tensor:
    """Pack integers of `bits` bits (two's complement for negatives) into a uint8 stream.

    Element i occupies bits [i * bits, (i + 1) * bits) of the stream, least significant
    first, so 4-bit values pair into bytes as low nibble then high nibble.

    Example:
        >>> pack_bits(torch.tensor([1, 2, 3]), 4).tolist()
        [33, 3]
    """
    values = q.reshape(-1).to(torch.int64).numpy() & ((1 << bits) - 1)
    planes = (values[:, None] >> np.arange(bits)) & 1
    return torch.from_numpy(np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little"))


def unpack_bits(packed: Tensor, bits: int, numel: int, signed: bool = False) -> Tensor:
    """Inverse of `pack_bits`: `numel` integers as int16 (sign-extended when `signed`)."""
    flat = np.unpackbits(packed.numpy(), bitorder="little", count=numel * bits)
    planes = flat.reshape(numel, bits).astype(np.int16)
    values = (planes << np.arange(bits, dtype=np.int16)).sum(1).astype(np.int16)
    if signed:
        values = np.where(values >= 2 ** (bits - 1), values - 2**bits, values).astype(np.int16)
    return torch.from_numpy(values)
