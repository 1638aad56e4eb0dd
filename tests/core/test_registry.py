from __future__ import annotations

import pytest

from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError
from netchisel.core.registry import get_stage, register, stage_names


def test_builtin_stages_are_registered() -> None:
    assert {"finetune", "evaluate"} <= set(stage_names())
    assert get_stage("finetune").config_class.__name__ == "FinetuneConfig"


def test_unknown_stage_lists_known() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown stage 'prune.magic' \(known: .*evaluate.*finetune"
    ):
        get_stage("prune.magic")


def test_register_twice_is_refused() -> None:
    @register("example.twice", StageConfig)
    def first(model, config, ctx):  # type: ignore[no-untyped-def]
        return model

    with pytest.raises(ValueError, match="registered twice"):

        @register("example.twice", StageConfig)
        def second(model, config, ctx):  # type: ignore[no-untyped-def]
            return model
