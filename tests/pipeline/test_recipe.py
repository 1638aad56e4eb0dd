from __future__ import annotations

from pathlib import Path

import pytest

from netchisel.core.errors import ConfigError
from netchisel.core.finetune import FinetuneConfig
from netchisel.pipeline.recipe import load_recipe, parse_recipe


def test_full_recipe_parses() -> None:
    r = parse_recipe(
        {
            "name": "x",
            "model": {"zoo": "cnn", "pretrained": False, "kwargs": {"width": 8}},
            "task": {"zoo": "digits32", "batch_size": 32},
            "stages": ["evaluate", {"finetune": {"epochs": 2, "lr": 0.01}}],
            "output": "out/x",
            "profile": {"batch_size": 8, "latency": False},
            "seed": 3,
        }
    )
    assert r.model.kwargs == {"width": 8} and r.model.pretrained is False
    assert r.task is not None and r.task.kwargs == {"batch_size": 32}
    assert r.stages[1] == ("finetune", FinetuneConfig(epochs=2.0, lr=0.01))
    assert r.profile.batch_size == 8 and r.seed == 3 and str(r.output) == "out/x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"model": "cnn", "stagse": []},
            r"recipe: unknown key 'stagse' \(known: name, model, task, stages",
        ),
        ({"stages": []}, "'model' is required"),
        ({"model": "cnn", "stages": ["prune.nope"]}, r"unknown stage 'prune.nope' \(known: "),
        (
            {"model": "cnn", "stages": [{"finetune": {"epoch": 1}}]},
            r"recipe.stages\[0\].finetune: unknown key 'epoch' \(known: version, epochs, steps",
        ),
        ({"model": "cnn", "stages": [{"finetune": {"lr": -1}}]}, "finetune.lr: must be > 0"),
        ({"model": {"zoo": "cnn", "artifact": "x"}}, "give exactly one of zoo, builder, artifact"),
        ({"model": {"zoo": "cnn", "widht": 3}}, r"recipe.model: unknown key 'widht'"),
        (
            {"model": "cnn", "profile": {"batch_size": 0}},
            "batch_size, threads and repeats must be >= 1",
        ),
        ({"model": "cnn", "stages": "evaluate"}, "recipe.stages: expected a list"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_recipes_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(data)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cnn\nstages: [evaluate\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_recipe(bad)


def test_nan_and_devices_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^recipe.stages\[0\].finetune: lr: nan is not a number"):
        parse_recipe({"model": "cnn", "stages": [{"finetune": {"lr": float("nan")}}]})
    with pytest.raises(
        ConfigError, match="lr: nan is not a number"
    ):  # YAML 1.1 reads "nan" as text
        parse_recipe({"model": "cnn", "stages": [{"finetune": {"lr": "nan"}}]})
    with pytest.raises(ConfigError, match=r"recipe.device: 'tpu:x' is not a device"):
        parse_recipe({"model": "cnn", "device": "tpu:x"})
    assert parse_recipe({"model": "cnn", "device": "cpu"}).device == "cpu"


def test_yaml_mistakes_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("model: cnn\nstages:\n  - finetune:\n      lr: 0.1\n      lr: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"key 'lr' is written twice \(line 4 and line 5\): keep one"
    ):
        load_recipe(f)
    # a merge key may be overridden: that is YAML's own rule, not a duplicate
    f.write_text("base: &b {epochs: 1}\nmodel: cnn\nstages: [{finetune: {<<: *b, epochs: 2}}]\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):
        load_recipe(f)
    f.write_text("model: cnn\nseed: .NaN\n")
    with pytest.raises(ConfigError, match=r"r.yaml: seed: .nan at line 2 is not a number"):
        load_recipe(f)
    f.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 10\): save it as UTF-8"):
        load_recipe(f)


def test_a_key_written_twice_on_one_line_names_the_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.yaml"
    path.write_text("model: mlp\nstages:\n  - finetune: {epochs: 2, lr: 0.003, lr: 0.1}\n")
    with pytest.raises(
        ConfigError, match=r"'lr' is written twice \(line 3 column 27 and line 3 column 38\)"
    ):
        load_recipe(path)
