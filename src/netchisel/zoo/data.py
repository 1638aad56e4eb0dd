"""Reference data sets, all offline and deterministic: digits, text and sentences.

- **digits**: scikit-learn's bundled `load_digits` (1797 gray 8x8 images of 0-9). A fixed,
  stratified, seeded split of 1257 train / 270 val / 270 test. Pixels are scaled to [0, 1]
  (the raw range is 0..16), optionally upsampled to 32x32 (bilinear), then normalised with the
  scalar mean and std of the train split (a per-pixel std would be zero at the always-blank
  borders). Images are float32 (N, 1, size, size); labels int64.
- **text**: Python's own `pydoc_data.topics.topics` (the `help()` texts), joined in sorted key
  order with newlines. Tokens are UTF-8 bytes (vocabulary 256, no tokenizer to ship or
  download), so a language model's bits per token are bits per *byte*; the corpus is 0.4 %
  non-ASCII bytes, so bits per character are `bytes_per_char()` (about 1.002) times larger
  (`bytes_per_char(split)` gives the exact factor of a split).
  Contiguous split: first 90 % train, next 5 % val, last 5 % test. The text is whatever the
  running Python ships, so it can differ slightly between Python versions;
  `text_fingerprint()` names the exact corpus.
- **sentences**: short plain-English sentences (6-30 words, letters and light punctuation
  only, no code) from the same help texts, for embedding fidelity.

`task(name)` wraps them as `netchisel.core.task.Task` objects: "digits", "digits32", "text",
"sentences".
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from netchisel.core.errors import ConfigError
from netchisel.core.task import (
    Task,
    classification_task,
    embedding_task,
    language_model_task,
)

DIGITS_SPLIT_SEED = 0
"""Seed of the stratified digits split; changing it changes every reference number."""
DIGITS_SIZES = (8, 32)
TEXT_VOCAB_SIZE = 256
"""Byte-level tokens: one token per UTF-8 byte."""
TEXT_SPLIT = (0.90, 0.05, 0.05)
TASK_NAMES = ("digits", "digits32", "text", "sentences")

Splits = dict[str, Dataset[Any]]


# -- digits -----------------------------------------------------------------------------------


@functools.cache
def _digits_split() -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    # sklearn ships the data inside its wheel: no download, same bytes on every machine.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=540, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=270, stratify=y_rest, random_state=DIGITS_SPLIT_SEED
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def _resize(x: Tensor, size: int) -> Tensor:
    if size == x.shape[-1]:
        return x
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def digits(size: int = 8, shift_copies: int = 0, max_shift: int = 2) -> dict[str, TensorDataset]:
    """The digits splits as (N, 1, size, size) float32 images and int64 labels.

    Args:
        size: 8 (the original pixels) or 32 (bilinear upsampling of the 8x8 images, for CNNs).
        shift_copies: extra copies of the train split, each image shifted by a random
            (dy, dx) in [-max_shift, max_shift] pixels of the `size` grid (blank fill). The
            shifts come from a fixed seed, so the augmented set is the same on every run;
            val and test are never augmented.
        max_shift: largest shift in pixels.

    Returns:
        {"train", "val", "test"} -> TensorDataset(x, y); 1257 / 270 / 270 samples
        (train is 1257 * (1 + shift_copies)).

    Example:
        >>> d = digits(32)
        >>> d["train"].tensors[0].shape, len(d["val"]), len(d["test"])
        (torch.Size([1257, 1, 32, 32]), 270, 270)
    """
    if size not in DIGITS_SIZES:
        raise ConfigError(f"digits size must be one of {DIGITS_SIZES}, got {size}")
    if shift_copies < 0 or max_shift < 0:
        raise ConfigError(
            f"digits shift_copies and max_shift must be >= 0, got {shift_copies}, {max_shift}"
        )
    raw = {
        k: (_resize(torch.from_numpy(x)[:, None], size), y) for k, (x, y) in _digits_split().items()
    }
    train_x = raw["train"][0]
    # Normalise every split with train statistics, as deployment would.
    mean, std = float(train_x.mean()), float(train_x.std())
    blank = (0.0 - mean) / std
    out: dict[str, TensorDataset] = {}
    for split, (x, y) in raw.items():
        x = (x - mean) / std
        labels = torch.tensor(y)  # a copy: the cached split must stay untouched
        if split == "train" and shift_copies > 0:
            x, labels = _shifted_copies(x, labels, shift_copies, max_shift, blank)
        out[split] = TensorDataset(x.contiguous(), labels)
    return out


def _shifted_copies(
    x: Tensor, y: Tensor, copies: int, max_shift: int, fill: float
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED + 1)
    size = x.shape[-1]
    padded = nn.functional.pad(x, (max_shift,) * 4, value=fill)
    xs, ys = [x], [y]
    for _ in range(copies):
        offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
        shifted = torch.stack(
            [
                padded[i, :, dy : dy + size, dx : dx + size]
                for i, (dy, dx) in enumerate(offsets.tolist())
            ]
        )
        xs.append(shifted)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# -- text -------------------------------------------------------------------------------------


@functools.cache
def corpus() -> str:
    """The raw text corpus: every `pydoc_data` help topic, in sorted key order.

    Example:
        >>> corpus()[:22]
        'The "assert" statement'
    """
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


@functools.cache
def _corpus_bytes() -> bytes:
    return corpus().encode("utf-8")


def non_ascii_fraction() -> float:
    """Fraction of the corpus bytes that are not ASCII (0.37 % on Python 3.11).

    Example:
        >>> 0.0 < non_ascii_fraction() < 0.01
        True
    """
    data = _corpus_bytes()
    return sum(b > 127 for b in data) / len(data)


def bytes_per_char(split: str | None = None) -> float:
    """UTF-8 bytes per character of the corpus (or of one split of `text_tokens()`).

    Bits per character = bits per byte * bytes per char (about 1.002 here).

    Example:
        >>> 1.0 < bytes_per_char() < 1.01
        True
    """
    if split is None:
        return len(_corpus_bytes()) / len(corpus())
    tokens = text_tokens()
    if split not in tokens:
        raise ConfigError(f"text has no split {split!r} (has: {', '.join(tokens)})")
    raw = bytes(tokens[split].to(torch.uint8).tolist())
    # A split boundary can cut a multi-byte character; its stray bytes count as no char.
    return len(raw) / len(raw.decode("utf-8", errors="ignore"))


def text_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the corpus bytes: which text a number was measured on.

    Example:
        >>> len(text_fingerprint())
        16
    """
    return hashlib.sha256(_corpus_bytes()).hexdigest()[:16]


def text_tokens() -> dict[str, Tensor]:
    """The byte tokens of each contiguous split (int64): 90 % train, 5 % val, 5 % test.

    Example:
        >>> t = text_tokens()
        >>> sum(len(v) for v in t.values()) == len(corpus().encode())
        True
    """
    data = torch.frombuffer(bytearray(_corpus_bytes()), dtype=torch.uint8).long()
    n_train = int(len(data) * TEXT_SPLIT[0])
    n_val = int(len(data) * TEXT_SPLIT[1])
    return {
        "train": data[:n_train],
        "val": data[n_train : n_train + n_val],
        "test": data[n_train + n_val :],
    }


def _windows(tokens: Tensor, block_size: int, stride: int) -> TensorDataset:
    # Each window predicts its bytes shifted by one, so it needs block_size + 1 tokens.
    n = (len(tokens) - block_size - 1) // stride + 1
    if n <= 0:
        raise ConfigError(
            f"text block_size {block_size} is longer than a split ({len(tokens)} bytes)"
        )
    starts = torch.arange(n) * stride
    index = starts[:, None] + torch.arange(block_size + 1)[None, :]
    blocks = tokens[index]
    return TensorDataset(blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous())


def text(block_size: int = 128, train_stride: int | None = None) -> dict[str, TensorDataset]:
    """(tokens, next tokens) windows of `block_size` bytes over each split.

    Val and test windows do not overlap (each byte is predicted once, so the metric is a true
    per-byte average). Train windows start every `train_stride` bytes (default
    `block_size // 2`), which doubles the train windows and varies where each byte falls in
    its window.

    Example:
        >>> t = text(128)
        >>> x, y = t["val"][0]
        >>> x.shape, bool((x[1:] == y[:-1]).all())
        (torch.Size([128]), True)
    """
    if block_size < 1:
        raise ConfigError(f"text block_size must be >= 1, got {block_size}")
    stride = train_stride if train_stride is not None else max(1, block_size // 2)
    if stride < 1:
        raise ConfigError(f"text train_stride must be >= 1, got {stride}")
    tokens = text_tokens()
    return {
        "train": _windows(tokens["train"], block_size, stride),
        "val": _windows(tokens["val"], block_size, block_size),
        "test": _windows(tokens["test"], block_size, block_size),
    }


# -- sentences --------------------------------------------------------------------------------

_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'()-]*[a-z]\.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@functools.cache
def _all_sentences() -> tuple[str, ...]:
    found: dict[str, None] = {}  # insertion-ordered set: first occurrence wins
    for paragraph in re.split(r"\n\s*\n", corpus()):
        lines = paragraph.split("\n")
        # Indented paragraphs are code, grammar or tables in the help texts.
        if any(line.startswith(" ") for line in lines):
            continue
        flat = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_END.split(flat):
            if 6 <= len(sentence.split()) <= 30 and _SENTENCE.fullmatch(sentence):
                found[sentence] = None
    return tuple(found)


def sentences(n: int = 256) -> list[str]:
    """`n` distinct short English sentences, spread evenly over the help texts.

    A sentence has 6 to 30 words, starts with a capital, ends with a period and holds only
    letters, spaces and `,;'()-` (which keeps code and grammar out). About 367 qualify.

    Example:
        >>> s = sentences(4)
        >>> len(s), all(6 <= len(x.split()) <= 30 for x in s)
        (4, True)
    """
    pool = _all_sentences()
    if not 1 <= n <= len(pool):
        raise ConfigError(f"sentences n must be in 1..{len(pool)}, got {n}")
    # Evenly spaced picks cover many topics instead of the first few.
    return [pool[(i * len(pool)) // n] for i in range(n)]


# -- tasks ------------------------------------------------------------------------------------


def task(name: str, **kwargs: Any) -> Task:
    """The Task of a reference data set, by name.

    - "digits": `classification_task` over `digits(8)`; kwargs `batch_size` (64),
      `shift_copies`, `max_shift`.
    - "digits32": the same over `digits(32)`.
    - "text": `language_model_task` over `text(block_size)`; kwargs `block_size` (128),
      `train_stride`, `batch_size` (32). Its `bits_per_token` is bits per byte.
    - "sentences": `embedding_task` against `reference=` (required: the uncompressed
      model); kwargs `n` (256 sentences: 154 train / 51 val / 51 test), `max_length` (64
      tokens), `top_k` (5), `batch_size` (32). Sentences become (input_ids, attention_mask)
      with the reference's `tokenize` (the minilm tokenizer when it has none), padded to
      `max_length`.

    Example:
        >>> t = task("digits", batch_size=32)
        >>> t.primary_metric, len(t.splits["train"])
        ('accuracy', 1257)
    """
    makers: dict[str, Callable[..., Task]] = {
        "digits": functools.partial(_digits_task, 8, "digits"),
        "digits32": functools.partial(_digits_task, 32, "digits32"),
        "text": _text_task,
        "sentences": _sentences_task,
    }
    if name not in makers:
        raise ConfigError(f"unknown zoo task {name!r} (known: {', '.join(TASK_NAMES)})")
    maker = makers[name]
    known = [
        p.name for p in inspect.signature(maker).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(
            f"zoo task {name!r}: unknown argument {unknown[0]!r} (known: {', '.join(known)})"
        )
    return maker(**kwargs)


def _digits_task(
    size: int, name: str, *, batch_size: int = 64, shift_copies: int = 0, max_shift: int = 2
) -> Task:
    splits: Splits = dict(digits(size, shift_copies=shift_copies, max_shift=max_shift))
    return classification_task(splits, batch_size=batch_size, name=name)


def _text_task(
    *, block_size: int = 128, train_stride: int | None = None, batch_size: int = 32
) -> Task:
    splits: Splits = dict(text(block_size, train_stride=train_stride))
    return language_model_task(splits, batch_size=batch_size, name="text")


def _sentences_task(
    *,
    reference: nn.Module | None = None,
    n: int = 256,
    max_length: int = 64,
    top_k: int = 5,
    batch_size: int = 32,
) -> Task:
    if reference is None:
        raise ConfigError(
            "zoo task 'sentences' needs reference=: the uncompressed embedding model "
            "(e.g. netchisel.zoo.build('minilm'))"
        )
    tokenize: Callable[[Sequence[str], int], tuple[Tensor, Tensor]]
    found = getattr(reference, "tokenize", None)
    if callable(found):
        tokenize = found
    else:
        from netchisel.zoo.models import minilm_tokenize

        tokenize = minilm_tokenize
    chosen = sentences(n)
    # 60 / 20 / 20, interleaved so every split samples the whole corpus.
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, sentence in enumerate(chosen):
        slot = i % 5
        parts["val" if slot == 3 else "test" if slot == 4 else "train"].append(sentence)
    splits: Splits = {}
    for split, group in parts.items():
        if group:
            splits[split] = TensorDataset(*tokenize(group, max_length))
    return embedding_task(splits, reference, top_k=top_k, batch_size=batch_size, name="sentences")
