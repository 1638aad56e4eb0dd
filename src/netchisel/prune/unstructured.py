"""`prune.unstructured`: zero the least important weights, element by element or N of every M.

Criteria come from `importance.py`, selection from `select.py`; this file only orchestrates:
choose the layers, score them, compute every mask, and only then change the model, so an
error leaves the model as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import set_mask
from netchisel.core.modules import select_modules
from netchisel.core.registry import register
from netchisel.prune.importance import CRITERIA, NEEDS, collect_stats, get_criterion
from netchisel.prune.select import (
    keep_global,
    keep_lowest_pruned,
    keep_n_of_m,
    keep_per_row,
    parse_pattern,
)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class UnstructuredConfig(StageConfig):
    """Which weights to zero, by what criterion, at what granularity and scope.

    - `sparsity`: fraction of the chosen layers' weights set to zero (ignored for N:M).
    - `importance`: l1, l2, taylor, random or wanda (see `prune/importance.py`).
    - `pattern`: "unstructured" or "N:M" (keep N of every M consecutive inputs, e.g. "2:4").
    - `scope`: "local" (the ratio in every layer; `per_layer` overrides it by regex) or
      "global" (one threshold over all layers; every layer keeps at least `min_keep`).
    - `group`: for local scope, compare weights within the whole "layer" or within each
      output "row" (Wanda's choice for language models).
    - `layers` / `exclude`: regexes over module names (default: every Linear and Conv).
    - `mode`: "zero" (pruned weights are 0 and stay 0 in training) or "freeze" (they keep their
      current values and are not trained).

    Example:
        >>> UnstructuredConfig(sparsity=0.9, scope="global").min_keep
        0.01
    """

    sparsity: float = 0.5
    importance: str = "l1"
    pattern: str = "unstructured"
    scope: Literal["local", "global"] = "local"
    group: Literal["layer", "row"] = "layer"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    min_keep: float = 0.01
    calibration_samples: int = 128
    mode: Literal["zero", "freeze"] = "zero"

    def validate(self) -> None:
        for name, value in [("sparsity", self.sparsity), *self.per_layer.items()]:
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"prune.unstructured: sparsity {name}={value} is not in [0, 1)")
        if not 0.0 <= self.min_keep <= 1.0:
            raise ConfigError(f"prune.unstructured: min_keep {self.min_keep} is not in [0, 1]")
        if self.importance not in CRITERIA:
            known = ", ".join(CRITERIA)
            raise ConfigError(
                f"prune.unstructured: unknown importance {self.importance!r} ({known})"
            )
        pattern = parse_pattern(self.pattern)
        if pattern is not None and (self.scope == "global" or self.per_layer):
            raise ConfigError(
                "prune.unstructured: an N:M pattern is per layer: drop scope/per_layer"
            )
        if self.calibration_samples < 1:
            raise ConfigError("prune.unstructured: calibration_samples must be >= 1")


@register("prune.unstructured", UnstructuredConfig)
def prune_unstructured(model: nn.Module, config: UnstructuredConfig, ctx: Context) -> nn.Module:
    """Score the chosen layers' weights, choose what to keep, then mask the rest."""
    layers = select_modules(model, PRUNABLE, config.layers, config.exclude)
    if not layers:
        raise ConfigError("prune.unstructured: the model has no Linear or Conv layer to prune")
    keep = compute_keep_masks(model, layers, config, ctx)
    for name, mask in keep.items():  # check all before changing any
        if mask.shape != layers[name].get_parameter("weight").shape:
            raise ConfigError(
                f"prune.unstructured: layer {name}: the criterion scored a wrong shape"
            )
    for name, mask in keep.items():
        weight = f"{name}.weight"
        fill = model.get_parameter(weight).detach().clone() if config.mode == "freeze" else None
        set_mask(model, weight, mask, fill)
    pruned = {n: 1.0 - float(k.float().mean()) for n, k in keep.items()}
    total = sum(k.numel() for k in keep.values())
    ctx.record(
        sparsity=sum(int((~k).sum()) for k in keep.values()) / total,
        layer_sparsity=pruned,
        note="unstructured zeros run on dense kernels: latency does not improve (measured)",
    )
    return model


def compute_keep_masks(
    model: nn.Module, layers: dict[str, nn.Module], config: UnstructuredConfig, ctx: Context
) -> dict[str, Tensor]:
    """The keep-mask of every chosen layer's weight; the model is not changed."""
    criterion = get_criterion(config.importance)
    need = NEEDS.get(config.importance)
    stats = collect_stats(model, layers, ctx.task, need, config.calibration_samples)
    torch.manual_seed(ctx.seed)  # for the random criterion
    scores = {n: criterion(m.get_parameter("weight"), stats[n]) for n, m in layers.items()}
    pattern = parse_pattern(config.pattern)
    if pattern is not None:
        return {n: keep_n_of_m(s, *pattern, layer=n) for n, s in scores.items()}
    if config.scope == "global":
        return keep_global(scores, config.sparsity, config.min_keep)
    select = keep_per_row if config.group == "row" else keep_lowest_pruned
    return {n: select(s, _ratio(n, config)) for n, s in scores.items()}


def _ratio(layer: str, config: UnstructuredConfig) -> float:
    for pattern, ratio in config.per_layer.items():
        if re.fullmatch(pattern, layer):
            return ratio
    return config.sparsity
