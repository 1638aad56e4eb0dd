"""`prune.unstructured`: zero the least important weights, element by element or N of every M.

Criteria come from `importance.py`, selection from `select.py`; this file only orchestrates:
choose the layers, score them, compute every mask, and only then change the model, so an
error leaves the model as it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.conv1d import conv1d_types, with_conv1d_as_linear_
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.modules import nothing_chosen, sample_of, select_modules
from netchisel.core.registry import register
from netchisel.core.state import seeded
from netchisel.prune.importance import CRITERIA, NEEDS, collect_stats, get_criterion
from netchisel.prune.select import (
    check_n_of_m,
    checked_pattern,
    keep_global,
    keep_lowest_pruned,
    keep_n_of_m,
    keep_per_row,
    parse_pattern,
)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DENSE_KERNEL_NOTE = (
    "masked zeros run on dense kernels: no speed-up without a sparse kernel "
    "(1.00x measured by bench/prune_unstructured.py; the report's latency shows this run's)"
)
FREEZE_NOTE = "pruned weights are frozen, not zeroed: the model is not sparse"


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

    NAME: ClassVar[str] = "prune.unstructured"

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
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"prune.unstructured.sparsity: {self.sparsity} is not in [0, 1)")
        check_per_layer_values("prune.unstructured", self.per_layer)
        if not 0.0 <= self.min_keep <= 1.0:
            raise ConfigError(f"prune.unstructured: min_keep {self.min_keep} is not in [0, 1]")
        if self.importance not in CRITERIA:
            known = ", ".join(CRITERIA)
            raise ConfigError(
                f"prune.unstructured: unknown importance {self.importance!r} ({known})"
            )
        pattern = checked_pattern("prune.unstructured", self.pattern, self.sparsity)
        if pattern is not None and (self.scope == "global" or self.per_layer):
            raise ConfigError(
                "prune.unstructured: an N:M pattern is per layer: drop scope/per_layer"
            )
        check_local_options("prune.unstructured", self.scope, self.group, self.per_layer)
        if self.calibration_samples < 1:
            raise ConfigError("prune.unstructured: calibration_samples must be >= 1")


@register(UnstructuredConfig)
def prune_unstructured(model: nn.Module, config: UnstructuredConfig, ctx: Context) -> nn.Module:
    """Score the chosen layers' weights, choose what to keep, then mask the rest."""
    layers = select_prunable(model, "prune.unstructured", config.layers, config.exclude)
    check_per_layer("prune.unstructured", config.per_layer, layers)
    pattern = parse_pattern(config.pattern)
    if pattern is not None:
        inputs = {n: m.get_parameter("weight")[0].numel() for n, m in layers.items()}
        check_n_of_m(inputs, pattern[1], "prune.unstructured")
    keep = compute_keep_masks(model, layers, config, ctx)
    for name, mask in keep.items():  # check all before changing any
        if mask.shape != layers[name].get_parameter("weight").shape:
            raise ConfigError(
                f"prune.unstructured: layer {name}: the criterion scored a wrong shape"
            )
    freeze_at = current_weights(layers) if config.mode == "freeze" else None
    hold_(model, keep, freeze_at)
    held = {n: masks_of(model)[f"{n}.weight"].keep for n in keep}
    total = sum(k.numel() for k in held.values())
    ctx.record(
        sparsity=sum(int((~k).sum()) for k in held.values()) / total,
        layer_sparsity={n: 1.0 - float(k.float().mean()) for n, k in held.items()},
        note=DENSE_KERNEL_NOTE if config.mode == "zero" else FREEZE_NOTE,
    )
    return model


def select_prunable(
    model: nn.Module, stage: str, layers: tuple[str, ...] | None, exclude: tuple[str, ...]
) -> dict[str, nn.Module]:
    """The Linear/Conv layers a stage prunes, or a ConfigError naming the stage and the cause.

    A chosen Hugging Face Conv1D (GPT-2) is replaced in `model` by its equal `nn.Linear`
    (`core.conv1d`), which is returned; a stage run on such a model runs inside a rollback
    guard (`core.registry.Stage`), so a stage that fails puts it back.

    Example:
        >>> list(select_prunable(nn.Sequential(nn.Linear(2, 2)), "s", None, ()))
        ['0']
    """
    types = (*PRUNABLE, *conv1d_types(model))
    chosen = select_modules(model, types, layers, exclude)
    if not chosen:
        raise nothing_chosen(model, types, stage, "Linear or Conv", "prune")
    return with_conv1d_as_linear_(model, chosen)


def compute_keep_masks(
    model: nn.Module, layers: dict[str, nn.Module], config: UnstructuredConfig, ctx: Context
) -> dict[str, Tensor]:
    """The keep-mask of every chosen layer's weight; the model is not changed.

    Entries an earlier mask holds are ranked below every other, so they are pruned first and
    count toward the sparsity, whatever the criterion (a frozen weight is not zero, so its
    score alone would not say it is pruned).
    """
    scores = score_layers(model, layers, config.importance, ctx, config.calibration_samples)
    masks = masks_of(model)
    for name, score in scores.items():
        old = masks.get(f"{name}.weight")
        if old is not None:
            scores[name] = score.masked_fill(~old.keep.to(score.device), -math.inf)
    return select_keep(scores, config)


def score_layers(
    model: nn.Module,
    layers: dict[str, nn.Module],
    importance: str,
    ctx: Context,
    calibration_samples: int = 128,
) -> dict[str, Tensor]:
    """Every chosen layer's weight scores under the criterion `importance`; the model is not
    changed. Data criteria measure the task through `ctx`; `random` is seeded by `ctx.seed`.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> score_layers(net, {"0": net[0]}, "l1", Context(None))["0"].shape
        torch.Size([2, 2])
    """
    criterion = get_criterion(importance)
    stats = collect_stats(model, layers, ctx.task, NEEDS.get(importance), calibration_samples)
    with seeded(ctx.seed):  # for `random`, without touching the caller's generators
        return {n: criterion(m.get_parameter("weight"), stats[n]) for n, m in layers.items()}


def select_keep(scores: dict[str, Tensor], config: UnstructuredConfig) -> dict[str, Tensor]:
    """Scores to keep-masks by the config's pattern, scope, group and per-layer ratios.

    Example:
        >>> select_keep({"fc": torch.tensor([3.0, 1.0, 2.0, 4.0])}, UnstructuredConfig())["fc"]
        tensor([ True, False, False,  True])
    """
    pattern = parse_pattern(config.pattern)
    if pattern is not None:
        return {n: keep_n_of_m(s, *pattern, layer=n) for n, s in scores.items()}
    if config.scope == "global":
        return keep_global(scores, config.sparsity, config.min_keep)
    select = keep_per_row if config.group == "row" else keep_lowest_pruned
    return {n: select(s, _ratio(n, config)) for n, s in scores.items()}


def check_local_options(stage: str, scope: str, group: str, per_layer: dict[str, float]) -> None:
    """A ConfigError for options of local scope (`group: row`, `per_layer`) with scope global.

    Example:
        >>> check_local_options("s", "global", "layer", {})
    """
    if scope == "global" and (group == "row" or per_layer):
        raise ConfigError(
            f"{stage}: scope global sets one threshold over all layers: per_layer and "
            "group: row are for scope local"
        )


def check_per_layer_values(stage: str, per_layer: dict[str, float]) -> None:
    """A ConfigError for a `per_layer` ratio outside [0, 1) or a key that is not a regex.

    Example:
        >>> check_per_layer_values("s", {"fc.*": 0.5})
    """
    for name, value in per_layer.items():
        if not isinstance(name, str):
            raise ConfigError(
                f"{stage}.per_layer: key {name!r} is not a layer-name regex: quote it ('{name}')"
            )
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{stage}.per_layer: {name!r}: {value} is not in [0, 1)")
        try:
            re.compile(name)
        except re.error as e:
            raise ConfigError(f"{stage}.per_layer: {name!r} is not a valid regex ({e})") from None


def check_per_layer(stage: str, per_layer: dict[str, float], layers: dict[str, nn.Module]) -> None:
    """A ConfigError for a `per_layer` pattern that matches none of the chosen layers.

    Example:
        >>> check_per_layer("s", {"fc.*": 0.5}, {"fc1": nn.Linear(1, 1)})
    """
    for pattern in per_layer:
        if not any(re.fullmatch(pattern, name) for name in layers):
            raise ConfigError(
                f"{stage}.per_layer: {pattern!r} matches none of the {len(layers)} chosen "
                f"layers ({sample_of(layers)}): fix the pattern or its layers/exclude"
            )


def _ratio(layer: str, config: UnstructuredConfig) -> float:
    for pattern, ratio in config.per_layer.items():
        if re.fullmatch(pattern, layer):
            return ratio
    return config.sparsity


def current_weights(layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    """A copy of every layer's weight as it is now (the values `mode: freeze` holds)."""
    return {n: m.get_parameter("weight").detach().clone() for n, m in layers.items()}


def hold_(
    model: nn.Module, keep: dict[str, Tensor], freeze_at: dict[str, Tensor] | None = None
) -> None:
    """Hold every layer's weight where `keep` is False: at zero, or frozen at `freeze_at`.

    `freeze_at` maps a layer to the values its held entries keep (its current weight for
    `mode: freeze`, its weight at the start of a schedule for `freeze_initial`); None zeroes
    them. An entry that an earlier mask held stays held, at the value it was held at, so
    stages and rounds only ever add to what is pruned or frozen.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
        >>> _ = nn.init.ones_(net[0].weight)
        >>> hold_(net, {"0": torch.tensor([[True, False], [True, True]])})
        >>> net[0].weight.tolist()
        [[1.0, 0.0], [1.0, 1.0]]
        >>> frozen = {"0": torch.full((2, 2), 5.0)}
        >>> hold_(net, {"0": torch.tensor([[False, True], [True, True]])}, frozen)
        >>> net[0].weight.tolist()
        [[5.0, 0.0], [1.0, 1.0]]
    """
    masks = masks_of(model)
    for name, new in keep.items():
        weight = f"{name}.weight"
        fill = None if freeze_at is None else freeze_at[name].clone()
        old = masks.get(weight)
        if old is not None:
            new = new & old.keep
            if fill is not None or old.fill is not None:
                zeros = torch.zeros_like(model.get_parameter(weight))
                free = fill if fill is not None else zeros
                held = old.fill if old.fill is not None else zeros
                fill = torch.where(old.keep, free.to(zeros.device), held)
        set_mask(model, weight, new, fill)
