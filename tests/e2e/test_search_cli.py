"""`netchisel search` as a user meets it: help, a run, a broken spec, a wrong path."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_cli import cli
from tests.search.test_study import spec_with


def test_search_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "search", "--help")
    assert code == 0
    for option in ("--workers", "--storage", "--trials", "--output", "--quiet"):
        assert option in out
    assert "-q, --quiet      No progress bars." in out  # a flag shows no value


def test_search_prints_the_best_and_writes_the_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_with(trials=2)))
    code, out, err = cli(capsys, "search", str(spec), "--output", str(tmp_path / "run"), "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["counts"]["complete"] == 2
    assert "netchisel search: tiny (2 trials: 2 complete, 0 pruned, 0 failed)" in out
    assert "best:" in out and "report.html" in out


def test_running_again_says_it_continues(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_with(trials=2)))
    run = str(tmp_path / "run")
    assert cli(capsys, "search", str(spec), "--output", run, "-q")[0] == 0
    code, out, err = cli(capsys, "search", str(spec), "--output", run, "--trials", "3")
    assert code == 0, err
    assert "continuing search 'tiny': 2 of 3 trials already done" in out + err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["counts"]["complete"] == 3
    (tmp_path / "run" / "report.md").unlink()
    code, out, _ = cli(capsys, "report", run)  # a search's report re-renders too
    assert code == 0 and "tiny (3 trials: 3 complete" in out
    assert "## Pareto front" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "search spec {path} does not exist"),
        ("space: [\n", "is not valid YAML at line"),
        (yaml.safe_dump(spec_with(strategy="annealing")), "unknown strategy 'annealing'"),
    ],
)
def test_a_broken_spec_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_text(content)
    code, _, err = cli(capsys, "search", str(path), "--output", str(tmp_path / "run"))
    assert code == 2
    assert err.count("\n") == 1 and message.format(path=path) in err
    assert not (tmp_path / "run").exists()


def test_the_search_summary_fits_80_columns_and_marks_the_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import netchisel.cli
    from netchisel.search.report import write_search_report
    from netchisel.search.spec import parse_search_spec
    from tests.search.test_report import _study

    spec = parse_search_spec(spec_with(objectives=["accuracy", "latency_ms"], export=2))
    report = write_search_report(_study(), spec, tmp_path, "sqlite:///study.db")
    console = Console(width=80, file=io.StringIO())
    monkeypatch.setattr(netchisel.cli, "console", console)
    netchisel.cli._print_search_summary(report, tmp_path)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│ ")]
    assert [r for r in rows if r] == ["0 *", "1 *", "3"]
    assert "1.1 (1-1.3)" in out and "Pareto front: 3 trial(s); * marks the 2 exported." in out
    assert "overlapping ranges are ties" in out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"constraints": {"latncy_ms": {"max": 2.0}}},
            "search.constraints.latncy_ms: no trial measures 'latncy_ms'; the task gives "
            "accuracy, loss and the profile params, params_nonzero, ",
        ),
        (
            {"objectives": ["accuracy", "latency_ms"]},
            "search.objectives: no trial measures 'latency_ms' (latency_ms needs profile: "
            "{latency: true})",
        ),
        (
            {"objectives": [{"top1": "maximize"}]},
            "search.objectives: no trial measures 'top1'",
        ),
    ],
    ids=["constraint", "latency-off", "objective"],
)
def test_an_unknown_metric_fails_before_trial_1_and_the_fixed_spec_runs_in_the_same_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], message: str
) -> None:
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(yaml.safe_dump(spec_with(**changes)))
    run = ("search", str(spec), "--output", str(out), "--trials", "1", "-q")
    code, _, err = cli(capsys, *run)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()
    spec.write_text(yaml.safe_dump(spec_with()))
    code, _, err = cli(capsys, *run)
    assert (code, err) == (0, "")
    assert (out / "study.db").is_file()
