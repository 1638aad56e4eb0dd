"""Plans: which channels, heads or blocks each unit keeps (pure functions of the scores).

A ratio per unit (local, `per_layer` overriding it by regex) or one global ranking of
mean-normalised scores with a floor per unit; or, for a MAC target, the smallest ratio whose
plan meets it, found by bisection with each candidate plan measured once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import Tensor

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.prune.select import keep_global
from netchisel.prune.structured.config import STAGE, StructuredConfig
from netchisel.prune.structured.units import Unit

SEARCH_TOLERANCE = 1e-4

Plan = dict[str, Tensor]  # unit name -> keep mask over its channels / heads / the block


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """How many of `size` channels (or heads) a local ratio keeps: at least `ratio` removed.

    floor(size * (1 - ratio)), at least 1, then rounded up to a multiple of `round_to` (never
    above `size`). Torch-Pruning's MetaPruner keeps the same count.

    Example:
        >>> kept_count(64, 0.3), kept_count(64, 0.3, round_to=8), kept_count(3, 0.9)
        (44, 48, 1)
    """
    keep = max(1, math.floor(size * (1.0 - ratio) + 1e-9))
    return min(size, math.ceil(keep / round_to) * round_to)


def _top(scores: Tensor, k: int) -> Tensor:
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return keep


def _ratio_for(unit: Unit, ratio: float, config: StructuredConfig) -> float:
    for pattern, value in config.per_layer.items():
        if any(re.fullmatch(pattern, m) for m in unit.members):
            return value
    return ratio


def choose_plan(units: list[Unit], ratio: float, config: StructuredConfig) -> Plan:
    """The keep mask of every unit at `ratio` (scope, per_layer, min_keep, round_to applied;
    no coupled layer left empty: `nonempty`)."""
    return nonempty(units, _choose_plan(units, ratio, config))


def _choose_plan(units: list[Unit], ratio: float, config: StructuredConfig) -> Plan:
    if config.granularity == "blocks":
        scores = torch.cat([u.scores for u in units])
        keep = _top(scores, len(units) - round(ratio * len(units)))
        return {u.name: keep[i : i + 1] for i, u in enumerate(units)}
    round_to = config.round_to if config.granularity == "channels" else 1
    if config.scope == "local":
        return {
            u.name: _top(
                u.scores, kept_count(len(u.scores), _ratio_for(u, ratio, config), round_to)
            )
            for u in units
        }
    # Raw sums grow with a layer's fan-in, so each group is ranked by its own mean first.
    normalised = {u.name: u.scores / u.scores.mean().clamp_min(1e-12) for u in units}
    total = sum(len(u.scores) for u in units)
    floor = sum(min(len(u.scores), math.ceil(config.min_keep * len(u.scores))) for u in units)
    if total - round(ratio * total) < floor:
        raise ConfigError(
            f"{STAGE}: ratio {ratio} with min_keep {config.min_keep} is impossible: every group "
            f"keeping min_keep already keeps {floor} of {total}; lower min_keep or ratio"
        )
    kept = keep_global(normalised, ratio, config.min_keep)
    return {
        u.name: _top(normalised[u.name], kept_count(int(kept[u.name].sum()), 0.0, round_to))
        if round_to > 1
        else kept[u.name]
        for u in units
    }


def nonempty(units: list[Unit], plan: Plan) -> Plan:
    """`plan` with, in every unit, at least the best channel of each of its `covers` kept
    (the whole of some coupled layer: dropping all of it would leave that layer empty)."""
    out = dict(plan)
    for unit in units:
        keep = out[unit.name]
        for cover in unit.covers:
            index = torch.tensor(cover)
            if not bool(keep[index].any()):
                keep = keep.clone()
                keep[index[unit.scores[index].argmax()]] = True
        out[unit.name] = keep
    return out


def max_ratio(units: list[Unit], config: StructuredConfig) -> float:
    """The largest ratio the scope allows (what the MAC search may go up to)."""
    if config.granularity == "blocks" or config.scope == "local":
        return 1.0 - 1e-9
    total = sum(len(u.scores) for u in units)
    floor = sum(min(len(u.scores), math.ceil(config.min_keep * len(u.scores))) for u in units)
    return (total - floor) / total


def search_ratio(
    units: list[Unit],
    config: StructuredConfig,
    macs_of: Callable[[Plan], int],
    base: int,
    ctx: Context,
) -> tuple[float, int]:
    """The smallest ratio whose plan has MACs <= target * base, by bisection over the ratio.

    MACs never grow with the ratio, and the plan is piecewise constant in it, so only ratios
    that give a new plan are measured. Returns the ratio and the number measured.
    """
    assert config.target_macs_ratio is not None
    limit = config.target_macs_ratio * base
    if base <= limit:
        return 0.0, 0
    cache: dict[tuple[tuple[str, tuple[bool, ...]], ...], int] = {}

    def measure(ratio: float) -> int:
        plan = choose_plan(units, ratio, config)
        key = tuple((n, tuple(bool(b) for b in k.tolist())) for n, k in sorted(plan.items()))
        if key not in cache:
            cache[key] = macs_of(plan)
        return cache[key]

    lo, hi = 0.0, max_ratio(units, config)
    steps = 1 + math.ceil(math.log2(hi / SEARCH_TOLERANCE))
    with ctx.progress("searching the ratio for the MAC target", total=steps) as advance:
        reached = measure(hi)
        advance(1)
        if reached > limit:
            raise ConfigError(
                f"{STAGE}.target_macs_ratio: {config.target_macs_ratio} is out of reach: pruning "
                f"as far as allowed leaves {reached / base:.3f} of the MACs; choose more layers, "
                "lower min_keep or raise the target"
            )
        while hi - lo > SEARCH_TOLERANCE:
            mid = (lo + hi) / 2
            if measure(mid) <= limit:
                hi = mid
            else:
                lo = mid
            advance(1)
    return hi, len(cache)
