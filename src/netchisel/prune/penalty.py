"""`prune.penalty`: a regulariser drives whole groups toward zero, then masks zero them.

A group is one output of a layer: a Linear's neuron (its weight row and bias) or a Conv's
output channel (its filter and bias). Two penalties, added to the task's loss during training:

- `group_lasso` (Yuan & Lin 2006; Wen et al. 2016): lambda * sum_g sqrt(n_g) * ||w_g||_2 over
  every group. Its gradient does not shrink with the weights, so unneeded groups collapse;
  the groups with the smallest norm at the end are pruned.
- `growing` (Wang et al. 2021, "Neural pruning via growing regularization", GReg-1): the groups
  to prune are chosen first (smallest norm), and only they get lambda_t * ||w_g||^2 with
  lambda_t rising by `strength` every `grow_every` steps up to `max_strength`, so they fade
  out while the rest of the network adapts.

Either way the chosen groups are then masked to exactly zero (weight and bias). This stage
does not remove them from the module tree: `prune.structured` does the coupled surgery that
makes the network smaller and faster; a zeroed group is what it removes cheaply.
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
from netchisel.core.task import Batch
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.prune.schedule import (
    check_sparsity,
)
from netchisel.prune.select import keep_global, keep_lowest_pruned
from netchisel.prune.unstructured import PRUNABLE, select_prunable

# -- pure functions on tensors ----------------------------------------------------------------


def group_sq_norms(weight: Tensor, bias: Tensor | None) -> Tensor:
    """Squared L2 norm of every output group (dim 0 of the weight, plus its bias entry).

    Example:
        >>> group_sq_norms(torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([4.0, 0.0]))
        tensor([25.,  2.])
    """
    sq = weight.pow(2).reshape(weight.shape[0], -1).sum(dim=1)
    return sq if bias is None else sq + bias.pow(2)


def group_size(weight: Tensor, bias: Tensor | None) -> int:
    """Entries in one output group.

    Example:
        >>> group_size(torch.zeros(8, 3, 3, 3), torch.zeros(8))
        28
    """
    return math.prod(weight.shape[1:]) + (bias is not None)


def group_lasso(weight: Tensor, bias: Tensor | None) -> Tensor:
    """sqrt(n_g) * sum_g ||w_g||_2: the group-lasso term of one layer (differentiable).

    The tiny constant keeps the gradient finite at an exactly-zero group.

    Example:
        >>> round(float(group_lasso(torch.tensor([[3.0, 4.0]]), None)), 4)
        7.0711
    """
    norms = (group_sq_norms(weight, bias) + 1e-12).sqrt()
    return math.sqrt(group_size(weight, bias)) * norms.sum()


def group_rms(weight: Tensor, bias: Tensor | None) -> Tensor:
    """Root-mean-square of every group: its norm made comparable across layers of any width.

    Example:
        >>> group_rms(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), None).tolist()
        [3.535533905029297, 0.0]
    """
    detached = None if bias is None else bias.detach()
    return (group_sq_norms(weight.detach(), detached) / group_size(weight, bias)).sqrt()


def growing_strength(step: int, increment: float, every: int, ceiling: float) -> float:
    """lambda at `step` of growing regularisation: `increment` more every `every` steps.

    Example:
        >>> [growing_strength(s, 0.1, 10, 0.25) for s in (0, 9, 10, 25, 99)]
        [0.0, 0.0, 0.1, 0.2, 0.25]
    """
    return min(ceiling, round(increment * (step // every), 12))


# -- the stage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PenaltyConfig(TrainConfig):
    """Train with a group penalty for `steps`, then zero `sparsity` of the groups.

    - `method`: "group_lasso" or "growing" (growing regularisation, GReg-1).
    - `sparsity`: fraction of the groups (output neurons / channels) zeroed; `scope` "local"
      zeroes that fraction in every layer, "global" ranks all groups by RMS and keeps at least
      `min_keep` of each layer's.
    - `strength`: group lasso's lambda; for "growing", the step by which lambda rises every
      `grow_every` steps, up to `max_strength`.
    - `steps`: penalised training; `finetune_steps`: training after the groups are zeroed.
    - `layers` / `exclude`: regexes over module names; by default every Linear and Conv but the
      model's last one (its outputs are the model's outputs, e.g. the classes).
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: both training runs.

    Example:
        >>> PenaltyConfig(method="growing", strength=1e-3, max_strength=0.1).method
        'growing'
    """

    NAME: ClassVar[str] = "prune.penalty"

    method: Literal["group_lasso", "growing"] = "group_lasso"
    sparsity: float = 0.5
    scope: Literal["local", "global"] = "local"
    min_keep: float = 0.01
    strength: float = 1e-3
    grow_every: int = 10
    max_strength: float = 1.0
    steps: int = 500
    finetune_steps: int = 0
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        stage = "prune.penalty"
        check_sparsity(stage, "sparsity", self.sparsity)
        if not 0.0 <= self.min_keep <= 1.0:
            raise ConfigError(f"{stage}: min_keep {self.min_keep} is not in [0, 1]")
        if not self.strength >= 0.0:
            raise ConfigError(f"{stage}: strength must be >= 0, got {self.strength}")
        if self.grow_every < 1:
            raise ConfigError(f"{stage}: grow_every must be >= 1, got {self.grow_every}")
        if not self.max_strength >= 0.0:
            raise ConfigError(f"{stage}: max_strength must be >= 0, got {self.max_strength}")
        if self.steps < 1:
            raise ConfigError(f"{stage}: steps must be >= 1, got {self.steps}")
        if self.finetune_steps < 0:
            raise ConfigError(f"{stage}: finetune_steps must be >= 0, got {self.finetune_steps}")
        check_training(stage, self.lr, self.batch_size)


@register(PenaltyConfig)
def prune_penalty(model: nn.Module, config: PenaltyConfig, ctx: Context) -> nn.Module:
    """Drive output groups toward zero with a penalty, then mask the weakest to zero.

    Records the fraction of groups zeroed, per layer, and the mean RMS of the zeroed and the
    kept groups before and after the penalised training (the penalty's effect).
    """
    stage = "prune.penalty"
    task = ctx.require_task(stage)
    layers = _group_layers(model, config)
    start_rms = {n: group_rms(*_weight_bias(m)) for n, m in layers.items()}
    targets = _choose(start_rms, config) if config.method == "growing" else None
    state = {"step": 0}

    def penalty() -> Tensor:
        if config.method == "group_lasso":
            terms = [group_lasso(*_weight_bias(m)) for m in layers.values()]
            return config.strength * torch.stack(terms).sum()
        assert targets is not None
        strength = growing_strength(
            state["step"], config.strength, config.grow_every, config.max_strength
        )
        terms = [group_sq_norms(*_weight_bias(m))[~targets[n]].sum() for n, m in layers.items()]
        return strength * torch.stack(terms).sum()

    def loss_fn(m: nn.Module, batch: Batch) -> Tensor:
        return task.loss(m, batch) + penalty()

    def after_step(step: int) -> None:
        state["step"] = step + 1

    with restored_on_error(model):
        fit(
            model,
            task,
            train_settings(config, config.steps),
            ctx,
            loss_fn=loss_fn,
            after_step=after_step,
        )
        end_rms = {n: group_rms(*_weight_bias(m)) for n, m in layers.items()}
        keep = targets if targets is not None else _choose(end_rms, config)
        for name, module in layers.items():
            _zero_groups(model, name, module, keep[name])
        if config.finetune_steps:
            fit(model, task, train_settings(config, config.finetune_steps), ctx)

    def mean(values: dict[str, Tensor], zeroed: bool) -> float:
        picked = torch.cat([v[keep[n] != zeroed] for n, v in values.items()])
        return float(picked.mean()) if picked.numel() else 0.0

    groups = sum(k.numel() for k in keep.values())
    ctx.record(
        sparsity=sum(int((~k).sum()) for k in keep.values()) / groups,
        layer_sparsity={n: 1.0 - float(k.float().mean()) for n, k in keep.items()},
        zeroed_group_rms_before=mean(start_rms, True),
        zeroed_group_rms_after=mean(end_rms, True),
        kept_group_rms_before=mean(start_rms, False),
        kept_group_rms_after=mean(end_rms, False),
        note="groups are zeroed, not removed: prune.structured shrinks the layers",
    )
    return model


def _group_layers(model: nn.Module, config: PenaltyConfig) -> dict[str, nn.Module]:
    layers = select_prunable(model, "prune.penalty", config.layers, config.exclude)
    if config.layers is None:
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
        layers.pop(names[-1], None)  # the model's outputs are not groups to prune
        if not layers:
            raise ConfigError(
                f"prune.penalty: the only layer left is {names[-1]!r}, whose outputs are the "
                "model's; name it in layers to prune its outputs anyway"
            )
    return layers


def _weight_bias(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    bias = getattr(module, "bias", None)
    return module.get_parameter("weight"), bias if isinstance(bias, Tensor) else None


def _choose(rms: dict[str, Tensor], config: PenaltyConfig) -> dict[str, Tensor]:
    """Keep-masks over each layer's groups: the lowest-RMS `sparsity` are pruned."""
    if config.scope == "global":
        return keep_global(rms, config.sparsity, config.min_keep)
    return {n: keep_lowest_pruned(r, config.sparsity) for n, r in rms.items()}


def _zero_groups(model: nn.Module, name: str, module: nn.Module, keep: Tensor) -> None:
    weight, bias = _weight_bias(module)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    targets = {f"{name}.weight": keep.reshape(shape).expand_as(weight)}
    if bias is not None:
        targets[f"{name}.bias"] = keep
    masks = masks_of(model)
    for param, group_keep in targets.items():
        # Entries an earlier stage pruned stay pruned: the masks are intersected.
        old = masks.get(param)
        new = group_keep.to(weight.device) if old is None else group_keep & old.keep
        set_mask(model, param, new.clone())
