"""`RegularizedEvolutionSampler`: aging evolution (Real et al. 2019, AmoebaNet).

The population is the last `population_size` completed trials (the oldest die, however good:
the "regularization"); each new trial mutates one gene of the best of `sample_size` members
drawn at random.
"""

from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._operators import mutate_one
from netchisel.search.samplers._population import (
    Genome,
    PopulationSampler,
    Proposer,
    check_at_least,
)


class RegularizedEvolutionSampler(PopulationSampler):
    """Regularized (aging) evolution: mutate the best of a random sample of the newest trials.

    Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture
    Search", AAAI 2019. The first `population_size` trials are random.

    Args:
        seed: makes the search reproducible; each trial draws from (seed, trial number).
        population_size: the population is the newest this-many completed trials.
        sample_size: members drawn per new trial; the best of them is the parent.

    Example:
        >>> import optuna
        >>> sampler = RegularizedEvolutionSampler(seed=0, population_size=4, sample_size=2)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: (t.suggest_int("x", 0, 9) - 7) ** 2, n_trials=20)
        >>> study.best_value
        0.0
    """

    def __init__(
        self, *, seed: int | None = None, population_size: int = 10, sample_size: int = 5
    ) -> None:
        check_at_least("population_size", population_size)
        check_at_least("sample_size", sample_size)
        if sample_size > population_size:
            raise ConfigError(
                f"sample_size ({sample_size}) must be <= population_size ({population_size})"
            )
        super().__init__(seed=seed, n_startup=population_size)
        self._population_size = population_size
        self._sample_size = sample_size

    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """One gene of the sample's best changed."""
        population = history[-self._population_size :]
        fitness = bad[-self._population_size :]

        def draw(rng: np.random.Generator) -> Genome:
            sample = rng.choice(len(population), size=self._sample_size, replace=False)
            parent = min(sample, key=lambda i: (fitness[i], -population[i].number))
            return mutate_one(population[parent], rng)

        return draw
