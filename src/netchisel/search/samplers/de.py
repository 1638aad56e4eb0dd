"""`DifferentialEvolutionSampler`: DE/rand/1/bin (Storn & Price 1997).

DE keeps `population_size` target vectors; each new trial is one trial vector for one target:
mutant = a + F * (b - c) from three other members, binomial crossover with the target, and the
trial vector replaces its target if it is at least as good. Stateless version: trial n works on
slot n mod `population_size`, and a slot's member is the best completed trial of that slot
(ties: the newer), which is exactly the greedy one-to-one replacement, read from the storage.

Vectors live in the unit view of each distribution (`_space.py`): a float or int by its
position in its (log) range, a categorical by its index; the mutant is clipped to [0, 1] and
rounded to the nearest value (index). A gene that a, b or c lacks (conditional spaces) keeps the
target's value.
"""

from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._population import (
    Genome,
    PopulationSampler,
    Proposer,
    check_at_least,
)
from netchisel.search.samplers._space import decode, encode


class DifferentialEvolutionSampler(PopulationSampler):
    """Differential evolution, rand/1/bin, on the unit view of mixed spaces.

    Storn & Price, "Differential Evolution - A Simple and Efficient Heuristic for Global
    Optimization over Continuous Spaces", J. Global Optimization 11, 1997. The first
    `population_size` trials (one per slot) are random.

    Args:
        seed: makes the search reproducible; each trial draws from (seed, trial number).
        population_size: number of target vectors (slots), >= 4.
        differential_weight: F, the scale of the difference vector b - c.
        crossover_rate: CR, probability that a gene comes from the mutant.

    Example:
        >>> import optuna
        >>> sampler = DifferentialEvolutionSampler(seed=0, population_size=4)
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(lambda t: (t.suggest_int("x", 0, 9) - 7) ** 2, n_trials=20)
        >>> study.best_value
        0.0
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        population_size: int = 10,
        differential_weight: float = 0.5,
        crossover_rate: float = 0.9,
    ) -> None:
        check_at_least("population_size", population_size, 4)
        if not 0.0 < differential_weight <= 2.0:
            raise ConfigError(f"differential_weight must be in (0, 2], got {differential_weight}")
        if not 0.0 <= crossover_rate <= 1.0:
            raise ConfigError(f"crossover_rate must be in [0, 1], got {crossover_rate}")
        super().__init__(seed=seed, n_startup=population_size)
        self._population_size = population_size
        self._f = differential_weight
        self._cr = crossover_rate

    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """The trial vector of slot `number mod population_size`; {} (random) if it is empty."""
        members: dict[int, int] = {}  # slot -> index in history of its best trial
        for i, t in enumerate(history):
            slot = t.number % self._population_size
            j = members.get(slot)
            if j is None or (bad[i], -t.number) < (bad[j], -history[j].number):
                members[slot] = i
        target_slot = number % self._population_size
        if target_slot not in members or len(members) < 4:
            return lambda rng: {}
        target = history[members.pop(target_slot)]
        others = [history[i] for i in members.values()]
        return lambda rng: self.trial_vector(target, others, rng)

    def trial_vector(
        self, target: FrozenTrial, others: list[FrozenTrial], rng: np.random.Generator
    ) -> Genome:
        """rand/1/bin: a + F (b - c) from three of `others`, binomial crossover with `target`."""
        a, b, c = (others[k] for k in rng.choice(len(others), size=3, replace=False))
        names = sorted(target.params)
        forced = int(rng.integers(len(names))) if names else -1
        genome: Genome = {}
        for k, name in enumerate(names):
            dist, value = target.distributions[name], target.params[name]
            cross = rng.random() < self._cr or k == forced
            if cross and all(name in p.params for p in (a, b, c)):
                u = encode(a.distributions[name], a.params[name]) + self._f * (
                    encode(b.distributions[name], b.params[name])
                    - encode(c.distributions[name], c.params[name])
                )
                value = decode(dist, u)
            genome[name] = value
        return genome
