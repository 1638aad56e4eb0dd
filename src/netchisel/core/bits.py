"""Integers of 1-8 bits packed densely into bytes: packed weights, codecs and masks.

Element i occupies bits [i * bits, (i + 1) * bits) of a uint8 stream, least significant bit
first (numpy's `packbits(..., bitorder="little")` order), so 4-bit values pair into bytes as
low nibble then high nibble and a bool mask takes ceil(n / 8) bytes. Written with torch ops
so a mask packs and unpacks on the device it lives on; the temporaries hold one byte per bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SHIFTS = tuple(range(8))
_BYTE_BITS: dict[torch.device, Tensor] = {}
"""Per device: row b of this [256, 8] uint8 table is byte b's bits, least significant first."""


def _byte_bits(device: torch.device) -> Tensor:
    # A table lookup per byte is about twice as fast as eight shifts per byte; it matters
    # because masks are unpacked after every optimizer step.
    if device not in _BYTE_BITS:
        byte = torch.arange(256, dtype=torch.uint8)
        table = (byte[:, None] >> torch.tensor(_SHIFTS, dtype=torch.uint8)) & 1
        _BYTE_BITS[device] = table.contiguous().to(device)
    return _BYTE_BITS[device]


def pack_flags(flags: Tensor) -> Tensor:
    """A tensor of 0/1 (or bool) values as ceil(n / 8) bytes, element i in bit i % 8 of byte i // 8.

    Example:
        >>> pack_flags(torch.tensor([True, False, True, True, False, False, False, False, True]))
        tensor([13,  1], dtype=torch.uint8)
    """
    flat = flags.reshape(-1).to(torch.uint8)
    tail = -flat.numel() % 8
    if tail:
        flat = torch.cat((flat, flat.new_zeros(tail)))
    octets = flat.view(-1, 8)
    packed = octets[:, 0].clone()
    for shift in _SHIFTS[1:]:
        packed |= octets[:, shift] << shift
    return packed


def unpack_flags(packed: Tensor, numel: int) -> Tensor:
    """Inverse of `pack_flags`: the first `numel` bits as a flat bool tensor (zeros past the end).

    Example:
        >>> unpack_flags(torch.tensor([13, 1], dtype=torch.uint8), 9).int().tolist()
        [1, 0, 1, 1, 0, 0, 0, 0, 1]
    """
    stream = packed.reshape(-1)
    short = -(-numel // 8) - stream.numel()
    if short > 0:  # a truncated stream reads as zeros past its end, as numpy's unpackbits does
        stream = torch.cat((stream, stream.new_zeros(short)))
    bits = _byte_bits(stream.device).index_select(0, stream.int())
    # 0/1 bytes reinterpreted as bool: no second copy of the unpacked bits
    return bits.view(-1)[:numel].view(torch.bool)


def pack_bits(q: Tensor, bits: int) -> Tensor:
    """Pack integers of `bits` bits (two's complement for negatives) into a uint8 stream.

    Example:
        >>> pack_bits(torch.tensor([1, 2, 3]), 4).tolist()
        [33, 3]
    """
    if bits == 1 and q.dtype == torch.bool:
        return pack_flags(q)
    values = q.reshape(-1).to(torch.int64) & ((1 << bits) - 1)
    shifts = torch.arange(bits, device=values.device)
    return pack_flags((values[:, None] >> shifts) & 1)


def unpack_bits(packed: Tensor, bits: int, numel: int, signed: bool = False) -> Tensor:
    """Inverse of `pack_bits`: `numel` integers as int16 (sign-extended when `signed`).

    Example:
        >>> unpack_bits(torch.tensor([33, 3], dtype=torch.uint8), 4, 3).tolist()
        [1, 2, 3]
    """
    planes = unpack_flags(packed, numel * bits).view(numel, bits).to(torch.int16)
    weights = torch.tensor([1 << b for b in range(bits)], dtype=torch.int16, device=planes.device)
    values = (planes * weights).sum(1, dtype=torch.int16)
    if signed:
        values = torch.where(values >= 2 ** (bits - 1), values - 2**bits, values)
    return values
