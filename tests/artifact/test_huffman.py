"""Huffman coding and the integer codecs: exact round trips, exact sizes, optimality bounds."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netchisel.artifact.huffman import (
    canonical_codes,
    code_lengths,
    decode,
    encode,
    entropy_bits,
    kraft_sum,
)
from netchisel.artifact.int_codecs import (
    from_relative,
    huffman_decode,
    huffman_encode,
    packed_decode,
    packed_encode,
    to_relative,
)
from netchisel.core.errors import ArtifactError, ConfigError

RNG = np.random.default_rng(0)


def _skewed(n: int, alphabet: int, zero_share: float) -> np.ndarray:
    """Symbol 0 with probability `zero_share`, the others geometric-ish."""
    rest = 0.5 ** np.arange(1, alphabet)
    p = np.concatenate(([zero_share], (1 - zero_share) * rest / rest.sum()))
    return RNG.choice(alphabet, size=n, p=p)


CASES = {
    "uniform-32": RNG.integers(0, 32, size=5000),
    "uniform-256": RNG.integers(0, 256, size=20000),
    "skewed-32": _skewed(5000, 32, 0.5),
    "pruned-like": _skewed(20000, 32, 0.92),
    "two-symbols": RNG.integers(0, 2, size=999),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_sizes_kraft_and_entropy(name: str) -> None:
    symbols = CASES[name]
    freqs = np.bincount(symbols)
    lengths = code_lengths(freqs)
    stream, nbits = encode(symbols, lengths)
    assert np.array_equal(decode(stream, lengths, len(symbols), nbits), symbols)
    # The stream is exactly sum(freq * length) bits, rounded up to whole bytes.
    assert nbits == int((freqs * lengths).sum())
    assert len(stream) == math.ceil(nbits / 8)
    # A Huffman code is complete (Kraft equality) and within one bit of the entropy.
    assert kraft_sum(lengths) == 1.0
    entropy = entropy_bits(freqs)
    assert entropy <= nbits / len(symbols) < entropy + 1


def test_small_example_is_optimal_and_canonical() -> None:
    lengths = code_lengths(np.array([5, 1, 1, 3]))
    assert lengths.tolist() == [1, 3, 3, 2]  # cost 5 + 3 + 3 + 6 = 17 bits, the optimum
    pairs = zip(canonical_codes(lengths), lengths, strict=True)
    codes = [format(int(c), f"0{n}b") for c, n in pairs]
    assert codes == ["0", "110", "111", "10"]


def test_lengths_are_limited_and_stay_complete() -> None:
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib)
    assert int(code_lengths(freqs, max_length=16).max()) == 16  # unlimited would be 29
    for limit in (5, 8, 16):
        lengths = code_lengths(freqs, max_length=limit)
        assert int(lengths.max()) <= limit and kraft_sum(lengths) == 1.0
    symbols = RNG.permutation(np.repeat(np.arange(30), np.minimum(freqs, 40)))
    lengths = code_lengths(freqs, max_length=8)
    stream, nbits = encode(symbols, lengths)
    assert np.array_equal(decode(stream, lengths, len(symbols), nbits), symbols)


def test_single_symbol_and_empty_inputs() -> None:
    lengths = code_lengths(np.array([0, 7, 0]))
    assert lengths.tolist() == [0, 1, 0]
    stream, nbits = encode(np.full(7, 1), lengths)
    assert nbits == 7 and decode(stream, lengths, 7).tolist() == [1] * 7
    assert code_lengths(np.zeros(4, dtype=np.int64)).tolist() == [0, 0, 0, 0]
    assert decode(np.zeros(0, dtype=np.uint8), lengths, 0).size == 0


def test_decodes_a_300x784_index_tensor_fast() -> None:
    symbols = _skewed(300 * 784, 32, 0.9)
    lengths = code_lengths(np.bincount(symbols))
    stream, nbits = encode(symbols, lengths)
    start = time.perf_counter()
    out = decode(stream, lengths, len(symbols), nbits)
    seconds = time.perf_counter() - start
    assert np.array_equal(out, symbols)
    assert seconds < 0.5  # about 0.02 s on one core


def test_corrupt_streams_are_artifact_errors() -> None:
    symbols = CASES["skewed-32"]
    lengths = code_lengths(np.bincount(symbols))
    stream, nbits = encode(symbols, lengths)
    with pytest.raises(ArtifactError, match="ends before"):
        decode(stream[: len(stream) // 2], lengths, len(symbols))
    with pytest.raises(ArtifactError, match="decodes"):
        decode(stream, lengths, len(symbols), nbits + 1)
    bad = lengths.copy()
    bad[bad > 0] = 1  # more one-bit codes than exist
    with pytest.raises(ArtifactError, match="prefix code"):
        decode(stream, bad, len(symbols))
    with pytest.raises(ConfigError, match="no code"):
        encode(np.array([0, 99]), lengths)


def test_relative_indices_bridge_long_gaps_with_fillers() -> None:
    flat = np.zeros(40, dtype=np.int64)
    flat[[3, 24, 25]] = [7, 1, 2]
    gaps, values = to_relative(flat, 3)  # gaps of at most 7; a filler spans 8 entries
    # 3 zeros then 7; 20 zeros = two fillers (7 zeros + a stored 0, twice) + 4 zeros, then 1; 2
    assert gaps.tolist() == [3, 7, 7, 4, 0] and values.tolist() == [7, 0, 0, 1, 2]
    assert np.array_equal(from_relative(gaps, values, 40), flat)
    with pytest.raises(ArtifactError, match="past its end"):
        from_relative(gaps, values, 20)


def _blob_bytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def test_huffman_codec_dense_layout_size_is_table_plus_stream() -> None:
    t = torch.from_numpy(CASES["skewed-32"]).to(torch.uint8).reshape(50, 100)
    parts, meta = huffman_encode(t)
    assert meta["layout"] == "dense"
    freqs = np.bincount(CASES["skewed-32"])
    assert meta["alphabet"] == len(freqs)  # symbols 0..max
    bits = int((freqs * code_lengths(freqs)).sum())
    # One code-length byte per symbol, then the stream.
    assert _blob_bytes(parts) == len(freqs) + math.ceil(bits / 8)
    back = huffman_decode(parts, meta)
    assert back.dtype == torch.uint8 and torch.equal(back, t)


def test_huffman_codec_takes_the_sparse_layout_for_pruned_indices() -> None:
    flat = _skewed(300 * 784, 32, 0.95)
    t = torch.from_numpy(flat).to(torch.uint8).reshape(300, 784)
    parts, meta = huffman_encode(t)
    assert meta["layout"] == "sparse"
    gaps, values = to_relative(flat, meta["index_bits"])
    alphabet = int(flat.max()) + 1
    v_freq = np.bincount(values, minlength=alphabet)
    g_freq = np.bincount(gaps, minlength=2 ** meta["index_bits"])
    v_bits = int((v_freq * code_lengths(v_freq)).sum())
    g_bits = int((g_freq * code_lengths(g_freq)).sum())
    tables = alphabet + 2 ** meta["index_bits"]
    expected = tables + math.ceil(v_bits / 8) + math.ceil(g_bits / 8)
    assert _blob_bytes(parts) == expected
    # Dense Huffman needs at least one bit per entry; the sparse layout beats that bound.
    assert expected < t.numel() / 8
    assert torch.equal(huffman_decode(parts, meta), t)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("zeros", [0.0, 0.6, 0.99])
def test_codecs_round_trip_every_integer_dtype(dtype: torch.dtype, zeros: float) -> None:
    lo = 0 if dtype == torch.uint8 else -100
    values = RNG.integers(lo, 100, size=(3, 1000))
    values[RNG.random(values.shape) < zeros] = 0
    t = torch.from_numpy(values).to(dtype)
    for encode_fn, decode_fn in ((huffman_encode, huffman_decode), (packed_encode, packed_decode)):
        parts, meta = encode_fn(t)
        back = decode_fn(parts, meta)
        assert back.dtype == dtype and torch.equal(back, t)


def test_packed_codec_sizes_are_fixed_width() -> None:
    t = torch.from_numpy(RNG.integers(0, 32, size=1001)).to(torch.uint8)
    parts, meta = packed_encode(t)
    assert meta["layout"] == "dense" and meta["width"] == 5
    assert _blob_bytes(parts) == math.ceil(1001 * 5 / 8)


def test_codecs_refuse_float_tensors_and_wide_values() -> None:
    with pytest.raises(ArtifactError, match="integer tensors"):
        huffman_encode(torch.zeros(3))
    with pytest.raises(ArtifactError, match="up to 8-bit"):
        packed_encode(torch.tensor([0, 1000]))


def test_any_quantized_integer_weight_can_be_huffman_coded(tmp_path: Path) -> None:
    import netchisel as nc
    from netchisel.artifact.store import set_codec
    from netchisel.quantize import RTNConfig, quantize_

    model = nn.Sequential(nn.Linear(256, 128))
    with torch.no_grad():
        model[0].weight.normal_(generator=torch.Generator().manual_seed(0))  # trained-like
    quantize_(model, RTNConfig(bits=8))
    raw = nc.save(model, tmp_path / "raw")
    set_codec(model, "0.weight_int8", "huffman")
    coded = nc.save(model, tmp_path / "huffman")
    loaded = nc.load(coded)
    assert torch.equal(loaded[0].weight_int8, model[0].weight_int8)
    # Gaussian int8 weights scaled to their row's max carry about 7.5 bits of entropy, not 8.
    saved = (raw / "model.safetensors").stat().st_size - (
        coded / "model.safetensors"
    ).stat().st_size
    assert saved > 0.05 * 256 * 128  # measured 1,959 B of 32,768
