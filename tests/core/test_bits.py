"""The bit packer: exact byte counts, exact round trips, and numpy's little-endian bit order
(the layout artifacts store, so it must not move)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netchisel.core.bits import pack_bits, pack_flags, unpack_bits, unpack_flags


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_flags_take_ceil_n_over_8_bytes_in_numpys_order(n: int) -> None:
    flags = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = pack_flags(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    reference = np.packbits(flags.numpy().astype(np.uint8), bitorder="little")
    assert np.array_equal(packed.numpy(), reference)
    assert torch.equal(unpack_flags(packed, n), flags)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_integers_match_the_numpy_bit_planes(bits: int, signed: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    low = -(2 ** (bits - 1)) if signed and bits > 1 else 0
    values = torch.randint(low, low + 2**bits, (1001,), generator=g)
    packed = pack_bits(values, bits)
    # Element i in bits [i * bits, (i + 1) * bits) of the stream, least significant first.
    planes = (values.numpy()[:, None] >> np.arange(bits)) & 1
    reference = np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")
    assert np.array_equal(packed.numpy(), reference)
    assert packed.numel() == -(-1001 * bits // 8)
    unpacked = unpack_bits(packed, bits, 1001, signed=signed and bits > 1)
    assert unpacked.dtype == torch.int16 and torch.equal(unpacked.long(), values)


def test_a_short_stream_reads_as_zeros_past_its_end() -> None:
    one_byte = torch.tensor([255], dtype=torch.uint8)
    assert unpack_bits(one_byte, 4, 3).tolist() == [15, 15, 0]
    assert unpack_flags(one_byte, 10).tolist() == [True] * 8 + [False] * 2
