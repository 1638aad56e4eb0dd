"""The layer Hessian: its scale, damping escalation, and the output error from X^T X."""

from __future__ import annotations

import itertools

import pytest
import torch

from netchisel.calib import LayerInputs
from netchisel.calib.hessian import (
    DAMPING_RETRIES,
    ROW_CHUNK_BYTES,
    damped_factors,
    gram_error,
    layer_hessian,
    output_error,
    prepared_hessian,
    row_chunks,
)
from netchisel.core.errors import ModelError


def test_the_hessian_is_twice_the_mean_gram() -> None:
    x = torch.randn(10, 3)
    seen = LayerInputs.empty(3)
    seen.add(x, with_gram=True)
    assert torch.allclose(layer_hessian(seen), 2 * x.T @ x / 10)


def test_a_singular_hessian_gets_more_damping_until_it_factors() -> None:
    h = torch.ones(3, 3)  # rank 1
    damping = [d for _, d in damped_factors(prepared_hessian(h), 0.01)]
    assert damping == [0.01 * 10.0**i for i in range(DAMPING_RETRIES + 1)]
    for factor, used in damped_factors(prepared_hessian(h), 0.01):
        inverse = torch.linalg.inv(h + used * torch.eye(3))
        assert torch.allclose(factor.T @ factor, inverse, atol=1e-4)
    with pytest.raises(ModelError, match="not finite"):
        prepared_hessian(torch.tensor([[float("nan")]]))


def test_output_error_is_relative_to_the_layer_output() -> None:
    x = torch.randn(50, 4)
    w = torch.randn(2, 4)
    w2 = w + 0.1 * torch.randn(2, 4)
    expected = float((x @ (w - w2).T).pow(2).sum() / (x @ w.T).pow(2).sum())
    assert output_error(w, w2, x.T @ x) == pytest.approx(expected, rel=1e-4)
    assert gram_error(w - w2, x.T @ x) == pytest.approx(
        float((x @ (w - w2).T).pow(2).sum()), rel=1e-4
    )


def test_row_chunks_cover_every_row_within_the_byte_bound() -> None:
    head = row_chunks(32000, 768)  # an LM head: 8 MiB of float32 rows per chunk
    assert len(head) == 12 and head[0] == slice(0, 2730) and head[-1].stop == 32000
    assert all(a.stop == b.start for a, b in itertools.pairwise(head))
    assert all(4 * (c.stop - c.start) * 768 <= ROW_CHUNK_BYTES for c in head)
    # A layer wider than 1024 inputs: chunks of H's own width, never thinner.
    assert [c.stop for c in row_chunks(11008, 4096)] == [4096, 8192, 11008]
    assert row_chunks(2048, 768) == [slice(0, 2048)]  # a decoder layer: one chunk
    assert row_chunks(0, 8) == []
