"""Objectives: which measured numbers a search optimises, in which direction, under which limits.

Metrics come from `Task.evaluate` on the validation split (accuracy, perplexity, ...) and from
`Profile.summary()` (params, flops, macs, expected_macs per sample, bytes_on_disk, latency_ms,
energy_uj, ...). Three modes:

- `pareto`: every objective is optimised; Optuna keeps the Pareto front.
- `scalarized`: one value, the weighted sum `sum(weight * metric)`, maximised.
- `mnasnet`: one value, the MnasNet reward `ACC * (LAT / T) ** w` with `w = alpha` when
  `LAT <= T` and `beta` otherwise (Tan et al. 2019: alpha = beta = -0.07 is a soft limit,
  alpha = 0, beta = -1 a hard one), maximised.

Hard limits (`constraints`) follow Optuna's convention: a violation value <= 0 is feasible.

Domination (`dominates`) compares ranges, not points: latency is measured with noise, so a
candidate is faster than another only when its p10-p90 range lies wholly below the other's;
overlapping ranges are ties. Every other objective is exact (a range of one point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from netchisel.core.errors import ConfigError

Direction = Literal["maximize", "minimize"]

# Directions of the metrics netchisel measures; any other metric needs an explicit direction.
KNOWN_DIRECTIONS: dict[str, Direction] = {
    "accuracy": "maximize",
    "top5": "maximize",
    "cosine": "maximize",
    "topk_agreement": "maximize",
    "loss": "minimize",
    "perplexity": "minimize",
    "bits_per_token": "minimize",
    "params": "minimize",
    "params_nonzero": "minimize",
    "flops": "minimize",
    "macs": "minimize",
    "expected_macs": "minimize",
    "bytes_in_memory": "minimize",
    "bytes_on_disk": "minimize",
    "peak_memory_bytes": "minimize",
    "energy_uj": "minimize",
    "latency_ms": "minimize",
}

MODES = ("pareto", "scalarized", "mnasnet")

# Metrics measured with a spread: the keys of their p10 and p90 in a trial's metrics.
SPREADS: dict[str, tuple[str, str]] = {"latency_ms": ("latency_p10_ms", "latency_p90_ms")}

# One objective of one trial as (low, high), oriented so that higher is better.
Range = tuple[float, float]

DOMINATION_RULE = (
    "Domination: a candidate is faster only when its whole p10-p90 latency range lies below"
    " the other's; overlapping ranges are ties, so both can stay on the front. Other"
    " objectives compare exactly."
)


@dataclass(frozen=True)
class Target:
    """One optimised metric and its direction."""

    metric: str
    direction: Direction


@dataclass(frozen=True)
class Limit:
    """A hard limit on a metric: `min <= metric <= max`."""

    metric: str
    min: float | None = None
    max: float | None = None

    def violation(self, metrics: Mapping[str, float]) -> float:
        """How far outside the limit (<= 0: inside), in the metric's units."""
        value = metrics[self.metric]
        over = value - self.max if self.max is not None else float("-inf")
        under = self.min - value if self.min is not None else float("-inf")
        return max(over, under)


@dataclass(frozen=True)
class MnasReward:
    """MnasNet's latency-aware reward `metric * (latency / target) ** w`."""

    metric: str = "accuracy"
    latency: str = "latency_ms"
    target: float = 1.0
    alpha: float = -0.07
    beta: float = -0.07

    def __call__(self, metrics: Mapping[str, float]) -> float:
        ratio = metrics[self.latency] / self.target
        return float(metrics[self.metric] * ratio ** (self.alpha if ratio <= 1 else self.beta))


@dataclass(frozen=True)
class Objectives:
    """What a search optimises.

    Example:
        >>> o = parse_objectives({"objectives": ["accuracy", "latency_ms"],
        ...                       "constraints": {"latency_ms": {"max": 2.0}}})
        >>> o.directions(), o.values({"accuracy": 97.0, "latency_ms": 3.0})
        (['maximize', 'minimize'], [97.0, 3.0])
        >>> o.violations({"accuracy": 97.0, "latency_ms": 3.0})
        [1.0]
    """

    targets: tuple[Target, ...]
    limits: tuple[Limit, ...] = ()
    mode: str = "pareto"
    weights: Mapping[str, float] = field(default_factory=dict)
    reward: MnasReward | None = None

    def directions(self) -> list[Direction]:
        """The Optuna study directions."""
        if self.mode == "pareto":
            return [t.direction for t in self.targets]
        return ["maximize"]

    def names(self) -> list[str]:
        """A label per objective value."""
        if self.mode == "pareto":
            return [t.metric for t in self.targets]
        return ["reward" if self.mode == "mnasnet" else "score"]

    def metrics(self) -> list[str]:
        """Every metric the objectives and limits read."""
        used = [t.metric for t in self.targets] + [lim.metric for lim in self.limits]
        if self.reward is not None:
            used += [self.reward.metric, self.reward.latency]
        return list(dict.fromkeys(used))

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective values of one trial's metrics."""
        self.check_available(metrics)
        if self.mode == "pareto":
            return [float(metrics[t.metric]) for t in self.targets]
        if self.mode == "mnasnet":
            assert self.reward is not None
            return [float(self.reward(metrics))]
        return [float(sum(w * metrics[m] for m, w in self.weights.items()))]

    def violations(self, metrics: Mapping[str, float]) -> list[float]:
        """One value per limit; all <= 0 means feasible (Optuna's constraints convention)."""
        return [float(lim.violation(metrics)) for lim in self.limits]

    def check_available(self, metrics: Mapping[str, Any]) -> None:
        """A clear error when an objective names a metric that was not measured."""
        missing = [m for m in self.metrics() if metrics.get(m) is None]
        if missing:
            known = ", ".join(sorted(k for k, v in metrics.items() if v is not None))
            raise ConfigError(f"objective metric {missing[0]!r} was not measured (have: {known})")


def parse_objectives(data: Mapping[str, Any]) -> Objectives:
    """Objectives from a search spec's `objectives`, `constraints`, `mode`, `weights`, `reward`.

    `objectives` is a list of metric names (known directions) or `{metric: direction}`
    mappings; `constraints` maps a metric to `{min: a, max: b}`.

    Example:
        >>> parse_objectives({"objectives": [{"flops_per_joule": "maximize"}]}).targets[0]
        Target(metric='flops_per_joule', direction='maximize')
    """
    mode = data.get("mode", "pareto")
    if mode not in MODES:
        raise ConfigError(f"search.mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    raw = data.get("objectives", ["accuracy"])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("search.objectives: expected a non-empty list of metrics")
    targets = tuple(_target(item) for item in raw)
    limits = tuple(_limit(m, v) for m, v in _mapping("constraints", data).items())
    weights = {
        str(k): _number(f"search.weights.{k}", v) for k, v in _mapping("weights", data).items()
    }
    reward = None
    if mode == "scalarized" and not weights:
        raise ConfigError("search.weights: scalarized mode needs {metric: weight, ...}")
    if mode != "scalarized" and weights:
        raise ConfigError(f"search.weights: only for mode scalarized, not {mode!r}")
    if mode == "mnasnet":
        reward = _reward(_mapping("reward", data))
    elif "reward" in data:
        raise ConfigError(f"search.reward: only for mode mnasnet, not {mode!r}")
    return Objectives(targets, limits, mode, weights, reward)


def _target(item: Any) -> Target:
    if isinstance(item, str):
        if item not in KNOWN_DIRECTIONS:
            raise ConfigError(
                f"search.objectives: {item!r} has no known direction; write "
                f"{{{item}: maximize}} or {{{item}: minimize}}"
            )
        return Target(item, KNOWN_DIRECTIONS[item])
    if isinstance(item, Mapping) and len(item) == 1:
        ((metric, direction),) = item.items()
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"search.objectives.{metric}: direction must be maximize or minimize, "
                f"got {direction!r}"
            )
        return Target(str(metric), direction)
    raise ConfigError(
        f"search.objectives: expected a metric name or {{metric: direction}}, got {item!r}"
    )


def _limit(metric: Any, value: Any) -> Limit:
    where = f"search.constraints.{metric}"
    if not isinstance(value, Mapping) or not value or set(value) - {"min", "max"}:
        raise ConfigError(f"{where}: expected {{max: number}} and/or {{min: number}}")
    low = _number(f"{where}.min", value["min"]) if "min" in value else None
    high = _number(f"{where}.max", value["max"]) if "max" in value else None
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}: min {low} is above max {high}")
    return Limit(str(metric), low, high)


def _reward(value: Mapping[str, Any]) -> MnasReward:
    known = ("metric", "latency", "target", "alpha", "beta")
    for key in value:
        if key not in known:
            raise ConfigError(f"search.reward: unknown key {key!r} (known: {', '.join(known)})")
    if "target" not in value:
        raise ConfigError("search.reward.target: mnasnet mode needs the target latency T")
    target = _number("search.reward.target", value["target"])
    if target <= 0:
        raise ConfigError(f"search.reward.target: must be > 0, got {target}")
    numbers = {k: _number(f"search.reward.{k}", value[k]) for k in ("alpha", "beta") if k in value}
    names = {k: str(value[k]) for k in ("metric", "latency") if k in value}
    return MnasReward(target=target, **names, **numbers)  # type: ignore[arg-type]


def _mapping(key: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"search.{key}: expected a mapping, got {value!r}")
    return value


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def objective_ranges(
    values: Sequence[float],
    directions: Sequence[str],
    names: Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> list[Range]:
    """Each objective value as a range oriented so that higher is better: `(v, v)` for an
    exact value, the measured p10-p90 for a metric in `SPREADS` when `metrics` has them.

    Example:
        >>> objective_ranges([97.0, 1.2], ["maximize", "minimize"], ["accuracy", "latency_ms"],
        ...                  {"latency_p10_ms": 1.0, "latency_p90_ms": 1.5})
        [(97.0, 97.0), (-1.5, -1.0)]
    """
    ranges = []
    for i, (value, direction) in enumerate(zip(values, directions, strict=True)):
        low, high = float(value), float(value)
        keys = SPREADS.get(names[i]) if names is not None else None
        if keys is not None and metrics is not None and all(k in metrics for k in keys):
            low, high = min(low, metrics[keys[0]]), max(high, metrics[keys[1]])
        ranges.append((low, high) if direction == "maximize" else (-high, -low))
    return ranges


def dominates(a: Sequence[Range], b: Sequence[Range]) -> bool:
    """Whether `a` is no worse than `b` on every objective and better on one. On an objective
    `a` is better only when its whole range lies above `b`'s; overlapping ranges are ties.

    Example:
        >>> dominates([(97.0, 97.0), (-1.5, -1.0)], [(96.0, 96.0), (-1.4, -1.1)])  # latency tie
        True
        >>> dominates([(97.0, 97.0), (-1.5, -1.0)], [(97.0, 97.0), (-1.4, -1.1)])  # all ties
        False
    """
    better = False
    for (a_low, a_high), (b_low, b_high) in zip(a, b, strict=True):
        if a_high < b_low:
            return False
        better = better or a_low > b_high
    return better


def non_dominated(ranges: Sequence[Sequence[Range]]) -> list[int]:
    """The indices of the entries no other entry dominates (the Pareto front), in order.

    Exact objectives compare as points and ranges only tie, never beat one another when they
    overlap, so the relation has no cycle and the front is never empty.

    Example:
        >>> fast, slow = (-1.0, -0.9), (-1.2, -1.1)  # latency p10-p90, negated
        >>> non_dominated([[(97.0, 97.0), fast], [(98.0, 98.0), (-1.05, -0.95)],
        ...                [(96.0, 96.0), slow]])
        [1]
        >>> non_dominated([[(97.0, 97.0), fast], [(96.0, 96.0), (-0.6, -0.5)]])
        [0, 1]
    """
    return [
        i
        for i, entry in enumerate(ranges)
        if not any(dominates(other, entry) for j, other in enumerate(ranges) if j != i)
    ]
