"""Search strategies by name: Optuna's samplers and netchisel's, built the same way.

`make_sampler("ga", seed=0, options={"population_size": 16})` returns an
`optuna.samplers.BaseSampler` for any Optuna study. Optuna's own samplers are wrapped in
`TrialSeededSampler` (a fresh instance per trial, seeded from the seed and the trial number),
so that every strategy, Optuna's included, resumes a killed search and shares a study between
workers exactly as one uninterrupted process would. See docs/search_strategies.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optuna

from netchisel.core.errors import ConfigError
from netchisel.search.samplers import (
    DifferentialEvolutionSampler,
    GeneticAnnealingSampler,
    GeneticSampler,
    RegularizedEvolutionSampler,
    ReinforceSampler,
    TrialSeededSampler,
)

_OPTUNA: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "grid": optuna.samplers.GridSampler,
    "random": optuna.samplers.RandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
_OURS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "ga": GeneticSampler,
    "de": DifferentialEvolutionSampler,
    "anneal": GeneticAnnealingSampler,
    "evolution": RegularizedEvolutionSampler,
    "reinforce": ReinforceSampler,
}
STRATEGIES: tuple[str, ...] = (*_OPTUNA, *_OURS)
"""Every strategy name `make_sampler` knows: Optuna's first, then netchisel's."""


def make_sampler(
    name: str,
    *,
    seed: int,
    grid: dict[str, list[Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """The sampler of strategy `name`, reproducible from `seed`.

    Args:
        name: one of `STRATEGIES`.
        seed: the search's seed (>= 0).
        grid: for `grid` only: parameter name -> the values to try.
        options: keyword arguments of the sampler's class (e.g. `population_size`).

    Example:
        >>> make_sampler("evolution", seed=0, options={"sample_size": 3})
        <netchisel.search.samplers.evolution.RegularizedEvolutionSampler object at ...>
        >>> make_sampler("ga", seed=0, options={"populaton": 8})
        Traceback (most recent call last):
        netchisel.core.errors.ConfigError: strategy 'ga': unknown option 'populaton' (known: ...
    """
    cls = _OPTUNA.get(name) or _OURS.get(name)
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    kwargs = dict(options or {})
    known = [p for p in inspect.signature(cls).parameters if p not in ("seed", "search_space")]
    for key in kwargs:
        if key not in known:
            raise ConfigError(
                f"strategy {name!r}: unknown option {key!r} (known: {', '.join(known) or 'none'})"
            )
    if name == "grid":
        if not grid:
            raise ConfigError("strategy 'grid' needs a grid: the values to try per parameter")
        kwargs["search_space"] = grid
    try:
        sampler = cls(seed=seed, **kwargs)  # checks the options now, not at the first trial
    except (ValueError, TypeError) as e:
        raise ConfigError(f"strategy {name!r}: {e}") from e
    # The grid's randomness is its order, shuffled once from the seed: one instance (the same
    # order in every worker and on resume) must map every trial's grid id to a point. Seeded
    # per trial, each trial shuffled the grid its own way and points repeated.
    if name in _OURS or name == "grid":
        return sampler
    return TrialSeededSampler(lambda s: cls(seed=s, **kwargs), seed=seed)
