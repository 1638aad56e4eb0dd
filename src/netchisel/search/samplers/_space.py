"""One Optuna distribution as an axis: its distinct values, and the unit interval [0, 1].

netchisel's samplers recombine values of any kind (categorical, int with step or log, float
with log) with the same few operations, so each distribution gets two views:

- *cells*: a distribution with finitely many values (a categorical, an int, a float with a
  step) has `cells(d)` of them, numbered 0..cells-1 (`value_at`, `index_of`); a continuous
  float has 0 cells;
- *unit*: `decode(d, u)` maps u in [0, 1] to a valid value, uniformly over the cells, or over
  the range (in log space when `log=True`); `encode` is its inverse. Differential evolution,
  annealing steps and REINFORCE's bins work in this view; `decode` clips, so any number is a
  valid value and a categorical is recombined by its index, rounded down.

Optuna's own `_SearchSpaceTransform` one-hot encodes categoricals (a vector per parameter);
these samplers want one number per parameter, hence this small file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def cells(dist: BaseDistribution) -> int:
    """The number of distinct values of `dist`, 0 for a continuous float.

    Example:
        >>> cells(IntDistribution(3, 7, step=2)), cells(FloatDistribution(0.0, 1.0))
        (3, 0)
    """
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices)
    if isinstance(dist, IntDistribution):
        return (dist.high - dist.low) // dist.step + 1
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        return round((dist.high - dist.low) / dist.step) + 1
    return 0


def value_at(dist: BaseDistribution, index: int) -> Any:
    """The `index`-th value of a distribution with cells (clipped to the last one)."""
    i = min(max(index, 0), cells(dist) - 1)
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[i]
    if isinstance(dist, IntDistribution):
        return dist.low + i * dist.step
    assert isinstance(dist, FloatDistribution) and dist.step is not None
    return min(dist.low + i * dist.step, dist.high)


def index_of(dist: BaseDistribution, value: Any) -> int:
    """The cell of `value` in a distribution with cells (`value` must fit it)."""
    if isinstance(dist, CategoricalDistribution):
        return int(dist.to_internal_repr(value))
    assert isinstance(dist, IntDistribution | FloatDistribution) and dist.step is not None
    return round((float(value) - dist.low) / dist.step)


def _log_range(dist: IntDistribution | FloatDistribution) -> tuple[float, float]:
    # An int in log scale owns [v - 0.5, v + 0.5], as in Optuna's own samplers.
    pad = 0.5 if isinstance(dist, IntDistribution) else 0.0
    return math.log(dist.low - pad), math.log(dist.high + pad)


def _by_index(dist: BaseDistribution) -> int:
    # The unit view of a distribution with cells gives each cell an equal share, except an int
    # in log scale, whose cells get shares growing with the log of the value.
    return 0 if isinstance(dist, IntDistribution) and dist.log else cells(dist)


def decode(dist: BaseDistribution, u: float) -> Any:
    """The value at position `u` of the unit interval (clipped to [0, 1]).

    Example:
        >>> decode(CategoricalDistribution(["a", "b", "c"]), 0.5)
        'b'
        >>> decode(IntDistribution(1, 1000, log=True), 0.5)
        22
    """
    u = min(max(float(u), 0.0), 1.0)
    n = _by_index(dist)
    if n:
        return value_at(dist, min(int(u * n), n - 1))
    assert isinstance(dist, IntDistribution | FloatDistribution)
    if dist.log:
        lo, hi = _log_range(dist)
        x = math.exp(lo + u * (hi - lo))
    else:
        x = dist.low + u * (dist.high - dist.low)
    if isinstance(dist, IntDistribution):
        return min(max(round(x), dist.low), dist.high)
    return min(max(x, dist.low), dist.high)


def encode(dist: BaseDistribution, value: Any) -> float:
    """The position in [0, 1] of `value` (which must fit `dist`): `decode`'s inverse.

    Example:
        >>> encode(CategoricalDistribution(["a", "b", "c"]), "c")
        0.8333333333333334
    """
    n = _by_index(dist)
    if n:
        return (index_of(dist, value) + 0.5) / n
    assert isinstance(dist, IntDistribution | FloatDistribution)
    if dist.log:
        lo, hi = _log_range(dist)
        return (math.log(float(value)) - lo) / (hi - lo) if hi > lo else 0.5
    span = dist.high - dist.low
    return (float(value) - dist.low) / span if span > 0 else 0.5


def fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of `dist`'s values.

    Example:
        >>> fits(IntDistribution(3, 7, step=2), 4), fits(CategoricalDistribution([None, 2]), None)
        (False, True)
    """
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def random_value(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    """A value drawn uniformly (log-uniformly for `log=True`)."""
    return decode(dist, rng.random())


def other_value(dist: BaseDistribution, value: Any, rng: np.random.Generator) -> Any:
    """A random value of `dist` different from `value` (the same if `dist` has one value)."""
    n = cells(dist)
    if n == 0:
        return random_value(dist, rng)  # continuous: different almost surely
    if n == 1 or not fits(dist, value):
        return random_value(dist, rng)
    j = int(rng.integers(n - 1))
    return value_at(dist, j + (j >= index_of(dist, value)))
