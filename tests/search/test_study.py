"""End-to-end searches on the tiny MLP and 8x8 digits: report, export, resume, constraints."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from netchisel.artifact.store import load
from netchisel.core.errors import ConfigError
from netchisel.search.spec import parse_search_spec
from netchisel.search.study import run_search
from netchisel.zoo.data import task
from tests.search._dashboard import dashboard_get

SPEC: dict[str, Any] = {
    "name": "tiny",
    "space": {
        "hidden": [8, 16, 32],
        "lr": {"choices": [0.003, 0.03]},
    },
    "recipe": {
        "model": {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": ["$hidden"]}},
        "task": "digits",
        "stages": [{"finetune": {"steps": 30, "lr": "$lr"}}],
        "profile": {"batch_size": 1, "latency": False},
    },
    "objectives": ["accuracy", "params"],
    "strategy": "random",
    "trials": 5,
}


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec.update(changes)
    return spec


def test_search_reports_the_front_and_exports_loadable_artifacts(out: Path) -> None:
    result = run_search(parse_search_spec(spec_with()), output=out, quiet=True)
    report = result.report
    assert report["counts"]["counted"] == report["counts"]["complete"] == 5
    trials = [t for t in report["trials"] if t["state"] == "complete"]
    # params of an MLP 64 -> h -> 10 are exact, and an objective
    for t in trials:
        h = t["candidate"]["hidden"]
        assert t["metrics"]["params"] == 64 * h + h + h * 10 + 10 == t["values"][1]
        assert t["values"][0] == t["metrics"]["accuracy"]
    # the front is exactly the non-dominated trials; the exported best are its first ones
    front = {t["number"] for t in report["front"]}
    assert [t["number"] for t in report["best"]] == [t["number"] for t in report["front"]][:3]
    assert [t["exported"] for t in report["front"]] == [i < 3 for i in range(len(front))]
    for t in trials:
        dominated = any(
            o["values"][0] >= t["values"][0]
            and o["values"][1] <= t["values"][1]
            and o["values"] != t["values"]
            for o in trials
        )
        assert (t["number"] in front) == (not dominated)
    # exported artifacts are the trained candidates: same validation accuracy when reloaded
    digits = task("digits")
    for entry, best in zip(report["exported"], report["best"], strict=True):
        model = load(out / entry["path"])
        assert digits.evaluate(model, "val")["accuracy"] == pytest.approx(
            best["metrics"]["accuracy"]
        )
    for name in ("report.json", "report.md", "report.html", "search.yaml", "study.db"):
        assert (out / name).is_file()
    assert "<svg" in (out / "report.html").read_text()
    assert "## Pareto front" in (out / "report.md").read_text()
    status, body = dashboard_get(f"sqlite:///{out}/study.db", "/api/studies/1")
    assert status.startswith("200") and len(body["trials"]) == 5
    assert len(body["best_trials"]) == len(report["front"])  # no latency: Optuna's front


def test_best_candidates_are_re_timed_side_by_side(out: Path) -> None:
    spec = spec_with(objectives=["accuracy", "latency_ms"], trials=3)
    spec["recipe"]["profile"] = {"batch_size": 4, "latency": True, "repeats": 10, "warmup": 1}
    report = run_search(parse_search_spec(spec), output=out, quiet=True).report
    assert report["retimed"] == {"rounds": 10, "calls_per_round": 1}
    for row in report["best"]:
        assert row["latency_ms_retimed"] > 0 and row["metrics"]["latency_ms"] > 0
    assert all("latency_ms_retimed" not in t for t in report["trials"])
    for t in report["trials"]:  # the spread the front's domination rule reads
        m = t["metrics"]
        assert 0 < m["latency_p10_ms"] <= m["latency_ms"] <= m["latency_p90_ms"]
    md = (out / "report.md").read_text()
    assert "re-timed ms" in md and "side by side, in turns (10 rounds of 1 calls" in md
    # without latency in the profile there is nothing to re-time
    plain = run_search(parse_search_spec(spec_with(trials=2)), output=out / "p", quiet=True)
    assert plain.report["retimed"] is None


def test_running_again_adds_only_the_missing_trials(out: Path) -> None:
    first = run_search(parse_search_spec(spec_with(trials=3)), output=out, quiet=True)
    values = {t.number: t.values for t in first.study.trials}
    again = run_search(parse_search_spec(spec_with(trials=3)), output=out, quiet=True)
    assert len(again.study.trials) == 3
    more = run_search(parse_search_spec(spec_with(trials=3)), output=out, trials=5, quiet=True)
    assert len(more.study.trials) == 5
    assert {t.number: t.values for t in more.study.trials[:3]} == values
    with pytest.raises(ConfigError, match="one-process SQLite study: continue it without"):
        run_search(parse_search_spec(spec_with()), output=out, workers=2, trials=6, quiet=True)


def test_a_changed_spec_is_refused_on_the_same_output(out: Path) -> None:
    run_search(parse_search_spec(spec_with(trials=1)), output=out, quiet=True)
    changed = spec_with(trials=1, space={"hidden": [8, 64], "lr": [0.003, 0.03]})
    with pytest.raises(ConfigError, match="made by a different spec"):
        run_search(parse_search_spec(changed), output=out, quiet=True)


def test_no_feasible_trial_is_reported_and_the_closest_are_kept(out: Path) -> None:
    spec = spec_with(
        trials=3, objectives=["accuracy"], constraints={"params": {"max": 10}}, export=2
    )
    # with the progress bar (it shows the best feasible value, and there is none)
    report = run_search(parse_search_spec(spec), output=out, quiet=False).report
    assert report["feasible_found"] is False
    assert report["counts"]["feasible"] == 0
    assert len(report["best"]) == 2
    smallest = min(t["metrics"]["params"] for t in report["trials"])
    assert report["best"][0]["metrics"]["params"] == smallest  # least violation first
    assert "No trial met the constraints" in (out / "report.md").read_text()


def test_constraints_select_only_feasible_trials(out: Path) -> None:
    # hidden 8 -> 610 params, 16 -> 1210, 32 -> 2410: allow at most 1500
    spec = spec_with(trials=6, constraints={"params": {"max": 1500}})
    result = run_search(parse_search_spec(spec), output=out, quiet=True)
    report = result.report
    for trial in result.study.trials:  # also in Optuna's own record, for its samplers
        assert trial.system_attrs["constraints:params"] == trial.user_attrs["constraints"][0]
    assert report["feasible_found"]
    assert all(t["metrics"]["params"] <= 1500 for t in report["best"])
    infeasible = [t for t in report["trials"] if t["candidate"]["hidden"] == 32]
    assert all(not t["feasible"] and t["constraints"] == [910.0] for t in infeasible)


def test_median_pruner_stops_hopeless_trials_early(out: Path) -> None:
    spec = spec_with(
        trials=10,
        objectives=["accuracy"],
        pruner="median",
        space={"hidden": [32], "lr": [1e-7, 0.03]},
        recipe={
            **SPEC["recipe"],
            "stages": [{"finetune": {"epochs": 3, "lr": "$lr"}}],
        },
    )
    report = run_search(parse_search_spec(spec), output=out, quiet=True).report
    pruned = [t for t in report["trials"] if t["state"] == "pruned"]
    assert report["counts"]["counted"] == 10
    assert pruned, "a learning rate of 1e-7 never beats the median after 4 startup trials"
    assert all(t["candidate"]["lr"] == 1e-7 for t in pruned)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out}/study.db")
    assert all(list(t.intermediate_values) == [1] for t in study.trials if t.state.name == "PRUNED")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "bayes"}, "unknown strategy 'bayes'"),
        ({"space": {}}, "non-empty mapping"),
        ({"space": {"hidden": [8], "lr": [0.01], "unused": [1, 2]}}, "never uses it"),
        ({"pruner": "median"}, "pruners need a single objective"),
        ({"trials": 0}, "trials: must be >= 1"),
        ({"budget": 3}, "unknown key 'budget'"),
        ({"recipe": {**SPEC["recipe"], "stages": [{"finetune": {"lr": "$rate"}}]}}, "\\$rate"),
        ({"recipe": {**SPEC["recipe"], "stages": [{"finetune": {"lr": "$lr", "x": 1}}]}}, "'x'"),
    ],
)
def test_bad_specs_are_one_clear_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_search_spec(spec_with(**changes))


def test_an_unreachable_storage_is_one_clear_error_and_writes_nothing(out: Path) -> None:
    url = "postgresql://netchisel:secret@127.0.0.1:1/nowhere"
    with pytest.raises(ConfigError, match=r"storage postgresql\+psycopg://netchisel:\*\*\*@127"):
        run_search(parse_search_spec(spec_with()), output=out, storage=url, quiet=True)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("url", ["foo://bar", "runs/study.db", "redis://user:pw@host/0"])
def test_an_unsupported_storage_lists_the_supported_ones(out: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"unsupported; give one of postgresql://") as e:
        run_search(parse_search_spec(spec_with()), output=out, storage=url, quiet=True)
    assert "pw@" not in str(e.value)  # a password is never printed
    assert not out.exists()


def _count(db: Path, state: str) -> int:
    try:
        with sqlite3.connect(db) as c:
            return int(
                c.execute("select count(*) from trials where state=?", (state,)).fetchone()[0]
            )
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_kill_9_then_the_same_command_loses_no_completed_trial(tmp_path: Path) -> None:
    spec = spec_with(
        trials=6,
        recipe={**SPEC["recipe"], "stages": [{"finetune": {"steps": 150, "lr": "$lr"}}]},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "netchisel.cli",
        "search",
        str(path),
        "--output",
        str(out),
        "-q",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = out / "study.db"
    deadline = time.time() + 120
    while not (_count(db, "COMPLETE") >= 2 and _count(db, "RUNNING") == 1):
        assert time.time() < deadline and process.poll() is None, "the search never got going"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    done = {t.number: (t.params, t.values) for t in before.trials if t.state.name == "COMPLETE"}
    running = [t for t in before.trials if t.state.name == "RUNNING"]
    assert len(running) == 1

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    after = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    for number, (params, values) in done.items():
        assert (after.trials[number].params, after.trials[number].values) == (params, values)
    lost = after.trials[running[0].number]
    assert lost.state.name == "FAIL" and lost.user_attrs["interrupted"] is True
    rerun = [t for t in after.trials if t.user_attrs.get("retry_of") == lost.number]
    # the rerun keeps every value the lost trial had drawn (it may die between two of them)
    assert len(rerun) == 1 and rerun[0].state.name == "COMPLETE"
    assert lost.params.items() <= rerun[0].params.items()
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["counted"] == report["counts"]["complete"] == 6
    assert report["counts"]["interrupted_and_rerun"] == 1
    assert not any(t.state.name == "RUNNING" for t in after.trials)


def test_two_local_workers_share_one_journal(out: Path) -> None:
    spec = spec_with(trials=6)
    report = run_search(parse_search_spec(spec), output=out, workers=2, quiet=True).report
    assert (out / "study.journal").is_file() and not (out / "study.db").exists()
    counts = report["counts"]
    # running trials of the other worker count as spent; one extra only if both start a
    # trial in the same instant
    assert 6 <= counts["counted"] == counts["complete"] <= 7
    numbers = [t["number"] for t in report["trials"]]
    assert numbers == list(range(len(numbers)))
    assert all(t["state"] == "complete" for t in report["trials"])


def test_a_question_mark_or_hash_in_the_output_keeps_the_study_inside(tmp_path: Path) -> None:
    out = tmp_path / "run?v=2#b"
    run_search(parse_search_spec(spec_with(trials=1)), output=out, quiet=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run?v=2#b"]
    assert (out / "study.db").is_file()
    again = run_search(parse_search_spec(spec_with(trials=2)), output=out, quiet=True)
    assert len(again.study.trials) == 2  # the same study, continued


def test_ctrl_c_keeps_the_finished_trials_and_the_interrupted_one_runs_again(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import netchisel.search.study as study_module
    from netchisel.core.errors import Interrupted

    real, calls = study_module.evaluate_candidate, []

    def stopped_on_the_third(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "evaluate_candidate", stopped_on_the_third)
    with pytest.raises(Interrupted, match=r"the finished trials are kept in .*; run the same"):
        run_search(parse_search_spec(spec_with(trials=4)), output=out, quiet=True)
    monkeypatch.setattr(study_module, "evaluate_candidate", real)
    result = run_search(parse_search_spec(spec_with(trials=4)), output=out, quiet=True)
    trials = result.study.trials
    assert [t.state.name for t in trials] == [
        "COMPLETE",
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "COMPLETE",
    ]
    assert trials[2].user_attrs["interrupted"] is True
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params
    assert result.report["counts"]["counted"] == 4


def test_an_output_under_a_file_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(ConfigError, match="notes is a file, not a directory: choose another"):
        run_search(parse_search_spec(spec_with()), output=tmp_path / "notes" / "out", quiet=True)
