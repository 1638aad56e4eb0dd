"""A search over a dynamic stage's options, like any other stage's: early exit's accuracy
budget and exit point, optimised for accuracy against the expected MACs per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netchisel.search.spec import parse_search_spec
from netchisel.search.study import run_search

SPEC: dict[str, Any] = {
    "name": "exits1d",
    "space": {"max_drop": [0.0, 100.0], "exit": ["1", "4"]},
    "recipe": {
        "model": {"builder": "tests._models_1d:cnn1d"},
        "task": {"builder": "tests._models_1d:task_1d"},
        "stages": [
            {"dynamic.early_exit": {"exits": ["$exit"], "max_drop": "$max_drop", "steps": 3}}
        ],
        "profile": {"batch_size": 1, "latency": False},
    },
    "objectives": ["accuracy", "expected_macs"],
    "strategy": "grid",
    "trials": 4,
}


def test_a_search_tunes_early_exit_options_against_expected_macs(tmp_path: Path) -> None:
    result = run_search(parse_search_spec(SPEC), output=tmp_path / "s", quiet=True)
    report = result.report
    assert report["counts"]["complete"] == 4
    trials = {
        (t["candidate"]["exit"], t["candidate"]["max_drop"]): t["metrics"] for t in report["trials"]
    }
    static = 1 * 25 * 5 * 18 + 25 * 25 * 3 * 16 + 25 * 8 * 10  # the backbone alone, per sample
    for exit_after in ("1", "4"):
        strict, loose = trials[(exit_after, 0.0)], trials[(exit_after, 100.0)]
        # Any accuracy allowed: every sample leaves at the exit, which costs less than the
        # backbone; no drop allowed costs at least as much.
        assert loose["expected_macs"] < static
        assert strict["expected_macs"] >= loose["expected_macs"]
    # An exit after the first conv is cheaper to leave at than one after the second.
    assert trials[("1", 100.0)]["expected_macs"] < trials[("4", 100.0)]["expected_macs"]
