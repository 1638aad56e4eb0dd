"""top_candidates: the finalists a one-shot search hands to real training."""

from __future__ import annotations

import optuna
import pytest

from netchisel.core.errors import ConfigError
from netchisel.search.nas.supernet_train import top_candidates


def study_of(values: list[float], ops: list[str], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value, op in zip(values, ops, strict=True):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, params={}, distributions={}, user_attrs={"candidate": {"op": op}}
            )
        )
    return study


def ops(candidates: list[dict[str, str]]) -> list[str]:
    return [c["op"] for c in candidates]


def test_best_first_distinct_and_ties_to_the_earlier_trial() -> None:
    study = study_of([90.0, 97.0, 95.0, 97.0, 97.0, 80.0], ["a", "b", "c", "d", "b", "e"])
    assert ops(top_candidates(study, 1)) == ["b"]
    assert ops(top_candidates(study, 3)) == ["b", "d", "c"]
    assert ops(top_candidates(study, 10)) == ["b", "d", "c", "a", "e"]  # only 5 distinct


def test_minimize_ranks_the_smallest_first_and_skips_failed_trials() -> None:
    study = study_of([0.3, 0.1, 0.2], ["a", "b", "c"], direction="minimize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert ops(top_candidates(study, 2)) == ["b", "c"]


def test_top_one_is_the_rule_the_benchmark_chose_by() -> None:
    study = study_of([1.0, 3.0, 2.0, 3.0], ["a", "b", "c", "d"])
    best = max(study.trials, key=lambda t: (t.value, -t.number))
    assert top_candidates(study, 1) == [best.user_attrs["candidate"]]


def test_bad_k_and_multi_objective_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="k must be >= 1, got 0"):
        top_candidates(study_of([1.0], ["a"]), 0)
    with pytest.raises(ConfigError, match="the study has 2 objectives"):
        top_candidates(optuna.create_study(directions=["maximize", "minimize"]), 3)
