"""Variation operators on trials' parameters: tournament selection, uniform crossover with
per-gene mutation, and a one-gene mutation (uniform, or a local step for annealing).

Each works on any define-by-run space: a parent's values are taken with the distribution that
parent was sampled from, and a gene only one parent has is inherited from that parent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from netchisel.search.samplers._population import Genome
from netchisel.search.samplers._space import cells, decode, encode, index_of, other_value, value_at


def tournament(ranked: Sequence[FrozenTrial], size: int, rng: np.random.Generator) -> FrozenTrial:
    """The best of `size` trials drawn without replacement from `ranked` (best first).

    Example:
        >>> from optuna.trial import create_trial
        >>> ts = [create_trial(value=v) for v in (1.0, 2.0, 3.0)]
        >>> tournament(ts, 3, np.random.default_rng(0)).value
        1.0
    """
    picks = rng.choice(len(ranked), size=min(size, len(ranked)), replace=False)
    return ranked[int(picks.min())]


def crossover(
    a: FrozenTrial, b: FrozenTrial, mutation_rate: float | None, rng: np.random.Generator
) -> Genome:
    """Uniform crossover of two parents, then each gene mutated with `mutation_rate`.

    `mutation_rate=None` means 1 / number of genes. A mutated gene takes a different value,
    drawn uniformly.
    """
    names = sorted(a.params.keys() | b.params.keys())
    rate = 1.0 / max(len(names), 1) if mutation_rate is None else mutation_rate
    genome: Genome = {}
    for name in names:
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        parent = first if name in first.params else second
        value = parent.params[name]
        if rng.random() < rate:
            value = other_value(parent.distributions[name], value, rng)
        genome[name] = value
    return genome


def mutate_one(parent: FrozenTrial, rng: np.random.Generator, step: float | None = None) -> Genome:
    """The parent's parameters with one gene (of those that can change) changed.

    `step=None`: the new value is drawn uniformly among the others (regularized evolution).
    `step=s`: a numeric gene moves by a normal step of standard deviation `s` in the unit
    view of its distribution, at least to the next value (a local move, for annealing);
    a categorical still takes a uniformly drawn other value.
    """
    genome = dict(parent.params)
    names = sorted(n for n, d in parent.distributions.items() if not d.single())
    if not names:
        return genome
    name = names[int(rng.integers(len(names)))]
    dist, value = parent.distributions[name], parent.params[name]
    if step is None or isinstance(dist, CategoricalDistribution):
        genome[name] = other_value(dist, value, rng)
        return genome
    u = encode(dist, value) + rng.normal(0.0, step)
    moved = decode(dist, -u if u < 0 else 2 - u if u > 1 else u)  # reflected at the bounds
    n = cells(dist)
    if moved == value and n > 1:  # a step within one cell: go to a neighbouring value
        i = index_of(dist, value)
        down = i == n - 1 or (i > 0 and rng.random() < 0.5)
        moved = value_at(dist, i - 1 if down else i + 1)
    genome[name] = moved
    return genome
