"""Every shipped search spec (examples/search/*.yaml) parses, and the benchmark specs mean
what their benchmarks say: the zoo ResNet-20 is a point of the NAS spec, and the policy spec
has one ratio per channel group of the zoo ResNet-20 under a limit of 20% of its MACs.

Nothing here trains: a policy spec's model is traced untrained (its layers, not its weights,
make the space), and `zoo.train` is patched to fail if anything asks for a trained model.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from netchisel.measure import count_flops
from netchisel.pipeline.sources import load_model
from netchisel.prune.structured import StructuredConfig
from netchisel.search.spec import SearchSpec, parse_search_spec
from netchisel.zoo import models, train

EXAMPLES = [
    path
    for path in sorted((Path(__file__).parents[2] / "examples" / "search").glob("*.yaml"))
    if "darts" not in yaml.safe_load(path.read_text())  # DARTS specs: test_darts_pipeline.py
]
RESNET20_MACS = 40_518_272
IMAGE = (torch.zeros(1, 1, 32, 32),)


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a search spec test asked for a trained zoo model")

    monkeypatch.setattr(train, "_train", refuse)


def untrained(data: dict[str, Any]) -> dict[str, Any]:
    """The spec with its zoo model built untrained (same layers, so the same policy space)."""
    model = data["recipe"]["model"]
    if isinstance(model, str):
        model = {"zoo": model}
    if "zoo" in model:
        data["recipe"]["model"] = {**model, "pretrained": False}
    return data


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parsed(path: Path) -> SearchSpec:
    return parse_search_spec(untrained(yaml.safe_load(path.read_text())), path.stem)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_search_spec_parses(path: Path) -> None:
    spec = parsed(path)
    assert spec.name == path.stem
    assert spec.output == Path("runs") / path.stem
    recipe = spec.recipe(spec.space.sample(random.Random(1)), Path("unused"))
    assert recipe.task is not None and recipe.stages


def test_there_are_the_three_search_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"hpo_mlp", "nas_digits32", "policy_resnet"}


def test_nas_spec_holds_the_zoo_resnet20() -> None:
    spec = parsed(EXAMPLES[[p.stem for p in EXAMPLES].index("nas_digits32")])
    point: dict[str, Any] = {"width_mult": 1.0}
    for i in (1, 2, 3):
        point |= {
            f"s{i}_blocks": 3,
            f"s{i}_kernel": 3,
            **{f"s{i}_op{j}": "conv" for j in (1, 2, 3)},
        }
    for name, dim in spec.space.dimensions.items():  # exactly a candidate the space proposes
        assert (point[name] in dim.values()) if dim.active(point) else (name not in point), name
    model, zoo = load_model(spec.recipe(point, Path("unused")).model), models.build("resnet")
    assert params(model) == params(zoo) == 272_186
    assert count_flops(model, IMAGE).macs == count_flops(zoo, IMAGE).macs == RESNET20_MACS
    assert spec.objectives.names() == ["accuracy", "latency_ms"]
    assert spec.objectives.directions() == ["maximize", "minimize"]


def test_policy_spec_has_a_ratio_per_resnet20_group_under_a_fifth_of_its_macs() -> None:
    spec = parsed(EXAMPLES[[p.stem for p in EXAMPLES].index("policy_resnet")])
    assert len(spec.space.dimensions) == 12
    assert "sparsity/layer3\\.0\\.shortcut\\.0" in spec.space.dimensions
    (limit,) = spec.objectives.limits
    assert limit.metric == "macs"
    assert limit.max == math.floor(0.2 * count_flops(models.build("resnet"), IMAGE).macs)
    (prune, config), (finetune, _) = spec.recipe(
        spec.space.sample(random.Random(0)), Path("x")
    ).stages
    assert (prune, finetune) == ("prune.structured", "finetune")
    assert isinstance(config, StructuredConfig) and len(config.per_layer) == 12
    assert set(config.per_layer.values()) <= {0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7}
