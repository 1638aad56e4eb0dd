"""Canonical Huffman coding of small non-negative integers, vectorised with numpy.

Deep Compression (Han et al., ICLR 2016, section 4) Huffman-codes the cluster indices of the
shared weights and the relative positions of the nonzeros: both are far from uniform, so a
variable-length code saves 20-30% over fixed-width integers.

A code is fully described by its code lengths (canonical Huffman, as in DEFLATE, RFC 1951
section 3.2.2): symbols sorted by (length, symbol) get consecutive codes. So a stored tensor is
a table of one length byte per symbol plus the bit stream. Codes are limited to 16 bits
(`MAX_LENGTH`) so the decoder reads every code from a 24-bit window and one table lookup.

Written here because the Huffman packages on PyPI (dahuffman, huffman, ...) encode and decode
one symbol at a time in Python, which takes seconds for one 300x784 layer; here encoding is a
few array operations and decoding is a table lookup at every bit position followed by pointer
doubling to find where each code starts (no per-symbol Python loop).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from netchisel.core.errors import ArtifactError, ConfigError

MAX_LENGTH = 16
Array = np.ndarray[Any, Any]


def code_lengths(freqs: Array, max_length: int = MAX_LENGTH) -> Array:
    """Huffman code length (bits) of every symbol; 0 for symbols that never occur.

    Lengths longer than `max_length` are shortened the way JPEG does (ITU T.81, annex K.3),
    which keeps the code complete: for two or more symbols, sum(2**-length) == 1 exactly.
    A lone symbol gets a 1-bit code.

    Example:
        >>> code_lengths(np.array([5, 1, 1, 3])).tolist()
        [1, 3, 3, 2]
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    if freqs.ndim != 1 or (freqs < 0).any():
        raise ConfigError("code_lengths needs a 1-D array of non-negative frequencies")
    if not 1 <= max_length <= MAX_LENGTH:
        raise ConfigError(f"max_length {max_length} is outside 1-{MAX_LENGTH}")
    present = np.flatnonzero(freqs)
    lengths = np.zeros(len(freqs), dtype=np.uint8)
    if len(present) == 0:
        return lengths
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    if len(present) > 2**max_length:
        raise ConfigError(f"{len(present)} symbols do not fit codes of at most {max_length} bits")
    depth = _tree_depths(freqs[present])
    if depth.max() > max_length:
        depth = _limit_depths(freqs[present], depth, max_length)
    lengths[present] = depth
    return lengths


def _tree_depths(freqs: Array) -> Array:
    """Leaf depths of a Huffman tree over `freqs` (all > 0), ties broken by node order."""
    n = len(freqs)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    heap = [(int(f), i) for i, f in enumerate(freqs)]
    heapq.heapify(heap)
    node = n
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (fa + fb, node))
        node += 1
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    for i in range(2 * n - 3, -1, -1):  # parents are numbered after their children
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def _limit_depths(freqs: Array, depth: Array, max_length: int) -> Array:
    counts = np.bincount(depth, minlength=int(depth.max()) + 1).tolist()
    for i in range(len(counts) - 1, max_length, -1):
        while counts[i] > 0:
            # Two leaves at depth i become one at i - 1, and a leaf at the deepest level j < i - 1
            # becomes two at j + 1: the Kraft sum is unchanged.
            j = i - 2
            while counts[j] == 0:
                j -= 1
            counts[i] -= 2
            counts[i - 1] += 1
            counts[j + 1] += 2
            counts[j] -= 1
    new = np.repeat(np.arange(len(counts)), counts)  # shortest first
    order = np.lexsort((np.arange(len(freqs)), -freqs))  # most frequent first
    out = np.empty_like(depth)
    out[order] = new
    return out


def canonical_codes(lengths: Array) -> Array:
    """The canonical code of every symbol (an integer read MSB first over its length).

    Example:
        >>> [format(int(c), "b") for c in canonical_codes(np.array([1, 3, 3, 2]))]
        ['0', '110', '111', '10']
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    present = np.flatnonzero(lengths)
    if len(present) == 0:
        return codes
    order = present[np.lexsort((present, lengths[present]))]
    top = int(lengths.max())
    # Left-aligned to `top` bits, canonical codes are the running sum of 2**(top - length).
    span = np.left_shift(1, top - lengths[order])
    start = np.concatenate(([0], np.cumsum(span)[:-1]))
    codes[order] = start >> (top - lengths[order])
    return codes


def encode(symbols: Array, lengths: Array) -> tuple[Array, int]:
    """Pack the codes of `symbols` MSB first into bytes; returns (uint8 stream, bit count).

    The stream has exactly ceil(sum(lengths[symbols]) / 8) bytes.

    Example:
        >>> stream, nbits = encode(np.array([0, 3, 1]), np.array([1, 3, 3, 2]))
        >>> nbits, format(int(stream[0]), "08b")
        (6, '01011000')
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) == 0:
        return np.zeros(0, dtype=np.uint8), 0
    if symbols.min() < 0 or symbols.max() >= len(lengths) or (lengths[symbols] == 0).any():
        raise ConfigError(
            "encode: a symbol has no code (its frequency was 0 or it is out of range)"
        )
    codes = canonical_codes(lengths)
    size = lengths[symbols]
    top = int(size.max())
    shift = size[:, None] - 1 - np.arange(top)
    bits = (codes[symbols][:, None] >> np.maximum(shift, 0)) & 1
    stream = bits[shift >= 0].astype(np.uint8)  # row by row: the codes in order
    return np.packbits(stream), int(size.sum())


def decode(stream: Array, lengths: Array, count: int, nbits: int | None = None) -> Array:
    """The first `count` symbols of `stream` (int64). With `nbits`, checks it is all used.

    Example:
        >>> decode(np.array([0b01011000], dtype=np.uint8), np.array([1, 3, 3, 2]), 3).tolist()
        [0, 3, 1]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    present = np.flatnonzero(lengths)
    if len(present) == 0:
        raise ArtifactError("a Huffman table with no symbols cannot decode a nonempty tensor")
    top = int(lengths.max())
    if top > MAX_LENGTH or _kraft(lengths) > 1.0:
        raise ArtifactError("a Huffman code-length table is not a prefix code: the file is corrupt")
    # Every `top`-bit window value maps to the symbol whose code is its prefix.
    order = present[np.lexsort((present, lengths[present]))]
    reps = np.left_shift(1, top - lengths[order])
    table_sym = np.repeat(order, reps)
    table_len = np.repeat(lengths[order], reps)
    if len(table_sym) < 2**top:  # an incomplete code (a lone symbol): unused windows are errors
        table_sym = np.concatenate((table_sym, np.full(2**top - len(table_sym), -1)))
        table_len = np.concatenate((table_len, np.full(2**top - len(table_len), 1)))
    window = _windows(np.asarray(stream, dtype=np.uint8), top)
    end = len(window)
    jump = np.minimum(np.arange(end) + table_len[window], end)
    starts = _chain(np.append(jump, end), count)
    if starts[-1] >= end:
        raise ArtifactError(
            f"a Huffman stream ends before its {count} symbols: the file is corrupt"
        )
    out = table_sym[window[starts]]
    if (out < 0).any():
        raise ArtifactError("a Huffman stream holds a code its table lacks: the file is corrupt")
    used = int(starts[-1] + table_len[window[starts[-1]]])
    if nbits is not None and used != nbits:
        raise ArtifactError(
            f"a Huffman stream decodes {used} bits, not {nbits}: the file is corrupt"
        )
    return out


def _windows(stream: Array, top: int) -> Array:
    """The `top` bits starting at every bit position of the stream, as integers."""
    padded = np.concatenate((stream, np.zeros(3, dtype=np.uint8))).astype(np.int64)
    pos = np.arange(len(stream) * 8)
    byte = pos >> 3
    word = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
    return (word >> (24 - top - (pos & 7))) & ((1 << top) - 1)  # type: ignore[no-any-return]


def _chain(jump: Array, count: int) -> Array:
    """[0, jump[0], jump[jump[0]], ...]: `count` positions, by pointer doubling.

    Every `2**k`-th position is found by following the `2**k`-fold jump (count / 2**k steps),
    then the positions between are filled in 2**k vectorised steps; k is chosen so both
    loops are about sqrt(count) long.
    """
    k = max(0, math.ceil(math.log2(max(count, 1)) / 2))
    far = jump
    for _ in range(k):
        far = far[far]
    stride = 1 << k
    anchors = np.empty(-(-count // stride), dtype=np.int64)
    pos = 0
    for i in range(len(anchors)):
        anchors[i] = pos
        pos = int(far[pos])
    out = np.empty((len(anchors), stride), dtype=np.int64)
    out[:, 0] = anchors
    for j in range(1, stride):
        out[:, j] = jump[out[:, j - 1]]
    return out.reshape(-1)[:count]


def _kraft(lengths: Array) -> float:
    present = lengths[lengths > 0]
    return float(np.sum(np.ldexp(1.0, -present.astype(np.int32))))


def kraft_sum(lengths: Array) -> float:
    """sum(2**-length) over the symbols that have a code: 1.0 for a complete code.

    Example:
        >>> kraft_sum(np.array([1, 3, 3, 2]))
        1.0
    """
    return _kraft(np.asarray(lengths, dtype=np.int64))


def entropy_bits(freqs: Array) -> float:
    """Shannon entropy of the frequency distribution, in bits per symbol.

    Example:
        >>> entropy_bits(np.array([1, 1, 2]))
        1.5
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    p = freqs[freqs > 0] / freqs.sum()
    return float(-(p * np.log2(p)).sum())
