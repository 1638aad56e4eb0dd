"""The int32 packing equals compressed-tensors' own `pack_to_int32` / `unpack_from_int32`
bit for bit (the package is the oracle here only; src never imports it)."""

from __future__ import annotations

import pytest
import torch

from netchisel.core.errors import ArtifactError
from netchisel.quantize.compressed_tensors_pack import pack_int32, packed_words, unpack_int32

helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(5, 64), (3, 67), (7, 1), (16, 96)])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_and_unpack_equal_the_package_bit_for_bit(
    bits: int, shape: tuple[int, int], dim: int
) -> None:
    g = torch.Generator().manual_seed(bits * 100 + shape[1] + dim)
    low = -(1 << (bits - 1))
    values = torch.randint(low, -low, shape, generator=g, dtype=torch.int8)
    ours = pack_int32(values, bits, dim)
    theirs = helpers.pack_to_int32(values, bits, packed_dim=dim)
    assert ours.dtype == torch.int32 and torch.equal(ours, theirs)
    assert ours.shape[dim] == packed_words(shape[dim], bits)
    assert torch.equal(unpack_int32(ours, bits, shape[dim], dim), values)
    assert torch.equal(
        helpers.unpack_from_int32(ours, bits, torch.Size(shape), packed_dim=dim), values
    )


def test_the_extreme_values_fill_every_bit() -> None:
    # All -8 (stored 0) and all 7 (stored 15): words 0 and 0xFFFFFFFF (-1 as int32).
    assert pack_int32(torch.full((1, 8), -8), 4).item() == 0
    assert pack_int32(torch.full((1, 8), 7), 4).item() == -1
    assert pack_int32(torch.full((1, 4), 127), 8).item() == -1


def test_bad_input_is_one_artifact_error() -> None:
    with pytest.raises(ArtifactError, match="signed 4-bit range"):
        pack_int32(torch.tensor([[8]]), 4)
    with pytest.raises(ArtifactError, match="num_bits=3 is not packed"):
        pack_int32(torch.zeros(1, 32, dtype=torch.int8), 3)
    with pytest.raises(ArtifactError, match="cannot hold 65 values"):
        unpack_int32(torch.zeros(2, 8, dtype=torch.int32), 4, 65)
    with pytest.raises(ArtifactError, match="2-D int32"):
        unpack_int32(torch.zeros(2, 8, dtype=torch.int64), 4, 64)
