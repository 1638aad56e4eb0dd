"""The genetic sampler picks its parents among the best feasible trials."""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import create_trial

from netchisel.search.samplers import GeneticSampler


def test_genetic_parents_are_the_best_feasible_trials() -> None:
    study = optuna.create_study()
    x_dist: dict[str, BaseDistribution] = {"x": IntDistribution(0, 9)}
    for x in range(10):  # x < 5 has the best values but violates its constraint
        cons = [1.0] if x < 5 else [-1.0]
        study.add_trial(
            create_trial(
                params={"x": x}, distributions=x_dist, value=x, user_attrs={"constraints": cons}
            )
        )
    study.sampler = GeneticSampler(seed=0, population_size=3, tournament_size=1, mutation_rate=0.0)
    xs = []
    for _ in range(20):
        trial = study.ask()
        xs.append(trial.suggest_int("x", 0, 9))
        study.tell(trial, 100.0)  # worse than all: the population stays {5, 6, 7}
    assert set(xs) == {5, 6, 7}
