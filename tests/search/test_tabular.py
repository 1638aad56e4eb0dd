"""The tabular benchmark on a tiny fake table: loading, lookup, the objective, regret math."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from netchisel.core.errors import ConfigError
from netchisel.search.space import Space, categorical
from netchisel.search.tabular import (
    TabularBenchmark,
    TabularEntry,
    candidate_key,
    evaluations_to_reach,
    incumbent_test_regret,
    regret_curve,
)

SPACE = Space({"op": categorical("a", "b"), "k": categorical(3, 5, when={"op": "a"})})
# candidates: {op a, k 3}, {op a, k 5}, {op b}; mean val 90, 97, 96; mean test 91, 95, 97
ROWS = [
    {"candidate": {"op": "a", "k": 3}, "val": [89, 91, 90], "test": [91, 91, 91], "params": 10},
    {"candidate": {"op": "a", "k": 5}, "val": [97, 96, 98], "test": [95, 95, 95], "params": 20},
    {"candidate": {"op": "b"}, "val": [96, 96, 96], "test": [97, 96, 98], "macs": 7},
]


def write(tmp_path: Path, rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"meta": meta or {"space": "fake"}, "rows": rows}))
    return path


def test_load_lookup_and_optimum(tmp_path: Path) -> None:
    bench = TabularBenchmark.load(write(tmp_path, ROWS), space=SPACE)
    assert bench.lookup({"k": 5, "op": "a"}).val_mean == 97.0  # key order does not matter
    assert bench.lookup({"op": "b"}).test_mean == 97.0
    assert bench.lookup({"op": "a", "k": 3}).params == 10
    assert bench.optimum == 97.0
    assert bench.best.candidate == {"op": "a", "k": 5}
    assert bench.meta == {"space": "fake"}
    with pytest.raises(ConfigError, match="not in the tabular benchmark"):
        bench.lookup({"op": "c"})


def test_objective_returns_mean_val_and_records_test(tmp_path: Path) -> None:
    bench = TabularBenchmark.load(write(tmp_path, ROWS), space=SPACE)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(bench.objective, n_trials=12)
    for trial in study.trials:
        entry = bench.lookup(trial.params)
        assert trial.value == entry.val_mean
        assert trial.user_attrs["test_accuracy"] == entry.test_mean
    assert {candidate_key(t.params) for t in study.trials} == {
        candidate_key(r["candidate"]) for r in ROWS
    }
    assert study.best_value == 97.0


def test_partial_or_broken_tables_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 rows for a space of 3 candidates"):
        TabularBenchmark.load(write(tmp_path, ROWS[:2]), space=SPACE)
    with pytest.raises(ConfigError, match="lists a candidate twice"):
        TabularBenchmark.load(write(tmp_path, [*ROWS, ROWS[0]]), space=SPACE)
    with pytest.raises(ConfigError, match="not a table"):
        TabularBenchmark.load(write(tmp_path, [{"candidate": {"op": "b"}}]), space=SPACE)
    with pytest.raises(ConfigError, match=r"meta\.space .fake. is not in NAS_SPACES"):
        TabularBenchmark.load(write(tmp_path, ROWS))
    with pytest.raises(ConfigError, match="does not exist: build it"):
        TabularBenchmark.load(tmp_path / "missing.json", space=SPACE)


def test_regret_curves() -> None:
    values = [90.0, 96.0, 90.0, 97.0]
    assert regret_curve(values, 97.0) == [7.0, 1.0, 1.0, 0.0]
    # incumbents: 90 (test 91), 96 (test 97), 96, 97 (test 95); val-optimal test is 95
    assert incumbent_test_regret(values, [91.0, 97.0, 91.0, 95.0], 95.0) == [4.0, -2.0, -2.0, 0.0]
    # a tie in val keeps the earlier incumbent
    assert incumbent_test_regret([96.0, 96.0], [97.0, 90.0], 95.0) == [-2.0, -2.0]
    with pytest.raises(ConfigError, match="2 values but 1 test"):
        incumbent_test_regret([1.0, 2.0], [1.0], 0.0)


def test_evaluations_to_reach() -> None:
    curve = regret_curve([90.0, 96.5, 96.8, 97.0], 97.0)
    assert evaluations_to_reach(curve, 0.3) == 3
    assert evaluations_to_reach(curve, 0.5) == 2
    assert evaluations_to_reach(curve, 0.0) == 4
    assert evaluations_to_reach(curve[:2], 0.3) is None


def test_committed_table_covers_the_tabular_space() -> None:
    table = Path(__file__).parents[2] / "bench" / "data" / "nas_tabular_digits.json"
    bench = TabularBenchmark.load(table)  # the space comes from meta.space = "tabular"
    assert len(bench.entries) == 288
    assert bench.meta["seeds"] == [0, 1, 2] and bench.meta["budget"]["steps"] == 160
    assert all(len(e.val) == len(e.test) == 3 for e in bench.entries)
    assert bench.optimum == 99.259  # 2 errors of 270 images, on average over the seeds
    assert sum(e.val_mean >= bench.optimum - 0.3 - 1e-9 for e in bench.entries) == 7


def test_equal_correct_counts_tie_despite_rounding() -> None:
    # 268 + 268 + 268 and 270 + 267 + 267 correct of 270, stored rounded to 1e-4 points
    a = TabularEntry({"op": "a"}, (99.2593, 99.2593, 99.2593), (0.0,))
    b = TabularEntry({"op": "b"}, (100.0, 98.8889, 98.8889), (0.0,))
    assert a.val_mean == b.val_mean == 99.259
