"""Sources: references parsed and loaded; a stage's `teacher:` reaches it as `ctx.teacher`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.distill import DistillConfig
from netchisel.pipeline.recipe import parse_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.pipeline.sources import (
    SourceSpec,
    load_model,
    parse_source,
    stage_context,
    teacher_source,
)
from netchisel.stages import get_stage, stage_names
from netchisel.zoo import data

# An mlp over 8x8 digits with one hidden layer of 32: 64*32 + 32 + 32*10 + 10 parameters.
TEACHER_PARAMS = 2410


def _teacher() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_a_teacher_source_is_parsed_like_a_model() -> None:
    value = {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [32]}}
    assert teacher_source(DistillConfig(teacher=value), "distill") == SourceSpec(
        "zoo", "mlp", {"hidden": [32]}, pretrained=False
    )
    assert teacher_source(DistillConfig(), "distill") is None
    assert parse_source("recipe.model", "cnn", ("zoo",)) == SourceSpec("zoo", "cnn")


def test_a_malformed_teacher_fails_as_the_recipe_loads() -> None:
    stage = {"distill": {"teacher": {"zoo": "mlp", "weights": 1}}}
    with pytest.raises(
        ConfigError, match=r"recipe\.stages\[0\]\.distill\.teacher: unknown key 'weights'"
    ):
        parse_recipe({"model": "mlp", "stages": [stage]})


def test_stage_context_hands_in_the_named_teacher_and_shares_records() -> None:
    ctx = Context(task=None, teacher=nn.Linear(2, 2), quiet=True)
    assert stage_context(DistillConfig(), ctx) is ctx  # the original model teaches
    config = DistillConfig(teacher={"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [32]}})
    inner = stage_context(config, ctx)
    assert inner.teacher is not None and not inner.teacher.training
    assert sum(p.numel() for p in inner.teacher.parameters()) == TEACHER_PARAMS
    inner.record(seen=1)
    assert ctx.records == {"seen": 1}


def test_a_saved_artifact_can_teach(tmp_path: Path) -> None:
    import netchisel as nc

    task = data.task("digits", batch_size=16)
    path = nc.save(_teacher(), tmp_path / "teacher")
    assert sum(p.numel() for p in load_model(SourceSpec("artifact", str(path))).parameters()) == (
        TEACHER_PARAMS
    )
    config = DistillConfig.from_dict({"teacher": {"artifact": str(path)}, "steps": 3})
    ctx = Context(task, quiet=True)  # no ctx.teacher: the artifact is the teacher
    get_stage("distill")(_teacher(), config, stage_context(config, ctx))
    assert ctx.records["teacher_params"] == TEACHER_PARAMS


def test_the_runner_loads_a_distill_stage_teacher(tmp_path: Path) -> None:
    teacher = {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [32]}}
    recipe = parse_recipe(
        {
            "model": {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [16]}},
            "task": {"zoo": "digits", "batch_size": 64},
            "stages": [{"distill": {"teacher": teacher, "steps": 2}}],
            "profile": {"batch_size": 8, "latency": False},
        }
    )
    report = run_recipe(recipe, output=tmp_path / "run", quiet=True).report
    records = report["steps"][1]["records"]
    assert records["teacher_params"] == TEACHER_PARAMS
    assert records["student_params"] == 64 * 16 + 16 + 16 * 10 + 10


def test_only_a_model_valued_field_is_called_teacher() -> None:
    # The loader reads any stage's `teacher:` as a model (`teacher_source`): dynamic.width's
    # choice of teacher, once named `teacher`, failed in every recipe ("unknown zoo model
    # 'original'"). A stage with a `teacher` field must mean a model by it.
    holders = [
        get_stage(name).config_class
        for name in stage_names()
        if "teacher" in {f.name for f in dataclasses.fields(get_stage(name).config_class)}
    ]
    assert holders == [DistillConfig]
