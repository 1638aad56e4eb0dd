"""`GeneticSampler`: a steady-state genetic algorithm (selection, crossover, mutation).

Each new trial is one child: two parents chosen by tournament among the population, uniform
crossover, then per-gene mutation. The population is the `population_size` best completed
trials of the study (feasible first, then by value or Pareto front), which is what a
steady-state GA that replaces its worst member holds, read from the storage instead of kept.
"""

from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._operators import crossover, tournament
from netchisel.search.samplers._population import (
    Genome,
    PopulationSampler,
    Proposer,
    best_first,
    check_at_least,
)


class GeneticSampler(PopulationSampler):
    """Genetic algorithm: tournament selection, uniform crossover, per-gene mutation.

    The first `population_size` trials are random. Works with several objectives (parents
    ranked by non-dominated front) and with constraints (feasible trials first).

    Args:
        seed: makes the search reproducible; each trial draws from (seed, trial number).
        population_size: the best this-many completed trials are the parents' pool.
        tournament_size: trials drawn per tournament; the best of them is a parent.
        mutation_rate: probability that a gene takes a new value; None = 1 / number of genes.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(sampler=GeneticSampler(seed=0, population_size=4))
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
    ) -> None:
        check_at_least("population_size", population_size, 2)
        check_at_least("tournament_size", tournament_size)
        if mutation_rate is not None and not 0.0 <= mutation_rate <= 1.0:
            raise ConfigError(f"mutation_rate must be in [0, 1] or None, got {mutation_rate}")
        super().__init__(seed=seed, n_startup=population_size)
        self._population_size = population_size
        self._tournament_size = tournament_size
        self._mutation_rate = mutation_rate

    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """A child of two tournament winners among the best `population_size` trials."""
        ranked = [history[i] for i in best_first(history, bad)[: self._population_size]]
        return lambda rng: child(ranked, rng, self._tournament_size, self._mutation_rate)


def child(
    ranked: list[FrozenTrial],
    rng: np.random.Generator,
    tournament_size: int,
    mutation_rate: float | None,
) -> Genome:
    """One GA child of a population (best first): two tournaments, crossover, mutation."""
    a = tournament(ranked, tournament_size, rng)
    b = tournament(ranked, tournament_size, rng)
    return crossover(a, b, mutation_rate, rng)
