"""Tensor codecs for quantized integers: `huffman` (entropy coded) and `packed` (fixed width).

Both store an integer tensor (cluster indices, quantized weights) in one of two layouts and
take whichever is smaller for the tensor at hand:

- dense: every entry, in order;
- sparse: only the nonzero entries, each with its *relative index* (how many zeros precede
  it since the previous entry) in `index_bits` bits; a gap too long for `index_bits` is
  bridged by a filler entry of value 0 (Han et al., ICLR 2016, section 2 and figure 2).
  `index_bits` is chosen per tensor (1-8) to minimise the size.

`huffman` codes the values and the gaps with canonical Huffman codes (`huffman.py`); `packed`
writes them in a fixed number of bits (the paper's "quantization only" column). Everything is
one uint8 blob per tensor (code-length tables, then streams), which keeps the safetensors
header to one entry; the manifest meta says where each part starts.

The zero the sparse layout skips is the integer 0; for `ClusteredLinear`/`ClusteredConv` that
is the reserved code of pruned weights, so pruned and clustered layers get both gains.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from netchisel.artifact.bits import pack_bits, unpack_bits
from netchisel.artifact.codecs import DTYPES, Codec, Encoded, register_codec
from netchisel.artifact.huffman import Array, code_lengths, decode, encode
from netchisel.core.errors import ArtifactError

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
INDEX_BITS = range(1, 9)
MAX_ALPHABET = 2**16


# -- relative indices (pure) -----------------------------------------------------------------


def to_relative(flat: Array, index_bits: int) -> tuple[Array, Array]:
    """(gaps, values) of the nonzero entries of `flat`, with fillers for long gaps.

    Entry k means "skip gaps[k] zeros, then write values[k]"; a gap never exceeds
    2**index_bits - 1, so a longer run of zeros gets filler entries (value 0, full gap).

    Example:
        >>> g, v = to_relative(np.array([0, 5, 0, 0, 0, 0, 0, 7]), 2)
        >>> g.tolist(), v.tolist()
        ([1, 3, 1], [5, 0, 7])
    """
    flat = np.asarray(flat).reshape(-1)
    span = 1 << index_bits
    nonzero = np.flatnonzero(flat)
    gaps = np.diff(nonzero, prepend=-1) - 1
    fillers = gaps // span
    real = np.cumsum(fillers + 1) - 1  # where each nonzero lands among the entries
    total = int(real[-1]) + 1 if len(real) else 0
    out_gaps = np.full(total, span - 1, dtype=np.int64)
    out_values = np.zeros(total, dtype=np.int64)
    out_gaps[real] = gaps - fillers * span
    out_values[real] = flat[nonzero]
    return out_gaps, out_values


def from_relative(gaps: Array, values: Array, numel: int) -> Array:
    """The dense int64 array of `numel` entries that `to_relative` described.

    Example:
        >>> from_relative(np.array([1, 3, 1]), np.array([5, 0, 7]), 9).tolist()
        [0, 5, 0, 0, 0, 0, 0, 7, 0]
    """
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if len(positions) and positions[-1] >= numel:
        raise ArtifactError("a sparse tensor's relative indices run past its end: file corrupt")
    out = np.zeros(numel, dtype=np.int64)
    out[positions] = values
    return out


# -- the codecs ------------------------------------------------------------------------------


def _integers(t: Tensor, codec: str) -> tuple[Array, int, int]:
    """The flat int64 values, their offset (so symbols start at 0) and the alphabet size."""
    if t.dtype not in INTEGER_DTYPES:
        raise ArtifactError(
            f"codec {codec!r} stores integer tensors, not {t.dtype}: quantize the tensor first "
            "or store it 'raw'"
        )
    flat = t.detach().cpu().reshape(-1).to(torch.int64).numpy()
    lo = min(int(flat.min()), 0) if flat.size else 0  # zero is always a symbol (fillers)
    hi = max(int(flat.max()), 0) if flat.size else 0
    if hi - lo + 1 > MAX_ALPHABET:
        raise ArtifactError(
            f"codec {codec!r}: values span {hi - lo + 1} integers, more than {MAX_ALPHABET}"
        )
    return flat, lo, hi - lo + 1


def _base_meta(t: Tensor, layout: str, offset: int, alphabet: int) -> dict[str, Any]:
    return {
        "layout": layout,
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "offset": offset,
        "alphabet": alphabet,
    }


def _finish(values: Array, meta: dict[str, Any]) -> Tensor:
    """The decoded values (with their offset added back) as the stored dtype and shape."""
    dtype = DTYPES.get(str(meta["dtype"]))
    if dtype not in INTEGER_DTYPES:
        raise ArtifactError(f"an integer codec names dtype {meta['dtype']!r}: the file is corrupt")
    return torch.from_numpy(values).to(dtype).reshape(meta["shape"])


def _numel(meta: dict[str, Any]) -> int:
    """The entry count, after checking the layout fields a hostile file could inflate: a sparse
    layout has at most one entry per element and 1-8 index bits, a packed value 1-8 bits."""
    numel = math.prod(int(s) for s in meta["shape"])
    if meta["layout"] == "sparse":
        if int(meta["index_bits"]) not in INDEX_BITS or not 0 <= int(meta["entries"]) <= numel:
            raise ArtifactError("a sparse integer layout has impossible index_bits or entries")
    elif meta["layout"] != "dense":
        raise ArtifactError(f"an integer codec has an unknown layout {meta['layout']!r}")
    if "width" in meta and not 1 <= int(meta["width"]) <= 8:
        raise ArtifactError(f"a packed tensor has width {meta['width']}, not 1-8 bits")
    if not 1 <= int(meta["alphabet"]) <= MAX_ALPHABET:
        raise ArtifactError(
            f"an integer codec has alphabet {meta['alphabet']}, not 1-{MAX_ALPHABET}"
        )
    return numel


def _split(blob: Array, sizes: list[int]) -> list[Array]:
    if sum(sizes) != len(blob):
        raise ArtifactError(f"an integer codec blob has {len(blob)} bytes, not {sum(sizes)}")
    return np.split(blob, np.cumsum(sizes)[:-1])


def _huffman_bits(freqs: Array) -> tuple[Array, int]:
    lengths = code_lengths(freqs)
    return lengths, int((freqs * lengths.astype(np.int64)).sum())


def huffman_encode(t: Tensor) -> Encoded:
    """`huffman` codec: code-length tables and Huffman streams, dense or sparse layout.

    Example:
        >>> parts, meta = huffman_encode(torch.tensor([0, 0, 0, 1, 0, 0, 0, 2], dtype=torch.uint8))
        >>> torch.equal(huffman_decode(parts, meta), torch.tensor([0, 0, 0, 1, 0, 0, 0, 2]))
        True
    """
    flat, lo, alphabet = _integers(t, "huffman")
    symbols = flat - lo
    lengths, nbits = _huffman_bits(np.bincount(symbols, minlength=alphabet))
    best_size = alphabet + (nbits + 7) // 8
    best: tuple[int, Array, Array, Array, Array] | None = None
    for index_bits in INDEX_BITS:
        gaps, values = to_relative(flat, index_bits)
        v_len, v_bits = _huffman_bits(np.bincount(values - lo, minlength=alphabet))
        g_len, g_bits = _huffman_bits(np.bincount(gaps, minlength=1 << index_bits))
        size = alphabet + (1 << index_bits) + (v_bits + 7) // 8 + (g_bits + 7) // 8
        if size < best_size:
            best_size, best = size, (index_bits, gaps, values - lo, v_len, g_len)
    if best is None:
        stream, nbits = encode(symbols, lengths)
        meta = {**_base_meta(t, "dense", lo, alphabet), "nbits": nbits}
        return {"": torch.from_numpy(np.concatenate((lengths, stream)))}, meta
    index_bits, gaps, values, v_len, g_len = best
    v_stream, v_bits = encode(values, v_len)
    g_stream, g_bits = encode(gaps, g_len)
    meta = {
        **_base_meta(t, "sparse", lo, alphabet),
        "index_bits": index_bits,
        "entries": len(gaps),
        "nbits": v_bits,
        "gap_nbits": g_bits,
    }
    blob = np.concatenate((v_len, g_len, v_stream, g_stream)).astype(np.uint8)
    return {"": torch.from_numpy(blob)}, meta


def huffman_decode(stored: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
    """Inverse of `huffman_encode`, exact."""
    blob = stored[""].numpy()
    alphabet, nbits, numel = int(meta["alphabet"]), int(meta["nbits"]), _numel(meta)
    if meta["layout"] == "dense":
        lengths, stream = _split(blob, [alphabet, (nbits + 7) // 8])
        return _finish(decode(stream, lengths, numel, nbits) + int(meta["offset"]), meta)
    span, entries, g_bits = 1 << int(meta["index_bits"]), int(meta["entries"]), meta["gap_nbits"]
    v_len, g_len, v_stream, g_stream = _split(
        blob, [alphabet, span, (nbits + 7) // 8, (int(g_bits) + 7) // 8]
    )
    values = decode(v_stream, v_len, entries, nbits) + int(meta["offset"])
    gaps = decode(g_stream, g_len, entries, int(g_bits))
    return _finish(from_relative(gaps, values, numel), meta)


def _width(alphabet: int) -> int:
    return max(1, (alphabet - 1).bit_length())


def packed_encode(t: Tensor) -> Encoded:
    """`packed` codec: every value in a fixed number of bits, dense or sparse layout.

    Example:
        >>> parts, meta = packed_encode(torch.tensor([3, 0, 1, 2], dtype=torch.uint8))
        >>> parts[""].numel(), meta["width"]  # 4 values x 2 bits
        (1, 2)
    """
    flat, lo, alphabet = _integers(t, "packed")
    width = _width(alphabet)
    if width > 8:
        raise ArtifactError(f"codec 'packed' holds up to 8-bit values, these need {width} bits")
    best_size, best_bits = (len(flat) * width + 7) // 8, 0
    for index_bits in INDEX_BITS:
        entries = len(to_relative(flat, index_bits)[0])
        size = (entries * width + 7) // 8 + (entries * index_bits + 7) // 8
        if size < best_size:
            best_size, best_bits = size, index_bits
    if best_bits == 0:
        blob = pack_bits(torch.from_numpy(flat - lo), width)
        return {"": blob}, {**_base_meta(t, "dense", lo, alphabet), "width": width}
    gaps, values = to_relative(flat, best_bits)
    blob = torch.cat(
        (
            pack_bits(torch.from_numpy(values - lo), width),
            pack_bits(torch.from_numpy(gaps), best_bits),
        )
    )
    meta = {
        **_base_meta(t, "sparse", lo, alphabet),
        "width": width,
        "index_bits": best_bits,
        "entries": len(gaps),
    }
    return {"": blob}, meta


def packed_decode(stored: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
    """Inverse of `packed_encode`, exact."""
    blob, width, numel = stored[""], int(meta["width"]), _numel(meta)
    if meta["layout"] == "dense":
        _split(blob.numpy(), [(numel * width + 7) // 8])
        dense = unpack_bits(blob, width, numel).numpy().astype(np.int64)
        return _finish(dense + int(meta["offset"]), meta)
    entries, index_bits = int(meta["entries"]), int(meta["index_bits"])
    sizes = [(entries * width + 7) // 8, (entries * index_bits + 7) // 8]
    v_blob, g_blob = _split(blob.numpy(), sizes)
    values = unpack_bits(torch.from_numpy(v_blob), width, entries).numpy().astype(np.int64)
    values += int(meta["offset"])
    gaps = unpack_bits(torch.from_numpy(g_blob), index_bits, entries).numpy().astype(np.int64)
    return _finish(from_relative(gaps, values, numel), meta)


HUFFMAN = register_codec(Codec("huffman", encode=huffman_encode, decode=huffman_decode))
PACKED = register_codec(Codec("packed", encode=packed_encode, decode=packed_decode))
