"""examples/recipes/deep_compression_mlp.yaml: it parses as it is, and its stages run end to end.

The real recipe trains for minutes (bench/quant_deep_compression.py measures it); here the same
stages run on a small untrained MLP with short training, which is enough to check that prune
-> k-means -> evaluate leaves a Huffman-coded artifact that loads back to the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from netchisel.artifact.store import load
from netchisel.pipeline.recipe import load_recipe, parse_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.quantize.formats import ClusteredLinear
from netchisel.zoo import data

RECIPE = Path(__file__).parents[2] / "examples" / "recipes" / "deep_compression_mlp.yaml"


def test_recipe_parses_as_it_is() -> None:
    recipe = load_recipe(RECIPE)
    assert [name for name, _ in recipe.stages] == [
        "prune.iterative",
        "quantize.kmeans",
        "evaluate",
    ]
    kmeans = recipe.stages[1][1]
    assert kmeans.bits == 5 and kmeans.codec == "huffman"  # type: ignore[attr-defined]
    assert kmeans.float16  # type: ignore[attr-defined]


def test_recipe_stages_run_and_the_artifact_is_huffman_coded(tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["model"] = {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [64, 32]}}
    prune, kmeans, evaluate = raw["stages"]
    # A narrow MLP trained for 150 steps cannot lose 95% of its weights: prune 80% here.
    prune["prune.iterative"].update(
        sparsity=0.8, rounds=2, finetune_steps=40, train_steps=150, lr=3e-3
    )
    kmeans["quantize.kmeans"].update(finetune_steps=40)
    raw["stages"] = [prune, kmeans, evaluate]
    raw["profile"] = {"batch_size": 8, "repeats": 2, "warmup": 1}
    result = run_recipe(parse_recipe(raw), output=tmp_path / "out", quiet=True)

    steps = {s["name"]: s for s in result.report["steps"]}
    assert steps["quantize.kmeans"]["records"]["layer_bits"] == {"fc1": 5, "fc2": 5, "fc3": 5}
    assert steps["evaluate"]["records"]["test_accuracy"] > 85.0
    original = steps["original"]["profile"]["bytes_on_disk"]
    pruned = steps["prune.iterative"]["profile"]["bytes_on_disk"]
    final = steps["evaluate"]["profile"]["bytes_on_disk"]
    assert final < pruned < 0.4 * original
    manifest = json.loads((tmp_path / "out" / "model" / "manifest.json").read_text())
    assert {manifest["tensors"][f"fc{i}.indices"]["codec"] for i in (1, 2, 3)} == {"huffman"}
    loaded = load(tmp_path / "out" / "model")
    assert isinstance(loaded.get_submodule("fc1"), ClusteredLinear)
    x = data.task("digits").example_inputs(32)[0]
    assert torch.equal(loaded(x), result.model.eval()(x))
