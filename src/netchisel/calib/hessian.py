"""The layer Hessian of second-order solvers (SparseGPT, GPTQ): damping and its inverse factor.

For a Linear layer with inputs X (one row per token), keeping its output ||W X^T|| is a
least-squares problem whose Hessian is H = 2 X^T X / n. The solvers need the upper Cholesky
factor U of H^-1 (H^-1 = U^T U): row j of U spreads the error of column j over the columns to
its right.

H is singular whenever the calibration set has fewer tokens than inputs or features that move
together, so a multiple of its mean diagonal is added ("damping", 1% in both papers). If float32
still cannot factor the damped H, or the solver's result is not finite, the damping is raised
tenfold and the layer is solved again: `damped_factors` yields the candidates in that order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from netchisel.calib.inputs import LayerInputs
from netchisel.core.errors import ModelError

DAMPING_RETRIES = 6
"""How many times the damping is raised tenfold before a layer is given up (0.01 -> 1e4)."""
ROW_CHUNK_BYTES = 2**23
"""float32 bytes of the weight rows a solver works on at once (unless H itself is larger)."""


def prepared_hessian(hessian: Tensor) -> Tensor:
    """A float32 copy of `hessian` whose dead inputs (zero diagonal) have a unit diagonal.

    An input that is always zero carries no information; a unit diagonal keeps H invertible
    without coupling that column to the others, so changing its weight moves nothing else.

    Example:
        >>> prepared_hessian(torch.zeros(2, 2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if not bool(torch.isfinite(hessian).all()):
        raise ModelError("the layer's calibration inputs are not finite (inf or NaN)")
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    return h


def inverse_cholesky(h: Tensor, damp: float) -> Tensor | None:
    """Upper U with (H + damp I)^-1 = U^T U, or None when float32 cannot factor it.

    Example:
        >>> inverse_cholesky(4.0 * torch.eye(2), 0.0).diagonal().tolist()
        [0.5, 0.5]
    """
    # The same values as h + damp * I (`+ 0.0` turns -0.0 into +0.0 as that sum does) without
    # two more in x in matrices; each intermediate is freed as soon as the next exists, so a
    # layer with 2048+ inputs holds two of them at a time, not five.
    damped = h + 0.0
    damped.diagonal().add_(damp)
    lower, info = torch.linalg.cholesky_ex(damped)
    del damped
    if int(info) != 0:
        return None
    inverse = torch.cholesky_inverse(lower)
    del lower
    upper: Tensor
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    del inverse
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        return None
    return upper


def damped_factors(h: Tensor, damping: float) -> Iterator[tuple[Tensor, float]]:
    """(U, damping used) for `damping`, then ten times more, ... skipping failed factorisations.

    `h` comes from `prepared_hessian`; the damping is a fraction of its mean diagonal. The
    caller stops iterating at the first factor that gives it a finite result.

    Example:
        >>> [d for _, d in damped_factors(torch.eye(3), 0.01)][:2]
        [0.01, 0.1]
    """
    mean_diag = float(h.diagonal().mean())
    for attempt in range(DAMPING_RETRIES + 1):
        used = damping * 10.0**attempt
        factor = inverse_cholesky(h, used * mean_diag)
        if factor is not None:
            yield factor, used


def row_chunks(rows: int, cols: int) -> list[slice]:
    """The output rows of a (rows, cols) weight in the chunks a solver takes them in.

    Every output row is its own least-squares problem under the shared H, so a layer can be
    solved a chunk of rows at a time with one inverse factor: the solver's float copies are
    of one chunk, not of the whole weight (a 32000 x 768 LM head is 98 MB in float32). A
    chunk's float32 copy is at most `ROW_CHUNK_BYTES` or H's own size (cols rows), whichever
    is larger, so large layers are not cut into many small chunks whose per-column loops
    would cost more than their memory saves. Most decoder layers are one chunk.

    Example:
        >>> row_chunks(5000, 768)
        [slice(0, 2730, None), slice(2730, 5000, None)]
    """
    per = max(1, cols, ROW_CHUNK_BYTES // (4 * max(1, cols)))
    return [slice(start, min(start + per, rows)) for start in range(0, rows, per)]


def unsolvable(damping: float) -> ModelError:
    """The error when no damping up to the last retry gave a finite result."""
    last = damping * 10.0**DAMPING_RETRIES
    return ModelError(
        f"the Hessian is not positive definite even with damping {last:g} x its mean diagonal"
    )


def layer_hessian(seen: LayerInputs) -> Tensor:
    """H = 2 X^T X / n of what a layer read (the papers' scale).

    Example:
        >>> seen = LayerInputs.empty(2)
        >>> seen.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]), with_gram=True)
        >>> layer_hessian(seen).tolist()
        [[2.0, 2.0], [2.0, 4.0]]
    """
    if seen.gram is None:
        raise ValueError("the layer's inputs were measured without their Gram matrix")
    return 2.0 * seen.gram / seen.tokens


def gram_error(delta: Tensor, gram: Tensor) -> float:
    """||delta X^T||^2 from the Gram matrix X^T X.

    Example:
        >>> gram_error(torch.tensor([[1.0, 2.0]]), torch.eye(2))
        5.0
    """
    return float(((delta @ gram) * delta).sum())


def output_error(before: Tensor, after: Tensor, gram: Tensor) -> float:
    """||(W - W') X^T||^2 / ||W X^T||^2 from the Gram matrix X^T X: the relative output error.

    Example:
        >>> x = torch.eye(3)
        >>> round(output_error(torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]), x.T @ x), 4)
        0.3333
    """
    total = gram_error(before.float(), gram)
    return gram_error((before - after).float(), gram) / total if total > 0 else 0.0
