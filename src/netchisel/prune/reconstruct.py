"""The best weights for a fixed pruning mask, and a better mask by alternating mask and update.

A pruned Linear layer with weight W0 (rows = outputs) and input Hessian H (X^T X up to scale)
loses ||(W - W0) X^T||^2 = sum over rows of (w - w0) H (w - w0)^T. For a fixed mask each row
is an independent least-squares problem on its kept inputs S: H_SS w_S = (H w0)_S, w = 0
elsewhere (Boza, "Fast and Optimal Weight Update for Pruned Large Language Models", 2024).
SparseGPT's column sweep only approximates that optimum (each pruned weight's error is spread
over the columns to its right only, with the mask fixed block by block); `exact_weights`
solves it, one batched Cholesky per chunk of rows on each row's kept inputs.

`refined_mask` then lets the mask move too: ADMM on the same loss with the constraint "W has
the pattern's zeros", as in Boza's paper. Each step solves the penalised least squares
W = (W0 H + rho (Z - U)) (H + rho I)^-1, projects W + U onto the pattern by magnitude (the
layer's smallest round(sparsity x n) entries, or N of every M inputs) to get Z and the mask,
and accumulates U += W - Z; rho grows by 1.3 per step, so the iterate settles on one mask.
One eigendecomposition of H serves every rho.

Written here because no well-kept library offers either for a plain weight and Hessian: the
paper's code is tied to its own LLM pipeline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from netchisel.prune.select import keep_lowest_pruned, keep_n_of_m

CHUNK_BYTES = 2**28
"""Bytes of the batched kept-input Hessians solved at once (rows are chunked to fit)."""
RHO_START = 0.1
"""ADMM's first penalty, on inputs scaled to unit energy (measured best of 0.01, 0.1, 1)."""
RHO_GROWTH = 1.3


def exact_weights(weight: Tensor, hessian: Tensor, keep: Tensor) -> Tensor:
    """Each row's kept weights solved by least squares against `hessian`; pruned ones zero.

    `hessian` must be positive definite (damped) float32, (in, in); `weight` (out, in) is the
    dense weight the rows are fitted to. Where float32 cannot factor a row's kept Hessian the
    row is NaN, so a caller can retry with more damping. Costs O(out x kept^3).

    Example:
        >>> h = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> new = exact_weights(torch.tensor([[1.0, 1.0]]), h, torch.tensor([[True, False]]))
        >>> [round(v, 4) for v in new[0].tolist()]  # (2 x 1 + 1 x 1) / 2, the pruned one 0
        [1.5, 0.0]
    """
    w0 = weight.detach().float()
    rows = w0.shape[0]
    out = torch.zeros_like(w0)
    kept = keep.sum(1)
    width = int(kept.max()) if rows else 0
    if width == 0:
        return out
    rhs = w0 @ hessian  # row r: (H w0_r)^T, H symmetric
    # Each row's kept inputs first (stable, so in column order), then its pruned ones.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=w0.device)[None, :] < kept[:, None]
    chunk = max(1, CHUNK_BYTES // (4 * width * width))
    for r0 in range(0, rows, chunk):
        idx, ok = order[r0 : r0 + chunk], valid[r0 : r0 + chunk].float()
        sub = hessian[idx[:, :, None], idx[:, None, :]] * ok[:, :, None] * ok[:, None, :]
        sub = sub + torch.diag_embed(1.0 - ok)  # padding of rows with fewer kept: identity
        lower, info = torch.linalg.cholesky_ex(sub)
        b = (torch.gather(rhs[r0 : r0 + chunk], 1, idx) * ok)[..., None]
        solved = torch.cholesky_solve(b, lower)[..., 0] * ok
        solved[info != 0] = torch.nan
        out[r0 : r0 + chunk].scatter_(1, idx, solved)
    return out * keep


def refined_mask(
    weight: Tensor,
    hessian: Tensor,
    keep: Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    steps: int,
    pruned: Tensor | None = None,
) -> Tensor:
    """A keep-mask of the same pattern found by `steps` of ADMM from the mask `keep`.

    `hessian` is the damped H (float32, (in, in)); `pruned` entries stay pruned. Unstructured
    masks prune exactly `round(sparsity * weight.numel())` weights (more if `pruned` holds
    more); N:M keeps N of every M inputs of each row.

    Example:
        >>> x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> w = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        >>> start = torch.ones(4, 8, dtype=torch.bool)
        >>> int(refined_mask(w, x.T @ x, start, 0.5, None, 10).sum())
        16
    """
    # In inputs scaled to unit energy (w_j ||x_j||, H_jk / (||x_j|| ||x_k||)) the magnitude
    # projection ranks weights by what zeroing each alone costs, and one rho suits every input.
    norms = hessian.diagonal().sqrt()
    scaled = hessian / norms[:, None] / norms[None, :]
    w0 = weight.detach().float() * norms
    forced = pruned if pruned is not None else torch.zeros_like(keep)
    values, vectors = torch.linalg.eigh(scaled)
    target = w0 @ scaled
    z, u = w0 * keep, torch.zeros_like(w0)
    rho = RHO_START
    for _ in range(steps):
        # (W0 H + rho (Z - U)) (H + rho I)^-1 through H = V diag(values) V^T
        w = ((target + rho * (z - u)) @ vectors / (values + rho)) @ vectors.T
        v = w + u
        score = v.abs().masked_fill(forced, -torch.inf)
        if pattern is None:
            keep = keep_lowest_pruned(score, sparsity)
        else:
            keep = keep_n_of_m(score, *pattern)
        keep = keep & ~forced
        z = v * keep
        u = u + w - z
        rho *= RHO_GROWTH
    return keep
