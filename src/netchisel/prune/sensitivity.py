"""`prune.sensitivity`: how much the task's metric drops when one layer alone is pruned.

For every chosen layer and every ratio of a sweep, `sensitivity` prunes that layer alone (the
lowest-scoring fraction of its weights, chosen exactly as `prune.unstructured` chooses them
with local scope), evaluates the task's primary metric, and puts the weight back bit for bit.
The curves show which layers tolerate pruning (Han et al. 2015, fig. 6; Li et al. 2017 do the
same per conv layer) and are the data for a ratio per layer: `allocate` picks, for a target
overall sparsity, the per-layer ratios whose summed predicted metric loss is least. Each curve
is interpolated linearly between the swept ratios and replaced by its lower convex hull; pieces
are then taken cheapest loss per pruned weight first. That is the exact optimum of the
prediction when the curves are convex (the usual flat-then-steep shape) and a lower bound
otherwise. The prediction assumes the losses of layers add up; the benchmark measures how well
it holds (`bench/prune_global_local.py`).

The stage records the curves (the report draws them) and, given `target_sparsity`, prunes to
the chosen ratios through `prune.unstructured`, so selection and masks are that stage's own.
Written by hand: Distiller had a sensitivity sweep but is archived; NNI's sensitivity pruner is
tied to its own compressor classes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.modules import nothing_chosen, select_modules
from netchisel.core.registry import register
from netchisel.core.state import probed
from netchisel.core.task import Task
from netchisel.prune.importance import CRITERIA
from netchisel.prune.unstructured import (
    PRUNABLE,
    UnstructuredConfig,
    prune_unstructured,
    score_layers,
    select_keep,
)

DEFAULT_RATIOS = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass(frozen=True)
class SensitivityResult:
    """The task's primary metric after pruning each layer alone to each ratio.

    - `ratios`: the sweep, always starting at 0.0 (nothing pruned).
    - `curves`: layer -> the metric at each ratio; `curves[layer][0]` is the unpruned metric.
    - `sizes`: layer -> its number of weights.

    Example:
        >>> r = SensitivityResult("accuracy", True, (0.0, 0.5), {"fc": (90.0, 85.0)}, {"fc": 8})
        >>> r.baseline, r.losses("fc")
        (90.0, [0.0, 5.0])
    """

    metric: str
    higher_is_better: bool
    ratios: tuple[float, ...]
    curves: dict[str, tuple[float, ...]]
    sizes: dict[str, int]

    @property
    def baseline(self) -> float:
        """The metric of the unpruned model."""
        return next(iter(self.curves.values()))[0]

    def losses(self, layer: str) -> list[float]:
        """Metric lost at each ratio: positive is worse, whichever way the metric points."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (self.baseline - value) for value in self.curves[layer]]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports and JSON."""
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "baseline": self.baseline,
            "ratios": list(self.ratios),
            "curves": {name: list(curve) for name, curve in self.curves.items()},
            "sizes": dict(self.sizes),
        }


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """The sweep's ratios, sorted, without repeats and starting at 0; a ConfigError naming a
    ratio outside [0, 1).

    Example:
        >>> check_ratios([0.9, 0.5, 0.5])
        (0.0, 0.5, 0.9)
    """
    for ratio in ratios:
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(
                f"{STAGE}: ratio {ratio} is not in [0, 1) (the fraction of one layer's weights "
                "pruned)"
            )
    swept = tuple(sorted({0.0, *(float(r) for r in ratios)}))
    if len(swept) < 2:
        raise ConfigError(
            f"{STAGE}: ratios {list(ratios)} has no ratio above 0: give some, e.g. [0.5, 0.9]"
        )
    return swept


def sensitivity(
    model: nn.Module,
    task: Task,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    layers: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    importance: str = "l1",
    split: str | None = None,
    calibration_samples: int = 128,
    seed: int = 0,
) -> SensitivityResult:
    """Prune each chosen layer alone to each ratio and measure the task's primary metric.

    The layers are Linear/Conv modules matching `layers` (regexes, full match; default all)
    and not `exclude`. A ratio prunes the lowest-scoring fraction of one layer's weights under
    `importance` (scores are measured once, on the unpruned model). Evaluation is on `split`
    (default: the task's evaluation split). The model is left bit-identical, masks included.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> x = torch.eye(4)
        >>> task = classification_task({"val": TensorDataset(x, torch.arange(4))})
        >>> net = nn.Sequential(nn.Linear(4, 4, bias=False))
        >>> _ = nn.init.eye_(net[0].weight)
        >>> sensitivity(net, task, [0.25, 0.5]).curves
        {'0': (100.0, 100.0, 100.0)}
    """
    if importance not in CRITERIA:
        raise ConfigError(f"{STAGE}: unknown importance {importance!r} ({', '.join(CRITERIA)})")
    swept = check_ratios(ratios)
    chosen = analysed_layers(model, layers, exclude)
    ctx = Context(task, quiet=True, seed=seed)
    return _sweep(model, task, chosen, swept, importance, split, calibration_samples, ctx)


def analysed_layers(
    model: nn.Module, layers: tuple[str, ...] | None, exclude: tuple[str, ...]
) -> dict[str, nn.Module]:
    """The Linear/Conv layers named by the regexes; one that matches nothing is an error."""
    try:
        chosen = select_modules(model, PRUNABLE, layers, exclude)
    except ConfigError as e:
        raise ConfigError(f"{STAGE}: {e}") from None
    if not chosen:
        raise nothing_chosen(model, PRUNABLE, STAGE, "Linear or Conv", "analyse")
    return chosen


def _sweep(
    model: nn.Module,
    task: Task,
    layers: dict[str, nn.Module],
    ratios: tuple[float, ...],
    importance: str,
    split: str | None,
    calibration_samples: int,
    ctx: Context,
) -> SensitivityResult:
    scores = score_layers(model, layers, importance, ctx, calibration_samples)
    metric = task.primary_metric

    def measure() -> float:
        values = task.evaluate(model, split)
        if metric not in values:
            raise ConfigError(
                f"{STAGE}: the task's metrics {sorted(values)} lack its primary metric {metric!r}"
            )
        return values[metric]

    baseline = measure()
    curves: dict[str, tuple[float, ...]] = {}
    with ctx.progress(f"{STAGE}: sweeping {len(layers)} layers", len(layers)) as advance:
        for name, layer in layers.items():
            weight = layer.get_parameter("weight")
            by_count: dict[int, float] = {0: baseline}  # ratios that prune the same count agree
            curve = [baseline]
            for ratio in ratios[1:]:
                keep = select_keep({name: scores[name]}, UnstructuredConfig(sparsity=ratio))
                count = int((~keep[name]).sum())
                if count not in by_count:
                    with probed(layer):  # the layer is put back after measuring
                        with torch.no_grad():
                            weight.copy_(torch.where(keep[name], weight, torch.zeros_like(weight)))
                        by_count[count] = measure()
                curve.append(by_count[count])
            curves[name] = tuple(curve)
            advance(1)
    sizes = {name: layer.get_parameter("weight").numel() for name, layer in layers.items()}
    return SensitivityResult(metric, task.higher_is_better, ratios, curves, sizes)


# -- choosing ratios ------------------------------------------------------------------------


def allocate(result: SensitivityResult, target: float) -> dict[str, float]:
    """Per-layer ratios pruning exactly `round(target * total)` weights, least predicted loss.

    A layer's loss at `k` pruned weights is its curve interpolated linearly between the swept
    ratios (at `round(ratio * size)` weights); no layer goes past the largest ratio swept, and
    none is pruned whole.
    Pieces of the curves' lower convex hulls are taken cheapest loss per weight first (ties:
    the layer listed first), so the total is exact and the prediction is minimal whenever the
    curves are convex.

    Example:
        >>> r = SensitivityResult(
        ...     "accuracy", True, (0.0, 0.5), {"a": (90.0, 89.0), "b": (90.0, 50.0)},
        ...     {"a": 100, "b": 100},
        ... )
        >>> allocate(r, 0.3)
        {'a': 0.5, 'b': 0.1}
    """
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"{STAGE}: target_sparsity {target} is not in [0, 1)")
    total = sum(result.sizes.values())
    budget = round(target * total)
    pieces: list[tuple[float, int, int, int, str]] = []  # slope, layer index, start, end, layer
    reach = 0
    for index, (name, size) in enumerate(result.sizes.items()):
        # A tiny layer's largest ratio can round to all of it: that point is never chosen.
        hull = _lower_hull([(c, loss) for c, loss in _points(result, name) if c < size])
        reach += hull[-1][0]
        slope = -float("inf")
        for (c0, l0), (c1, l1) in itertools.pairwise(hull):
            slope = max(slope, (l1 - l0) / (c1 - c0))  # rises along a hull; max() guards rounding
            pieces.append((slope, index, c0, c1, name))
    if budget > reach:
        raise ConfigError(
            f"{STAGE}: target_sparsity {target} needs {budget} of {total} weights pruned, but "
            f"pruning every layer to the largest ratio swept ({result.ratios[-1]}) reaches "
            f"{reach}: add larger ratios"
        )
    pruned = dict.fromkeys(result.sizes, 0)
    left = budget
    for _, _, c0, c1, name in sorted(pieces, key=lambda p: (p[0], p[1], p[2])):
        if left == 0:
            break
        take = min(left, c1 - c0)
        pruned[name] += take
        left -= take
    return {name: pruned[name] / size for name, size in result.sizes.items()}


def predicted_loss(result: SensitivityResult, ratios: dict[str, float]) -> float:
    """The metric lost by pruning every layer to its ratio, if the layers' losses add up.

    Each curve is interpolated linearly in pruned weights between the counts the sweep pruned.

    Example:
        >>> r = SensitivityResult("accuracy", True, (0.0, 0.5), {"a": (90.0, 80.0)}, {"a": 8})
        >>> predicted_loss(r, {"a": 0.25})
        5.0
    """
    total = 0.0
    for name, ratio in ratios.items():
        points = _points(result, name)
        count = ratio * result.sizes[name]
        for (c0, l0), (c1, l1) in itertools.pairwise(points):
            if count <= c1:
                total += l0 + (l1 - l0) * (count - c0) / (c1 - c0)
                break
        else:
            total += points[-1][1]
    return total


def _points(result: SensitivityResult, layer: str) -> list[tuple[int, float]]:
    """(weights pruned, loss) of a layer's curve: ratios that prune the same count are one."""
    size = result.sizes[layer]
    points: dict[int, float] = {}
    for ratio, loss in zip(result.ratios, result.losses(layer), strict=True):
        points.setdefault(round(ratio * size), loss)
    return sorted(points.items())


def _lower_hull(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Andrew's monotone chain, lower half: points sorted by x, collinear middles dropped."""
    hull: list[tuple[int, float]] = []
    for p in points:
        while len(hull) >= 2:
            (ox, oy), (ax, ay) = hull[-2], hull[-1]
            if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


# -- the stage ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitivityConfig(StageConfig):
    """Which layers to sweep, over which ratios, and whether to prune to a target afterwards.

    - `ratios`: fractions of one layer's weights pruned in the sweep, each in [0, 1); 0 (the
      unpruned metric) is always added.
    - `importance`: which weights a ratio prunes: l1, l2, taylor, random or wanda, compared
      within the whole layer (as `prune.unstructured` with local scope).
    - `layers` / `exclude`: regexes (full match) over Linear/Conv names; default every one.
    - `split`: the split evaluated (default the task's evaluation split). Ratios chosen on the
      split you report are fitted to it: sweep on validation data.
    - `target_sparsity`: if set, prune exactly this fraction of the swept layers' weights, at
      the per-layer ratios with the least predicted metric loss (`allocate`), through
      `prune.unstructured`; None only records the curves and leaves the model as it was.
    - `mode`: for `target_sparsity`: "zero" or "freeze", as in `prune.unstructured`.
    - `calibration_samples`: training samples the taylor and wanda criteria look at.

    Example:
        >>> SensitivityConfig(target_sparsity=0.9).ratios[-1]
        0.98
    """

    NAME: ClassVar[str] = "prune.sensitivity"

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    importance: str = "l1"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    split: str | None = None
    target_sparsity: float | None = None
    mode: Literal["zero", "freeze"] = "zero"
    calibration_samples: int = 128

    def validate(self) -> None:
        swept = check_ratios(self.ratios)
        if self.importance not in CRITERIA:
            raise ConfigError(
                f"{STAGE}: unknown importance {self.importance!r} (known: {', '.join(CRITERIA)})"
            )
        target = self.target_sparsity
        if target is not None and not 0.0 <= target < 1.0:
            raise ConfigError(f"{STAGE}: target_sparsity {target} is not in [0, 1)")
        if target is not None and target > swept[-1]:
            raise ConfigError(
                f"{STAGE}: target_sparsity {target} is above the largest ratio swept "
                f"({swept[-1]}), so no choice of ratios reaches it: add larger ratios"
            )
        check_calibration_samples(STAGE, self.calibration_samples)


STAGE = SensitivityConfig.NAME


@register(SensitivityConfig)
def prune_sensitivity(model: nn.Module, config: SensitivityConfig, ctx: Context) -> nn.Module:
    """Sweep each layer's pruning ratio alone and record the metric curves; with
    `target_sparsity`, prune to the per-layer ratios with the least predicted metric loss.

    Records `sensitivity` (metric, baseline, ratios, curves, sizes, split, importance, and
    `chosen`: the ratio given to each layer); with a target also `predicted_loss` and
    `prune.unstructured`'s `sparsity` and `layer_sparsity`.
    """
    task = ctx.require_task(STAGE)
    layers = analysed_layers(model, config.layers, config.exclude)
    swept = check_ratios(config.ratios)
    result = _sweep(
        model,
        task,
        layers,
        swept,
        config.importance,
        config.split,
        config.calibration_samples,
        ctx,
    )
    record = {
        **result.to_dict(),
        "importance": config.importance,
        "split": config.split or task.eval_split,
    }
    if config.target_sparsity is None:
        ctx.record(sensitivity=record)
        return model
    chosen = allocate(result, config.target_sparsity)
    selection = UnstructuredConfig(
        sparsity=0.0,
        importance=config.importance,
        layers=config.layers,
        exclude=config.exclude,
        per_layer={re.escape(name): ratio for name, ratio in chosen.items()},
        calibration_samples=config.calibration_samples,
        mode=config.mode,
    )
    prune_unstructured(model, selection, ctx)
    ctx.record(
        sensitivity={**record, "chosen": chosen},
        target_sparsity=config.target_sparsity,
        predicted_loss=predicted_loss(result, chosen),
    )
    return model
