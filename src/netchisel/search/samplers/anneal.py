"""`GeneticAnnealingSampler`: a genetic algorithm with simulated-annealing local search.

Each new trial is, with probability `local_rate`, a *local move* (one gene of the annealing
chain's current state changed by a small step), otherwise a GA child (as `GeneticSampler`).

The annealing chain (Kirkpatrick, Gelatt & Vecchi 1983) runs over every completed trial in
trial-number order, local moves and GA children alike: the chain moves to a trial that is
better than its current state, or worse by delta with probability exp(-delta / T), where delta
is the difference in badness (the fraction of the history strictly better, see
`_population.py`: scale-free, in [0, 1), for any number of objectives) and T falls
geometrically from `initial_temperature` to `final_temperature` over the first
`cooling_trials` trials. The acceptance draw of trial n comes from (seed, n), so the chain is
replayed from the storage for every proposal and the sampler keeps no state.
"""

from __future__ import annotations

import math

import numpy as np
from optuna.trial import FrozenTrial

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._operators import mutate_one
from netchisel.search.samplers._population import (
    Genome,
    PopulationSampler,
    Proposer,
    best_first,
    check_at_least,
    trial_rng,
)
from netchisel.search.samplers.ga import child


class GeneticAnnealingSampler(PopulationSampler):
    """GA proposals plus local moves around a simulated-annealing chain's current state.

    The first `population_size` trials are random.

    Args:
        seed: makes the search reproducible; each trial draws from (seed, trial number).
        population_size, tournament_size, mutation_rate: the GA's, as in `GeneticSampler`.
        local_rate: probability that a trial is a local move rather than a GA child.
        step_size: standard deviation of a local move of a numeric gene, as a fraction of
            its range (log range for `log=True`).
        initial_temperature, final_temperature: the annealing temperature at trial 0 and
            from trial `cooling_trials` on, in units of badness (fraction of the history).
        cooling_trials: trials over which the temperature falls geometrically.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(sampler=GeneticAnnealingSampler(seed=0, population_size=4))
        >>> study.optimize(lambda t: (t.suggest_int("x", 0, 9) - 7) ** 2, n_trials=20)
        >>> study.best_value
        0.0
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        population_size: int = 10,
        tournament_size: int = 3,
        mutation_rate: float | None = None,
        local_rate: float = 0.5,
        step_size: float = 0.1,
        initial_temperature: float = 0.1,
        final_temperature: float = 0.001,
        cooling_trials: int = 100,
    ) -> None:
        check_at_least("population_size", population_size, 2)
        check_at_least("tournament_size", tournament_size)
        check_at_least("cooling_trials", cooling_trials)
        if not 0.0 <= local_rate <= 1.0:
            raise ConfigError(f"local_rate must be in [0, 1], got {local_rate}")
        if not 0.0 < final_temperature <= initial_temperature:
            raise ConfigError(
                "temperatures must satisfy 0 < final_temperature <= initial_temperature, got "
                f"{final_temperature} and {initial_temperature}"
            )
        check_at_least("step_size", step_size, 0.0)
        super().__init__(seed=seed, n_startup=population_size)
        self._population_size = population_size
        self._tournament_size = tournament_size
        self._mutation_rate = mutation_rate
        self._local_rate = local_rate
        self._step_size = step_size
        self._t0, self._t1 = initial_temperature, final_temperature
        self._cooling_trials = cooling_trials

    def temperature(self, number: int) -> float:
        """The annealing temperature at trial `number`.

        Example:
            >>> round(GeneticAnnealingSampler(cooling_trials=100).temperature(50), 6)
            0.01
        """
        progress = min(number / self._cooling_trials, 1.0)
        return float(self._t0 * (self._t1 / self._t0) ** progress)

    def current_state(self, history: list[FrozenTrial], bad: np.ndarray) -> FrozenTrial:
        """The annealing chain's state after replaying it over `history` (in number order)."""
        current = 0
        for i in range(1, len(history)):
            delta = bad[i] - bad[current]
            t = history[i].number
            if delta <= 0 or trial_rng(self._seed, t, ":accept").random() < math.exp(
                -delta / self.temperature(t)
            ):
                current = i
        return history[current]

    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """A local move from the chain's state, or a GA child."""
        state = self.current_state(history, bad)
        ranked = [history[i] for i in best_first(history, bad)[: self._population_size]]

        def draw(rng: np.random.Generator) -> Genome:
            if rng.random() < self._local_rate:
                return mutate_one(state, rng, self._step_size)
            return child(ranked, rng, self._tournament_size, self._mutation_rate)

        return draw
