from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.prune.penalty import (
    PenaltyConfig,
    group_lasso,
    group_rms,
    group_sq_norms,
    growing_strength,
    prune_penalty,
)
from netchisel.stages import get_stage
from tests.prune.test_schedule import tiny_net, tiny_task


def test_group_norms_cover_the_filter_and_its_bias() -> None:
    w = torch.arange(24.0).reshape(2, 3, 2, 2)
    b = torch.tensor([1.0, -2.0])
    sq = group_sq_norms(w, b)
    assert sq.tolist() == [float((w[0] ** 2).sum() + 1), float((w[1] ** 2).sum() + 4)]
    assert float(group_lasso(w, b)) == pytest.approx(math.sqrt(13) * float(sq.sqrt().sum()))
    assert group_rms(w, b).tolist() == pytest.approx((sq / 13).sqrt().tolist())
    assert [growing_strength(s, 0.01, 5, 0.02) for s in (4, 5, 10, 50)] == [0.0, 0.01, 0.02, 0.02]


def _run(**values: object) -> tuple[nn.Module, Context]:
    net = tiny_net()
    ctx = Context(tiny_task(), quiet=True)
    base = {"sparsity": 0.5, "steps": 120, "lr": 1e-2}
    prune_penalty(net, PenaltyConfig.from_dict({**base, **values}), ctx)
    return net, ctx


@pytest.mark.parametrize(
    ("method", "strength"), [("group_lasso", 3e-3), ("growing", 1e-2)], ids=["lasso", "growing"]
)
def test_penalty_shrinks_the_groups_it_prunes(method: str, strength: float) -> None:
    _, plain = _run(strength=0.0, method=method)
    net, ctx = _run(strength=strength, method=method, grow_every=5)
    r = ctx.records
    # the penalty drove the zeroed groups down, far more than training alone did
    assert r["zeroed_group_rms_after"] < 0.5 * r["zeroed_group_rms_before"]
    assert r["zeroed_group_rms_after"] < 0.5 * plain.records["zeroed_group_rms_after"]
    assert r["zeroed_group_rms_after"] < 0.5 * r["kept_group_rms_after"]
    assert r["sparsity"] == 0.5
    assert ctx.task is not None and ctx.task.evaluate(net)["accuracy"] >= 85.0


def test_zeroed_groups_are_exact_zeros_and_the_output_layer_is_left_whole() -> None:
    net, ctx = _run(strength=3e-3)
    for i in (0, 2):
        layer = net[i]
        dead = (layer.weight == 0).all(dim=1)
        assert int(dead.sum()) == 16  # half of 32 neurons
        assert bool((layer.bias[dead] == 0).all())
        assert f"{i}.bias" in masks_of(net)
    assert "4.weight" not in masks_of(net) and int((net[4].weight == 0).sum()) == 0
    assert ctx.records["layer_sparsity"] == {"0": 0.5, "2": 0.5}


def test_global_scope_and_finetune_keep_the_groups_zero() -> None:
    net, ctx = _run(strength=3e-3, scope="global", sparsity=0.25, finetune_steps=20)
    dead = sum(int((net[i].weight == 0).all(dim=1).sum()) for i in (0, 2))
    assert dead == 16 and ctx.records["sparsity"] == 0.25


def test_weights_pruned_before_stay_pruned() -> None:
    net = tiny_net()
    earlier = torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(net, "0.weight", earlier)
    config = PenaltyConfig(steps=20, strength=3e-3, sparsity=0.25, lr=1e-2)
    prune_penalty(net, config, Context(tiny_task(), quiet=True))
    assert bool((net[0].weight[~earlier] == 0).all())
    assert int((net[0].weight == 0).all(dim=1).sum()) >= 8


def test_the_only_layer_is_not_pruned_unless_named() -> None:
    task = tiny_task()
    with pytest.raises(ConfigError, match="name it in layers"):
        prune_penalty(nn.Sequential(nn.Linear(16, 4)), PenaltyConfig(steps=2), Context(task))
    net = nn.Sequential(nn.Linear(16, 4))
    prune_penalty(net, PenaltyConfig(steps=2, layers=("0",)), Context(task, quiet=True))
    assert int((net[0].weight == 0).all(dim=1).sum()) == 2


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"strength": -1.0}, "strength"),
        ({"grow_every": 0}, "grow_every"),
        ({"steps": 0}, "steps"),
        ({"finetune_steps": -2}, "finetune_steps"),
        ({"method": "l0"}, "method"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PenaltyConfig.from_dict(values)


def test_stage_is_registered() -> None:
    assert get_stage("prune.penalty").config_class is PenaltyConfig
