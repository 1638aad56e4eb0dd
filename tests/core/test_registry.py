from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError
from netchisel.core.registry import handler, register, registered
from netchisel.stages import STAGES, get_stage, stage_names


def test_builtin_stages_are_registered() -> None:
    assert {"finetune", "evaluate"} <= set(stage_names())
    assert get_stage("finetune").config_class.__name__ == "FinetuneConfig"


def test_the_table_lists_exactly_the_registered_stages() -> None:
    assert {s.config_class for s in registered() if "example" not in s.name} == set(STAGES)
    assert len({c.NAME for c in STAGES}) == len(STAGES)


def test_unknown_stage_lists_known() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown stage 'prune.magic' \(known: .*evaluate.*finetune"
    ):
        get_stage("prune.magic")


def test_register_twice_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class TwiceConfig(StageConfig):
        NAME: ClassVar[str] = "example.twice"

    @register(TwiceConfig)
    def first(model, config, ctx):  # type: ignore[no-untyped-def]
        return model

    assert handler(TwiceConfig).apply is first
    with pytest.raises(ValueError, match="registered twice"):

        @register(TwiceConfig)
        def second(model, config, ctx):  # type: ignore[no-untyped-def]
            return model


@pytest.mark.parametrize(
    ("entry", "config", "right"),
    [
        (nc.prune_, nc.quantize.RTNConfig(bits=8), "netchisel.quantize_"),
        (nc.quantize_, nc.prune.UnstructuredConfig(), "netchisel.prune_"),
        (nc.factorize_, nc.prune.UnstructuredConfig(), "netchisel.prune_"),
        (nc.prune_, nc.factorize.SVDConfig(rank=2), "netchisel.factorize_"),
        (nc.quantize_, get_stage("finetune").config_class(), "run it in a recipe"),
    ],
)
def test_a_family_entry_refuses_another_familys_config(entry, config, right) -> None:  # type: ignore[no-untyped-def]
    net = nn.Sequential(nn.Linear(4, 4))
    before = net[0].weight.clone()
    with pytest.raises(ConfigError, match=right):
        entry(net, config)
    assert torch.equal(net[0].weight, before)
