"""`prune.sparsegpt`: one-shot second-order pruning from calibration data (SparseGPT).

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). For one Linear layer with weight W (rows = outputs, columns = inputs) and its
calibration inputs X (one row per token), SparseGPT looks for a sparse W' that keeps the
layer's output, minimising ||(W - W') X^T||^2. Each output row is an independent least-squares
problem with the same Hessian H = 2 X^T X / n (n tokens), so one inverse serves every row.

The solver walks the columns left to right. When column j is pruned, the error it leaves,
err = (w_j - q_j) / [U]_jj, is spread over the not-yet-visited columns through row j of U, the
upper Cholesky factor of H^-1 (H^-1 = U^T U). That is the Optimal Brain Surgeon update
restricted to the columns on the right, which is what makes one shared inverse enough. Columns
go in blocks of `blocksize`: inside a block the update is applied column by column, and the
block's accumulated errors reach the columns on its right in one matrix product. Which weights
a block prunes is chosen when the solver reaches it (adaptive mask selection), from the
OBS saliency w^2 / [U]_jj^2 of the already-updated weights; with an N:M pattern the choice is
made for every M consecutive columns.

The sweep's weights are not the best ones for the mask it chose: each pruned weight's error
only reaches the columns to its right, and a block's mask is fixed before the blocks after it
move. `reconstruct: true` then solves each row's kept weights exactly by least squares
against H (Boza 2024); `refine_steps` also lets the mask move, by ADMM on the same loss
(`netchisel.prune.reconstruct`). On the zoo llama at 50% they cut the perplexity increase
roughly in half and to a quarter (docs/llm.md).

H is dampened by `damping` times its mean diagonal, which keeps it invertible when the
calibration set has fewer tokens than inputs or features that move together. If a Cholesky
factorisation still fails, or the result is not finite, the damping is raised tenfold and the
layer solved again (a larger damping moves the solver toward magnitude pruning); the damping
used is recorded per layer. A layer whose calibration inputs are not finite is an error.

Layers are solved in the order the model calls them, so each layer's Hessian comes from the
outputs of the already-pruned layers before it. For a transformer the model's blocks (the
`nn.ModuleList` that holds the chosen layers) run one at a time over cached block inputs, as in
the paper: a layer costs one pass through its own block, not through the whole model. Layers
that read the same input tensor (q, k and v projections) share one pass. Layers outside the
blocks (a classifier, an LM head) are solved last from passes through the whole model. That
machinery is `netchisel.calib.run_layerwise` (GPTQ, AWQ and SmoothQuant are solvers over it
too); damping is `netchisel.calib.hessian`.

Written here because no well-kept library offers it for any `nn.Module`: the authors' code and
llm-compressor's port are tied to Hugging Face model classes and their own sessions.

Masks go through `netchisel.core.masks.set_mask`, so pruned weights stay zero in later
fine-tuning and the artifact stores them sparsely. Latency does not improve on dense kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from netchisel.calib import LayerInputs, Layerwise, run_layerwise
from netchisel.calib.hessian import (
    damped_factors,
    gram_error,
    layer_hessian,
    output_error,
    prepared_hessian,
    unsolvable,
)
from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.masks import Mask, masks_of, set_mask
from netchisel.core.modules import nothing_chosen
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.prune.reconstruct import exact_weights, refined_mask
from netchisel.prune.select import (
    check_n_of_m,
    checked_pattern,
    keep_lowest_pruned,
    keep_n_of_m,
    parse_pattern,
)
from netchisel.prune.unstructured import DENSE_KERNEL_NOTE, select_prunable


@dataclass(frozen=True)
class SparseGPTConfig(StageConfig):
    """How SparseGPT prunes: how much, in what pattern, from how much calibration data.

    - `sparsity`: fraction of each chosen layer's weights set to zero (ignored for N:M).
    - `pattern`: "unstructured" or "N:M" (keep N of every M consecutive inputs, e.g. "2:4").
    - `blocksize`: columns solved together (a multiple of M for N:M). The unstructured mask is
      chosen afresh at every block, so a block should be a small part of a layer's width: the
      paper's 128 suits layers thousands wide; on 128-wide layers 16-32 prunes better
      (docs/pruning.md). It does not change N:M results, only their speed.
    - `damping`: added to H's diagonal as a fraction of its mean diagonal (paper: 0.01).
    - `calibration_samples`: samples of the task's train split (for text: windows).
    - `layers` / `exclude`: regexes over module names (default: every Linear).
    - `blocks`: name of the `nn.ModuleList` of transformer blocks; None finds the ModuleList
      holding the most chosen layers; "" runs every layer's pass through the whole model.
    - `reconstruct`: after the sweep, solve each row's kept weights exactly by least squares
      on the mask the sweep chose (`exact_weights`); costs O(rows x kept^3) per layer.
    - `refine_steps`: alternate mask and update that many times (`refined_mask`, ADMM as in
      Boza 2024), then solve exactly on whichever mask, the sweep's or ADMM's, loses less on
      the calibration data; 0 keeps SparseGPT's mask. Implies reconstruct.

    Example:
        >>> SparseGPTConfig(pattern="2:4", layers=("blocks\\\\..*",)).blocksize
        128
    """

    NAME: ClassVar[str] = "prune.sparsegpt"

    sparsity: float = 0.5
    pattern: str = "unstructured"
    blocksize: int = 128
    damping: float = 0.01
    calibration_samples: int = 128
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    blocks: str | None = None
    reconstruct: bool = False
    refine_steps: int = 0

    def validate(self) -> None:
        if self.refine_steps < 0:
            raise ConfigError(
                f"prune.sparsegpt.refine_steps: must be >= 0 (0: off; 20 converges), "
                f"got {self.refine_steps}"
            )
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"prune.sparsegpt.sparsity: {self.sparsity} is not in [0, 1)")
        nm = checked_pattern("prune.sparsegpt", self.pattern, self.sparsity)
        if self.blocksize < 1:
            raise ConfigError(f"prune.sparsegpt.blocksize: must be >= 1, got {self.blocksize}")
        if nm is not None and self.blocksize % nm[1]:
            raise ConfigError(
                f"prune.sparsegpt.blocksize: {self.blocksize} is not a multiple of M={nm[1]} "
                f"of pattern {self.pattern!r}: use e.g. {nm[1] * max(1, 128 // nm[1])}"
            )
        if not self.damping > 0.0:
            raise ConfigError(f"prune.sparsegpt.damping: must be > 0, got {self.damping}")
        check_calibration_samples("prune.sparsegpt", self.calibration_samples)


# -- the solver: pure functions on tensors ------------------------------------------------


@dataclass(frozen=True)
class SparseResult:
    """A solved layer: the new weight, its keep-mask and the damping that made H invertible.

    `refined` is True when the mask is ADMM's (`refine_steps`), not the sweep's.
    """

    weight: Tensor
    keep: Tensor
    damping: float
    refined: bool = False


def sparsegpt_solve(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float = 0.5,
    pattern: tuple[int, int] | None = None,
    blocksize: int = 128,
    damping: float = 0.01,
    pruned: Tensor | None = None,
    *,
    reconstruct: bool = False,
    refine_steps: int = 0,
) -> SparseResult:
    """Prune `weight` (out, in) to `sparsity` (or N:M) keeping `weight @ x` for H's inputs.

    `hessian` is X^T X (any positive scale) of the layer's inputs, (in, in). Exactly
    `round(sparsity * weight.numel())` weights are zero in the result for unstructured
    sparsity; N:M keeps exactly N of every M consecutive inputs of each row. Entries where
    `pruned` is True are pruned whatever their saliency (an earlier mask). `refine_steps`
    moves the sweep's mask by ADMM (`reconstruct.refined_mask`); with it or `reconstruct`,
    the kept weights are then solved exactly on the mask (`reconstruct.exact_weights`), both
    against the damped H. If the damped H is not positive definite in float32, or the result
    is not finite, the damping is raised tenfold, up to `calib.hessian.DAMPING_RETRIES`
    times. Inputs are not modified.

    Example:
        >>> x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> w = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        >>> result = sparsegpt_solve(w, x.T @ x, sparsity=0.5)
        >>> int((result.weight == 0).sum()), result.damping
        (16, 0.01)
    """
    h = prepared_hessian(hessian)
    for factor, used in damped_factors(h, damping):
        new, keep = _obs_prune(
            weight.detach().float(), factor, sparsity, pattern, blocksize, pruned
        )
        refined = False
        if reconstruct or refine_steps:
            damped = h + used * float(h.diagonal().mean()) * torch.eye(len(h), device=h.device)
            new = exact_weights(weight, damped, keep)
            if refine_steps:
                # ADMM is a heuristic for the mask: its mask is kept only if the layer's
                # output on the calibration data (undamped H) loses less with it.
                moved = refined_mask(weight, damped, keep, sparsity, pattern, refine_steps, pruned)
                other = exact_weights(weight, damped, moved)
                w = weight.detach().float()
                if gram_error(other - w, h) < gram_error(new - w, h):
                    new, keep, refined = other, moved, True
        if bool(torch.isfinite(new).all()):
            return SparseResult(new.to(weight.dtype), keep, used, refined)
    raise unsolvable(damping)


def _obs_prune(
    weight: Tensor,
    u: Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    blocksize: int,
    pruned: Tensor | None,
) -> tuple[Tensor, Tensor]:
    w = weight.clone()
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    forced = pruned if pruned is not None else torch.zeros_like(keep)

    def dropped_before(col: int) -> int:
        # Allocating the count per column keeps the layer's total exactly round(s * numel).
        return round(sparsity * rows * col)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        d = u_block.diagonal()
        errors = torch.zeros_like(block)
        prune = forced[:, start:end].clone()
        if pattern is None:
            # OBS saliency: zeroing w_ij alone costs w_ij^2 / (2 [H_F^-1]_jj), F the columns
            # not yet visited; d_j^2 is that diagonal once the sweep reaches column j.
            saliency = block.pow(2) / d.pow(2)
            saliency[prune] = -torch.inf
            drop = dropped_before(end) - dropped_before(start)
            prune |= ~keep_lowest_pruned(saliency, drop / saliency.numel())
        for j in range(end - start):
            if pattern is not None and j % pattern[1] == 0:
                n, m = pattern
                group = block[:, j : j + m].pow(2) / d[j : j + m].pow(2)
                group[prune[:, j : j + m]] = -torch.inf
                prune[:, j : j + m] |= ~keep_n_of_m(group, n, m)
            column = block[:, j]
            kept = torch.where(prune[:, j], 0.0, column)
            err = (column - kept) / d[j]
            # Spread the error over the columns to the right (row j of U); column j itself
            # becomes `kept` exactly, which the assignment makes bit-exact.
            block[:, j:] -= err[:, None] * u_block[j, j:][None, :]
            block[:, j] = kept
            errors[:, j] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
        keep[:, start:end] = ~prune
    return w, keep


# -- the stage: layer by layer through the model ------------------------------------------


@register(SparseGPTConfig)
def prune_sparsegpt(model: nn.Module, config: SparseGPTConfig, ctx: Context) -> nn.Module:
    """Prune the chosen Linear layers with SparseGPT, in call order, from the task's data.

    Calibration samples come from the task's train split. On any error the model is put back
    as it was (weights, masks, mode).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(64, 8), torch.zeros(64, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = prune_sparsegpt(net, SparseGPTConfig(sparsity=0.5), Context(task, quiet=True))
        >>> int((net[0].weight == 0).sum()), int((net[2].weight == 0).sum())
        (32, 8)
    """
    task = ctx.require_task("prune.sparsegpt")
    chosen = select_prunable(model, "prune.sparsegpt", config.layers, config.exclude)
    layers = {n: m for n, m in chosen.items() if isinstance(m, nn.Linear)}
    left_dense = [n for n in chosen if n not in layers]  # convolutions: not handled here
    if left_dense and config.layers is not None:
        raise ConfigError(
            f"prune.sparsegpt handles Linear layers only; {', '.join(left_dense)} "
            "matched `layers`: exclude them, or prune them with prune.unstructured"
        )
    if not layers:
        raise nothing_chosen(model, (nn.Linear,), "prune.sparsegpt", "Linear", "prune")
    pattern = parse_pattern(config.pattern)
    if pattern is not None:
        widths = {name: layer.in_features for name, layer in layers.items()}
        check_n_of_m(widths, pattern[1], "prune.sparsegpt")
    earlier = _earlier_masks(model, layers)
    # Per solved layer: its keep mask (packed, one bit per weight), pruned count, output error
    # and damping (not the float weight, which is copied into the layer at once: held for
    # every layer it would double the model).
    solved: dict[str, tuple[Mask, int, float, float]] = {}
    refined: list[str] = []  # layers whose mask is ADMM's (refine_steps), not the sweep's

    def solve(group: dict[str, LayerInputs]) -> None:
        for name, seen in group.items():
            weight = layers[name].weight
            pruned = ~earlier[name].keep if name in earlier else None
            try:
                result = sparsegpt_solve(
                    weight,
                    layer_hessian(seen),
                    config.sparsity,
                    pattern,
                    config.blocksize,
                    config.damping,
                    pruned,
                    reconstruct=config.reconstruct,
                    refine_steps=config.refine_steps,
                )
            except ModelError as e:
                raise ModelError(
                    f"prune.sparsegpt: layer {name}: {e}; exclude it or raise damping"
                ) from None
            error = output_error(weight, result.weight, seen.gram)  # type: ignore[arg-type]
            weight.copy_(result.weight)
            pruned_now = int((~result.keep).sum())
            solved[name] = (Mask.of(result.keep), pruned_now, error, result.damping)
            if result.refined:
                refined.append(name)

    how = Layerwise(config.NAME, config.calibration_samples, config.blocks)
    with restored_on_error(model, spill=None):
        run = run_layerwise(model, layers, task, solve, how, ctx)
        for name, (mask, _, _, _) in solved.items():
            set_mask(model, f"{name}.weight", mask.keep)
    total = sum(layers[name].weight.numel() for name in solved)
    ctx.record(
        sparsity=sum(p for _, p, _, _ in solved.values()) / total,
        layer_output_error={n: e for n, (_, _, e, _) in solved.items()},
        damping={n: d for n, (_, _, _, d) in solved.items()},
        calibration_samples=run.samples,
        note=DENSE_KERNEL_NOTE,
        **({"left_dense": left_dense} if left_dense else {}),
        **({"refined_masks": refined} if config.refine_steps else {}),
    )
    return model


def _earlier_masks(model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Mask]:
    """Masks an earlier stage set: their pruned entries stay pruned (and count toward sparsity)."""
    out: dict[str, Mask] = {}
    for name, mask in masks_of(model).items():
        layer = name.removesuffix(".weight")
        if layer in layers and name.endswith(".weight"):
            if mask.fill is not None:
                raise ConfigError(
                    f"prune.sparsegpt: {name} has frozen entries (mode freeze) that SparseGPT "
                    "would change: exclude the layer"
                )
            out[layer] = mask  # packed: unpacked one layer at a time, when it is solved
    return out
