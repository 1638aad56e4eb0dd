"""examples/recipes/factorize_resnet.yaml parses, and its stages run on a tiny ResNet."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from netchisel.artifact.store import load
from netchisel.factorize import TuckerConfig
from netchisel.pipeline.recipe import load_recipe, parse_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.zoo import data

RECIPE = Path(__file__).parents[2] / "examples" / "recipes" / "factorize_resnet.yaml"


def test_recipe_parses_as_it_is() -> None:
    recipe = load_recipe(RECIPE)
    assert [name for name, _ in recipe.stages] == ["factorize.tucker", "distill", "evaluate"]
    assert recipe.stages[0][1] == TuckerConfig(
        param_ratio=0.5, layers=(r"layer\d\.\d+\.conv[12]",), recalibrate_bn=512
    )


def test_recipe_stages_run_on_a_tiny_resnet(tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["model"] = {"zoo": "resnet", "pretrained": False, "kwargs": {"depth": 8, "width": 8}}
    raw["stages"][0]["factorize.tucker"].update(param_ratio=0.3, recalibrate_bn=64)
    distill = raw["stages"][1]["distill"]
    del distill["epochs"]
    distill["steps"] = 3
    raw["profile"] = {"batch_size": 4, "latency": False}
    result = run_recipe(parse_recipe(raw), output=tmp_path / "out", quiet=True)
    steps = {s["name"]: s for s in result.report["steps"]}
    records = steps["factorize.tucker"]["records"]
    # depth 8: one block per stage, conv1 and conv2 each; all six shrink at 0.3.
    assert records["layers_factorized"] == 6 and records["param_ratio"] <= 0.3
    assert records["recalibrated_bn_samples"] == 64
    macs = [steps[k]["profile"]["macs"] for k in ("original", "factorize.tucker")]
    assert macs[1] < macs[0]
    loaded = load(tmp_path / "out" / "model")
    assert isinstance(loaded.get_submodule("layer1.0.conv1"), nn.Sequential)
    x = data.task("digits32").example_inputs(2)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
