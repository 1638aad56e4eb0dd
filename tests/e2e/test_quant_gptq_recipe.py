"""examples/recipes/quant_gptq_lm.yaml: it parses as it is, and its stages run end to end.

The real recipe quantizes the trained zoo gpt (bench/quant_llm.py measures it); here the same
stages run on a small untrained gpt over 16-byte windows, which is enough to check that GPTQ ->
evaluate leaves an int4 artifact that loads back to the same model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from netchisel.artifact.store import load
from netchisel.pipeline.recipe import load_recipe, parse_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.quantize.formats import Int4WeightOnlyLinear

RECIPE = Path(__file__).parents[2] / "examples" / "recipes" / "quant_gptq_lm.yaml"

pytestmark = pytest.mark.filterwarnings("ignore:.*they stay in float")


def test_recipe_parses_as_it_is() -> None:
    recipe = load_recipe(RECIPE)
    assert [name for name, _ in recipe.stages] == ["quantize.gptq", "evaluate"]
    gptq = recipe.stages[0][1]
    assert (gptq.bits, gptq.group_size, gptq.calibration_samples) == (4, 128, 128)  # type: ignore[attr-defined]


def test_recipe_stages_run_and_the_artifact_is_int4(tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPE.read_text())
    kwargs = {"n_layer": 1, "n_head": 2, "n_embd": 128, "block_size": 16}
    raw["model"] = {"zoo": "gpt", "pretrained": False, "kwargs": kwargs}
    raw["task"] = {"zoo": "text", "block_size": 16, "batch_size": 64}
    raw["stages"][0]["quantize.gptq"]["calibration_samples"] = 32
    raw["profile"] = {"batch_size": 2, "repeats": 2, "warmup": 1}
    result = run_recipe(parse_recipe(raw), output=tmp_path / "out", quiet=True)

    steps = {s["name"]: s for s in result.report["steps"]}
    records = steps["quantize.gptq"]["records"]
    assert set(records["layer_bits"].values()) == {4} and len(records["layer_bits"]) == 7
    errors, rtn = records["layer_output_error"], records["rtn_layer_output_error"]
    assert all(errors[n] <= rtn[n] for n in errors)
    # An untrained model predicts ~uniformly over 256 bytes; 4-bit weights keep it there.
    assert steps["evaluate"]["records"]["test_perplexity"] < 300.0
    original = steps["original"]["profile"]["bytes_on_disk"]
    assert steps["evaluate"]["profile"]["bytes_on_disk"] < 0.5 * original
    loaded = load(tmp_path / "out" / "model")
    assert isinstance(loaded.get_submodule("blocks.0.mlp.fc_in"), Int4WeightOnlyLinear)
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(loaded(x), result.model.eval()(x))
