"""The three dynamic example recipes run end to end through the pipeline, as `netchisel run`
runs them: the stage's options pass the recipe loader and the stage context, and the artifact
loads back. The real recipes train for about a minute each (bench/dynamic_*.py measures their
settings); here the same stages run on fresh small models with a few steps (the width
recipe on the 8x8 digits instead of digits32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from netchisel.artifact.store import load
from netchisel.pipeline.recipe import parse_recipe
from netchisel.pipeline.runner import run_recipe

EXAMPLES = Path(__file__).parents[2] / "examples" / "recipes"

SHRINK: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "early_exit_mnist1d": (
        {"zoo": "mnist1d_deep_cnn", "pretrained": False},
        {"steps": 5, "max_drop": 100.0},
    ),
    "width_digits_cnn": (
        {"zoo": "cnn", "pretrained": False, "kwargs": {"width": 8, "image_size": 8}},
        {"steps": 3, "gate_steps": 3, "max_drop": 100.0, "calibrate_norms": 64},
    ),
    "moe_gpt": (
        {"zoo": "gpt", "pretrained": False, "kwargs": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        {"calibration_samples": 4, "router_steps": 3, "finetune_steps": 2},
    ),
}


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_the_dynamic_example_recipe_runs_and_its_artifact_loads(name: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    model, options = SHRINK[name]
    raw["model"] = model
    if raw["task"] == "digits32":
        raw["task"] = "digits"  # the same images at 8x8: a 16th of the convolutions
    _, stage, _ = raw["stages"]
    (stage_name,) = stage
    stage[stage_name].update(options)
    raw["stages"] = [stage]
    raw["profile"] = {"batch_size": 1, "latency": False}
    result = run_recipe(parse_recipe(raw), output=tmp_path / "out", quiet=True)

    records = {s["name"]: s for s in result.report["steps"]}[stage_name]["records"]
    assert records["dynamic"]  # the trade-off the report draws
    if stage_name == "dynamic.moe":
        assert set(records["routing"]) == {"blocks.0.mlp"}
    else:
        shares = records.get("exit_fractions") or records["width_fractions"]
        assert sum(shares) == pytest.approx(1.0)
        assert 0.0 < records["expected_macs"] <= records["static_macs"] * 1.01
    assert type(load(tmp_path / "out" / "model")).__name__ in {
        "EarlyExitModel",
        "WidthModel",
        "MoEModel",
    }
