"""A search over a dynamic stage's options, like any other stage's: early exit's accuracy
budget and exit point, per-sample width's narrowest width and budget, and a mixture of experts'
expert count and top-k, optimised for accuracy against the expected MACs per sample."""

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


def _search(
    tmp_path: Path, space: dict[str, Any], recipe: dict[str, Any], metric: str = "accuracy"
) -> dict[Any, Any]:
    spec = {**SPEC, "space": space, "recipe": {**SPEC["recipe"], **recipe}}
    spec["objectives"] = [metric, "expected_macs"]
    report = run_search(parse_search_spec(spec), output=tmp_path / "s", quiet=True).report
    assert report["counts"]["complete"] == 4
    return {tuple(t["candidate"].values()): t["metrics"] for t in report["trials"]}


def test_a_search_tunes_the_widths_and_the_gate_budget(tmp_path: Path) -> None:
    width = {"widths": ["$narrow", 1.0], "max_drop": "$max_drop", "steps": 3, "gate_steps": 3}
    trials = _search(
        tmp_path,
        {"narrow": [0.25, 0.5], "max_drop": [0.0, 100.0]},
        {"stages": [{"dynamic.width": {**width, "calibrate_norms": 32}}]},
    )
    # Any accuracy allowed: every sample at the narrow width, the narrower the cheaper.
    assert trials[(0.25, 100.0)]["expected_macs"] < trials[(0.5, 100.0)]["expected_macs"]
    assert trials[(0.5, 100.0)]["expected_macs"] < trials[(0.5, 0.0)]["expected_macs"]


def test_a_search_tunes_the_expert_count_and_top_k(tmp_path: Path) -> None:
    moe = {"method": "switch", "init": "scratch", "experts": "$experts", "top_k": "$top_k"}
    trials = _search(
        tmp_path,
        {"experts": [2, 4], "top_k": [1, 2]},
        {
            "model": {
                "zoo": "gpt",
                "pretrained": False,
                "kwargs": {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16},
            },
            "task": {"zoo": "text", "kwargs": {"block_size": 16}},
            "stages": [{"dynamic.moe": {**moe, "expert_hidden": 8, "steps": 2, "batch_size": 4}}],
        },
        metric="perplexity",
    )
    # Top-2 runs two experts per token, top-1 one: more active MACs whatever E is.
    for experts in (2, 4):
        assert trials[(experts, 2)]["expected_macs"] > trials[(experts, 1)]["expected_macs"]
