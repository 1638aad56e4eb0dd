"""Every shipped recipe (examples and the demo) parses: known stages, valid configs."""

from importlib import resources
from pathlib import Path

import pytest
import yaml

from netchisel.pipeline.recipe import load_recipe, parse_recipe

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_recipe_parses(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages


@pytest.mark.parametrize(("demo", "model"), [("demo", "cnn"), ("demo_resnet", "resnet")])
def test_demo_recipes_prune_distill_then_quantize(demo: str, model: str) -> None:
    text = resources.files("netchisel").joinpath(f"recipes/{demo}.yaml").read_text()
    recipe = parse_recipe(yaml.safe_load(text), demo)
    names = [name for name, _ in recipe.stages]
    assert recipe.model.ref == model
    assert names.index("prune.structured") < names.index("distill")
    assert names.index("distill") < names.index("quantize.static_int8")


def test_there_is_a_recipe_per_family() -> None:
    stems = {p.stem for p in EXAMPLES}
    assert len(EXAMPLES) >= 10
    assert {"quant_static_cnn", "quant_gptq_lm", "deep_compression_mlp"} <= stems
