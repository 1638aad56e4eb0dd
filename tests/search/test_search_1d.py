"""A tiny search over a 1-D CNN (a builder model and task): the structured-pruning ratio; each
trial prunes, fine-tunes, quantizes to static int8 and is profiled (exact int8 MACs), and the
best exports a loadable artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from netchisel.artifact.store import load
from netchisel.search.spec import parse_search_spec
from netchisel.search.study import run_search
from tests._models_1d import inputs_1d

SPEC: dict[str, Any] = {
    "name": "tiny1d",
    "space": {"ratio": [0.25, 0.5]},
    "recipe": {
        "model": {"builder": "tests._models_1d:cnn1d", "kwargs": {"pool": "adaptive"}},
        "task": {"builder": "tests._models_1d:task_1d"},
        "stages": [
            {"prune.structured": {"ratio": "$ratio"}},
            {"finetune": {"steps": 2, "lr": 0.01}},
            {"quantize.static_int8": {"calibration_samples": 32}},
        ],
        "profile": {"batch_size": 1, "latency": False},
    },
    "objectives": ["accuracy", "macs"],
    "strategy": "grid",
    "trials": 2,
}


def test_search_over_a_1d_model(tmp_path: Path) -> None:
    result = run_search(parse_search_spec(SPEC), output=tmp_path / "s", quiet=True)
    report = result.report
    assert report["counts"]["complete"] == 2
    macs = {t["candidate"]["ratio"]: t["metrics"]["macs"] for t in report["trials"]}
    # keep 12 (ratio 0.5) or 18 (0.25) of 25 channels; AdaptiveAvgPool1d(5) feeds the Linear
    assert macs == {
        0.5: 12 * 18 * 5 + 12 * 16 * 12 * 3 + 12 * 5 * 10,
        0.25: 18 * 18 * 5 + 18 * 16 * 18 * 3 + 18 * 5 * 10,
    }
    exported = report["exported"][0]["path"]
    model = load(result.directory / exported)
    with torch.no_grad():
        assert model(inputs_1d(4)).shape == (4, 10)
