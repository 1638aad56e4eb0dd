"""`prune.sparse_training`: train at a constant sparsity from scratch, pruning and regrowing.

The network starts sparse (a random mask per layer) and stays exactly as sparse: every
`update_every` steps each layer drops its `f * active` smallest-magnitude weights and grows
as many where they were absent, so the count of active weights per layer never changes.

- SET (Mocanu et al. 2018): `regrow: random`, new connections at random positions.
- RigL (Evci et al. 2020): `regrow: gradient`, new connections where the *dense* gradient is
  largest. fit's `before_step` hook sees the gradient of every entry (masks zero the weights,
  not the graph), so it is read there on update steps, before the gradient is masked.

Both follow RigL's conventions: `f` decays with a cosine from `drop_fraction` to 0 at
`update_until` of training (then the mask is fixed), grown weights start at zero, and the
per-layer densities are uniform or Erdos-Renyi-Kernel (ERK: larger layers are sparser, in
proportion to (sum of dims) / (product of dims)). Gradients of absent weights are zeroed
before the optimizer step, as a sparse kernel would compute them, so the optimizer state of a
regrown weight does not carry history from when it was absent.

Written by hand: torch's pruning utilities have no prune-and-regrow, and the reference
implementations are TensorFlow (RigL) or tied to their own training loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.prune.schedule import (
    check_sparsity,
    masked_fraction,
)
from netchisel.prune.unstructured import DENSE_KERNEL_NOTE, select_prunable

# -- pure functions on tensors ----------------------------------------------------------------


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Per-layer densities with ERK's shape, averaging exactly `density` over all entries.

    Each layer's density is eps * (sum of dims) / (product of dims); layers that would exceed 1
    are made dense and eps is solved again for the rest (Evci et al. 2020, appendix).

    Example:
        >>> [round(d, 4) for d in erk_densities([(300, 64), (100, 300), (10, 100)], 0.1)]
        [0.1089, 0.0766, 0.6318]
    """
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, sizes, strict=True)]
    dense: set[int] = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        eps = budget / divisor if divisor else 0.0
        over = {i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0}
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= over


def random_keep(shape: torch.Size, count: int, generator: torch.Generator) -> Tensor:
    """A keep-mask of `shape` with exactly `count` True entries at random positions.

    Example:
        >>> int(random_keep(torch.Size([4, 5]), 7, torch.Generator().manual_seed(0)).sum())
        7
    """
    numel = math.prod(shape)
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[torch.randperm(numel, generator=generator)[:count]] = True
    return keep.reshape(shape)


def cosine_drop_fraction(step: int, initial: float, end: int) -> float:
    """The fraction of active weights replaced at `step`: initial/2 * (1 + cos(pi t / end)).

    Example:
        >>> cosine_drop_fraction(50, 0.3, 100)
        0.15
        >>> cosine_drop_fraction(120, 0.3, 100)
        0.0
    """
    if step >= end:
        return 0.0
    return round(initial / 2.0 * (1.0 + math.cos(math.pi * step / end)), 12)


def drop_and_grow(weight: Tensor, keep: Tensor, grow_scores: Tensor, count: int) -> Tensor:
    """Drop the `count` smallest active weights, grow the `count` best-scored absent ones.

    A weight dropped in this update may be grown back in it (RigL does the same); the number of
    True entries is unchanged.

    Example:
        >>> w = torch.tensor([0.5, 0.1, 0.0, 0.0])
        >>> keep = torch.tensor([True, True, False, False])
        >>> drop_and_grow(w, keep, torch.tensor([0.0, 0.0, 0.2, 0.9]), 1).tolist()
        [True, False, False, True]
    """
    active = keep.reshape(-1)
    if count > int(active.sum()):
        raise ValueError(f"cannot drop {count} of {int(active.sum())} active weights")
    magnitude = weight.detach().abs().reshape(-1)
    drop_score = torch.where(active, magnitude, torch.full_like(magnitude, math.inf))
    after = active.clone()
    after[torch.argsort(drop_score, stable=True)[:count]] = False
    scores = grow_scores.reshape(-1).to(magnitude.dtype)
    grow_score = torch.where(after, torch.full_like(scores, -math.inf), scores)
    after[torch.argsort(grow_score, descending=True, stable=True)[:count]] = True
    return after.reshape(keep.shape)


# -- the stage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseTrainingConfig(TrainConfig):
    """Train `steps` steps at a constant `sparsity`, replacing connections as it goes.

    - `sparsity`: fraction of the chosen layers' weights absent at every step.
    - `distribution`: per-layer densities, "uniform" or "erk" (Erdos-Renyi-Kernel).
    - `regrow`: "random" (SET) or "gradient" (RigL).
    - `drop_fraction`: the fraction of each layer's active weights replaced at the first update,
      decayed with a cosine to 0 at `update_until` (a fraction of `steps`); 0 trains a
      static random mask (the control).
    - `update_every`: steps between mask updates.
    - `layers`, `exclude`: regexes over module names (default: every Linear and Conv).
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: the training run.

    The mask of each chosen layer is drawn fresh (from `ctx.seed`), replacing any mask there:
    give this stage an untrained model.

    Example:
        >>> SparseTrainingConfig(regrow="random", steps=600, update_every=50).update_steps()[:3]
        [50, 100, 150]
    """

    NAME: ClassVar[str] = "prune.sparse_training"

    sparsity: float = 0.9
    steps: int = 1000
    distribution: Literal["uniform", "erk"] = "erk"
    regrow: Literal["random", "gradient"] = "gradient"
    drop_fraction: float = 0.3
    update_every: int = 100
    update_until: float = 0.75
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        stage = "prune.sparse_training"
        check_sparsity(stage, "sparsity", self.sparsity)
        if self.steps < 1:
            raise ConfigError(f"{stage}: steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError(f"{stage}: drop_fraction {self.drop_fraction} is not in [0, 1)")
        if self.update_every < 1:
            raise ConfigError(f"{stage}: update_every must be >= 1, got {self.update_every}")
        if not 0.0 < self.update_until <= 1.0:
            raise ConfigError(f"{stage}: update_until {self.update_until} is not in (0, 1]")
        check_training(stage, self.lr, self.batch_size)

    def update_end(self) -> int:
        """The step count after which the mask is fixed."""
        return round(self.update_until * self.steps)

    def update_steps(self) -> list[int]:
        """Step counts (steps done) after which the masks are updated: every `update_every`,
        strictly before `update_end()` (where the drop fraction reaches 0) and the last step."""
        return list(range(self.update_every, min(self.update_end(), self.steps), self.update_every))


@register(SparseTrainingConfig)
def sparse_training(model: nn.Module, config: SparseTrainingConfig, ctx: Context) -> nn.Module:
    """Train from a random sparse mask, dropping and regrowing connections (SET / RigL).

    Records the sparsity (constant throughout), every update's drop fraction and how many
    connections it replaced, and the density per layer.
    """
    stage = "prune.sparse_training"
    task = ctx.require_task(stage)
    layers = select_prunable(model, stage, config.layers, config.exclude)
    weights = {name: f"{name}.weight" for name in layers}
    shapes = [model.get_parameter(w).shape for w in weights.values()]
    density = 1.0 - config.sparsity
    if config.distribution == "erk":
        densities = erk_densities([tuple(s) for s in shapes], density)
    else:
        densities = [density] * len(shapes)
    generator = torch.Generator().manual_seed(ctx.seed)
    when = set(config.update_steps())
    dense_grads: dict[str, Tensor] = {}
    updates: list[dict[str, float]] = []

    def before_step(step: int) -> None:
        masks = masks_of(model)
        for weight in weights.values():
            grad = model.get_parameter(weight).grad
            if grad is None:
                continue
            if step + 1 in when and config.regrow == "gradient":
                dense_grads[weight] = grad.detach().abs().clone()
            grad.mul_(masks[weight].keep)

    def after_step(step: int) -> None:
        done = step + 1
        if done not in when:
            return
        fraction = cosine_drop_fraction(done, config.drop_fraction, config.update_end())
        replaced = 0
        masks = masks_of(model)
        for weight in weights.values():
            param = model.get_parameter(weight)
            keep = masks[weight].keep
            count = round(fraction * int(keep.sum()))
            if config.regrow == "gradient":
                scores = dense_grads.pop(weight, torch.zeros_like(param))
            else:
                scores = torch.rand(param.shape, generator=generator).to(param.device)
            new = drop_and_grow(param, keep, scores, count)
            replaced += int((new & ~keep).sum())
            set_mask(model, weight, new)
        updates.append({"step": done, "drop_fraction": fraction, "replaced": replaced})

    with restored_on_error(model):
        for weight, shape, d in zip(weights.values(), shapes, densities, strict=True):
            set_mask(model, weight, random_keep(shape, round(d * math.prod(shape)), generator))
        losses = fit(
            model,
            task,
            train_settings(config, config.steps),
            ctx,
            before_step=before_step,
            after_step=after_step,
        )
    ctx.record(
        sparsity=masked_fraction(model, layers),
        layer_density={n: d for n, d in zip(layers, densities, strict=True)},
        updates=updates,
        final_train_loss=losses[-1],
        note=DENSE_KERNEL_NOTE,
    )
    return model
