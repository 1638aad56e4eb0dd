"""What netchisel's samplers share: a stateless base class and the ranking of a history.

Every sampler here works the same way, the way Optuna's own samplers do: the storage holds the
history and the sampler holds none of it.

1. When a trial starts (`before_trial`), the sampler reads the completed trials from the
   storage and proposes a *genome* for it: a dict from parameter name to value (the parents'
   values, recombined and mutated, or values drawn from a learned policy). Until the history
   has `n_startup` completed trials, the genome is empty.
2. Each `trial.suggest_*` call (`sample_independent`) returns the genome's value for that name
   if it has one that is valid for the distribution asked now; otherwise a random value. A
   define-by-run space can thus be conditional (a parameter only some parents have) and can
   change between trials.
3. All randomness comes from generators seeded by (seed, trial number[, parameter name]), never
   from one stream consumed in call order. So a search killed and continued with a fresh
   sampler, or one run by several workers on one storage, draws what one uninterrupted process
   would have drawn for the same history.

The only thing kept between calls is the genome of each trial still running (in memory,
dropped in `after_trial`): it is derived from the storage, never a source of truth.

Ranking (`badness`): feasible trials first (the Optuna convention: a system or user attribute
`constraints`, a list of floats, feasible when all are <= 0; infeasible trials are ordered by
their total violation); then by value for one objective, or by non-dominated front
(Deb et al. 2002) for several. A trial's badness is the fraction of the history strictly better
than it: 0 for the best, so samplers that need a scale-free fitness (annealing, REINFORCE) use it
for any number and direction of objectives.
"""

from __future__ import annotations

import abc
import secrets
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._space import fits, random_value

Genome = dict[str, Any]
"""Parameter name -> proposed value (external representation) for one trial."""
Proposer = Callable[[np.random.Generator], Genome]
"""Draws one genome; what it derived from the history is computed once, before."""

_REDRAWS = 10  # proposals equal to an evaluated trial are drawn again up to this many times


def trial_rng(seed: int, number: int, salt: str = "") -> np.random.Generator:
    """The generator of trial `number` (and of one parameter of it when `salt` is its name).

    Example:
        >>> float(trial_rng(0, 3).random()) == float(trial_rng(0, 3).random())
        True
    """
    return np.random.default_rng([seed, number, zlib.crc32(salt.encode())])


def check_at_least(name: str, value: float, minimum: float = 1) -> None:
    """Raise ConfigError unless `value >= minimum` (for sampler options).

    Example:
        >>> check_at_least("population_size", 3, 4)
        Traceback (most recent call last):
        netchisel.core.errors.ConfigError: population_size must be >= 4, got 3
    """
    if not value >= minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def completed(study: Study) -> list[FrozenTrial]:
    """The study's completed trials, in trial-number order."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.number)


def violation(trial: FrozenTrial) -> float:
    """Total constraint violation: sum of the positive entries of `constraints`, 0 if none."""
    cons = trial.system_attrs.get("constraints", trial.user_attrs.get("constraints"))
    return float(sum(max(float(c), 0.0) for c in cons)) if cons else 0.0


def pareto_fronts(loss: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of an (n, m) array to minimise: 0 = Pareto front, 1 = next, ...

    O(n^2 m) time and O(n^2) memory: fine for the thousands of trials a search evaluates.

    Example:
        >>> pareto_fronts(np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [3.0, 3.0]])).tolist()
        [0, 0, 1, 2]
    """
    le = np.all(loss[:, None, :] <= loss[None, :, :], axis=-1)
    lt = np.any(loss[:, None, :] < loss[None, :, :], axis=-1)
    dominates: np.ndarray = le & lt  # [i, j]: i dominates j
    left = dominates.sum(0)  # how many not-yet-ranked trials dominate j
    front = np.full(len(loss), -1)
    rank = 0
    while (current := left == 0).any():
        front[current] = rank
        left = left - dominates[current].sum(0)
        left[front >= 0] = -1
        rank += 1
    return front


def badness(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> np.ndarray:
    """The fraction of `trials` strictly better than each one (0 = none better).

    Example:
        >>> from optuna.trial import create_trial
        >>> ts = [create_trial(value=v) for v in (3.0, 1.0, 3.0, 2.0)]
        >>> badness(ts, [StudyDirection.MINIMIZE]).tolist()
        [0.5, 0.0, 0.5, 0.25]
    """
    n = len(trials)
    if n == 0:
        return np.zeros(0)
    sign = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions])
    loss = np.array([t.values for t in trials], dtype=float) * sign
    primary = loss[:, 0] if len(directions) == 1 else pareto_fronts(loss).astype(float)
    key = np.stack([np.array([violation(t) for t in trials]), primary])
    order = np.lexsort(key[::-1])
    ordered = key[:, order]
    new_group = np.r_[True, (ordered[:, 1:] != ordered[:, :-1]).any(0)]
    better = np.empty(n)
    better[order] = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    return better / n


def best_first(trials: Sequence[FrozenTrial], bad: np.ndarray) -> list[int]:
    """Indices of `trials` from best to worst; among equals the newer trial first."""
    return sorted(range(len(trials)), key=lambda i: (bad[i], -trials[i].number))


class PopulationSampler(BaseSampler, abc.ABC):
    """Base of netchisel's samplers: one genome per trial, proposed from the storage's history.

    A subclass implements `proposer(history, bad, number)`; everything else (reproducibility
    from `seed`, startup with random samples, conditional spaces, resuming, redrawing a genome
    that repeats an evaluated trial) is here.
    """

    def __init__(self, *, seed: int | None, n_startup: int) -> None:
        if seed is not None and seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self._seed = secrets.randbits(63) if seed is None else seed
        self._n_startup = n_startup
        self._genomes: dict[tuple[str, int], Genome] = {}

    @abc.abstractmethod
    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """How trial `number` draws its genome, given the completed trials and their badness."""

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """Nothing is sampled jointly: every parameter goes through `sample_independent`."""
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Nothing is sampled jointly (see `infer_relative_search_space`)."""
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Propose this trial's genome from the completed trials in the storage."""
        self._genomes[(study.study_name, trial.number)] = self._genome(study, trial.number)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """The genome's value for `param_name` if valid for the distribution, else random."""
        key = (study.study_name, trial.number)
        if key not in self._genomes:  # a trial started without `before_trial`
            self._genomes[key] = self._genome(study, trial.number)
        value = self._genomes[key].get(param_name)
        if param_name in self._genomes[key] and fits(param_distribution, value):
            return value
        return random_value(param_distribution, trial_rng(self._seed, trial.number, param_name))

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Forget the finished trial's genome (the storage now holds its parameters)."""
        self._genomes.pop((study.study_name, trial.number), None)

    def _genome(self, study: Study, number: int) -> Genome:
        history = completed(study)
        if len(history) < self._n_startup:
            return {}
        draw = self.proposer(history, badness(history, study.directions), number)
        rng = trial_rng(self._seed, number)
        genome = draw(rng)
        for _ in range(_REDRAWS):  # on small discrete spaces a repeated evaluation is waste
            if not any(repeats(genome, t.params) for t in history):
                break
            genome = draw(rng)
        return genome


def repeats(genome: Genome, params: dict[str, Any]) -> bool:
    """Whether a trial given `genome` would repeat one with `params`: it agrees on all of them.

    A define-by-run objective suggests a parameter only on some paths, so a genome may hold
    more names than a trial uses; if it agrees on every parameter of an evaluated trial, the
    objective takes the same path and the trial is a repetition.

    Example:
        >>> repeats({"op": "skip", "kernel": 3}, {"op": "skip"})
        True
    """
    return all(k in genome and genome[k] == v for k, v in params.items())
