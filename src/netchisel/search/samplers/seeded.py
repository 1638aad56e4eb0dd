"""`TrialSeededSampler`: run one of Optuna's samplers as a fresh instance per trial.

Optuna's samplers keep their history in the storage, but draw from one random stream consumed
in call order (and GPSampler keeps a cache of fitted kernels). So a search resumed with a new
sampler of the same seed repeats the first trials' draws instead of continuing, and the draws
depend on which worker ran what. Wrapped here, each trial gets its own instance, seeded from
(seed, trial number): the proposal for trial n depends only on the seed, n and the history, as
with netchisel's own samplers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from netchisel.core.errors import ConfigError


class TrialSeededSampler(BaseSampler):
    """A sampler built by `make(seed)` afresh for every trial, with a per-trial seed.

    Args:
        make: builds the sampler from a seed, e.g. `lambda s: optuna.samplers.TPESampler(seed=s)`.
        seed: the search's seed; trial n's sampler gets a seed derived from (seed, n).

    Example:
        >>> import optuna
        >>> sampler = TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed=0)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
        >>> len(study.trials)
        3
    """

    def __init__(self, make: Callable[[int], BaseSampler], *, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self._make = make
        self._seed = secrets.randbits(63) if seed is None else seed
        self._running: dict[tuple[str, int], BaseSampler] = {}

    def sampler_for(self, study: Study, trial: FrozenTrial) -> BaseSampler:
        """The sampler instance of `trial`, built on first use."""
        key = (study.study_name, trial.number)
        if key not in self._running:
            seed = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            self._running[key] = self._make(int(seed))
        return self._running[key]

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Delegated to the trial's sampler."""
        return self.sampler_for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegated to the trial's sampler."""
        return self.sampler_for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Delegated to the trial's sampler."""
        sampler = self.sampler_for(study, trial)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Delegated to the trial's (new) sampler."""
        self.sampler_for(study, trial).before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Delegated to the trial's sampler, which is then dropped."""
        sampler = self.sampler_for(study, trial)
        self._running.pop((study.study_name, trial.number), None)
        sampler.after_trial(study, trial, state, values)
