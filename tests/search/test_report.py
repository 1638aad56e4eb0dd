"""The search report on a synthetic study: the whole Pareto front, exported trials marked,
latency ties within its measured p10-p90."""

from __future__ import annotations

import html
import json
from pathlib import Path

import optuna
from optuna.trial import create_trial

from netchisel.search.objectives import DOMINATION_RULE
from netchisel.search.report import best_trials, write_search_report
from netchisel.search.spec import parse_search_spec
from tests.search.test_study import spec_with

# accuracy, latency median and its p10-p90 in ms, per trial
TRIALS = [
    (95.0, 1.0, 0.9, 1.2),  # 0: on the front, exported
    (95.0, 1.1, 1.0, 1.3),  # 1: slower by the median, but within 0's spread: a tie, on the front
    (94.0, 2.0, 1.9, 2.1),  # 2: dominated by 0 and 1 (less accurate, wholly slower)
    (90.0, 0.5, 0.45, 0.55),  # 3: wholly faster than all: on the front
]


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, (acc, ms, p10, p90) in enumerate(TRIALS):
        metrics = {"accuracy": acc, "latency_ms": ms, "latency_p10_ms": p10, "latency_p90_ms": p90}
        attrs = {"metrics": metrics, "candidate": {"hidden": 8 * (number + 1)}, "constraints": []}
        study.add_trial(create_trial(values=[acc, ms], user_attrs=attrs))
    return study


def test_the_front_is_every_non_dominated_trial_with_the_exported_marked(tmp_path: Path) -> None:
    spec = parse_search_spec(spec_with(objectives=["accuracy", "latency_ms"], export=2))
    report = write_search_report(_study(), spec, tmp_path, "sqlite:///study.db")
    front = [(r["number"], r["exported"]) for r in report["front"]]
    assert front == [(0, True), (1, True), (3, False)]  # best accuracy first
    assert [r["number"] for r in report["best"]] == [0, 1]
    # on the medians alone trial 0 would beat trial 1, as Optuna's own front says
    assert [t.number for t in _study().best_trials] == [0, 3]
    assert report["search"]["ranged_objectives"] == ["latency_ms"]
    md = (tmp_path / "report.md").read_text()
    assert "## Pareto front" in md and "`exported` marks the 2 copied to `best/`" in md
    assert '| 1 | yes | 95, 1.1 | 95 | - | 1.1 (1-1.3) | - | - | - | - | {"hidden":16} |' in md
    assert '| 3 | no | 90, 0.5 | 90 | - | 0.5 (0.45-0.55) | - | - | - | - | {"hidden":32} |' in md
    table_end = md.index("\n\n", md.index("| 3 | no |"))
    assert md[table_end:].startswith("\n\n" + DOMINATION_RULE + "\n")  # the rule under the table
    assert html.escape(DOMINATION_RULE) in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["front"][2]["number"] == 3


def test_without_a_spread_the_front_is_optunas(tmp_path: Path) -> None:
    study = _study()
    trials = study.get_trials()
    assert [t.number for t in best_trials(trials, ["maximize", "minimize"])] == [0, 3]
    spec = parse_search_spec(spec_with(objectives=["accuracy", {"macs": "minimize"}]))
    report = write_search_report(study, spec, tmp_path, "sqlite:///study.db")
    assert report["search"]["ranged_objectives"] == []
    assert DOMINATION_RULE not in (tmp_path / "report.md").read_text()
