from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.registry import handler
from netchisel.core.task import Task, classification_task
from netchisel.prune import schedule, unstructured
from netchisel.prune.schedule import (
    GradualConfig,
    IterativeConfig,
    agp_sparsity,
    agp_steps,
    prune_gradual,
    prune_iterative,
    rising_sparsities,
)
from netchisel.stages import get_stage

WEIGHTS = ("0.weight", "2.weight", "4.weight")


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def tiny_task() -> Task:
    """A learnable 4-class problem: the class is the largest of the first four features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = x[:, :4].argmax(dim=1)
    return classification_task({"train": TensorDataset(x, y), "val": TensorDataset(x, y)}, 64)


def total_weights(net: nn.Module) -> int:
    return sum(net.get_parameter(w).numel() for w in WEIGHTS)


def zeros(net: nn.Module) -> int:
    return sum(int((net.get_parameter(w) == 0).sum()) for w in WEIGHTS)


# -- pure schedules ---------------------------------------------------------------------------


def test_geometric_rounds_prune_the_same_fraction_of_what_remains() -> None:
    s = rising_sparsities(0.9, 4)
    assert s[-1] == 0.9 and s == sorted(s)
    remaining = [1.0] + [1.0 - x for x in s]
    ratios = [b / a for a, b in itertools.pairwise(remaining)]
    assert ratios == pytest.approx([0.1**0.25] * 4)
    assert rising_sparsities(0.8, 4, "linear") == [0.2, 0.4, 0.6, 0.8]
    with pytest.raises(ConfigError, match="rounds"):
        rising_sparsities(0.5, 0)


def test_agp_follows_the_cubic_formula() -> None:
    for t, expected in [(0, 0.1), (10, 0.1), (35, 0.9 - 0.8 * 0.5**3), (60, 0.9), (99, 0.9)]:
        got = agp_sparsity(t, initial=0.1, final=0.9, start=10, end=60)
        assert got == pytest.approx(expected, abs=1e-12)
    assert agp_steps(10, 60, 20) == [10, 30, 50, 60]
    assert agp_steps(0, 40, 10) == [0, 10, 20, 30, 40]


# -- prune.gradual ----------------------------------------------------------------------------


def test_gradual_reaches_the_exact_cubic_sparsity_at_every_pruning_step() -> None:
    net, task = tiny_net(), tiny_task()
    ctx = Context(task, quiet=True)
    config = GradualConfig(
        sparsity=0.8,
        initial_sparsity=0.1,
        steps=48,
        start_step=4,
        end_step=36,
        frequency=8,
        scope="global",
        lr=3e-3,
    )
    prune_gradual(net, config, ctx)
    n = total_weights(net)
    schedule = ctx.records["schedule"]
    assert [p["step"] for p in schedule] == [4, 12, 20, 28, 36]
    for point in schedule:
        progress = (point["step"] - 4) / 32
        cubic = 0.8 + (0.1 - 0.8) * (1 - progress) ** 3
        assert point["target"] == pytest.approx(cubic, abs=1e-12)
        assert point["sparsity"] == round(cubic * n) / n  # exactly the cubic count of zeros
    assert ctx.records["sparsity"] == round(0.8 * n) / n
    assert zeros(net) == round(0.8 * n)


def test_gradual_local_scope_prunes_every_layer_to_the_target() -> None:
    net, task = tiny_net(), tiny_task()
    prune_gradual(
        net, GradualConfig(sparsity=0.5, steps=20, frequency=5), Context(task, quiet=True)
    )
    for w in WEIGHTS:
        weight = net.get_parameter(w)
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


def test_gradual_never_revives_a_pruned_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    net, task = tiny_net(), tiny_task()
    history: dict[str, list[torch.Tensor]] = {w: [] for w in WEIGHTS}

    def spy(model: nn.Module, name: str, keep: torch.Tensor, fill: object = None) -> None:
        history[name].append(keep.clone())
        set_mask(model, name, keep)

    monkeypatch.setattr(unstructured, "set_mask", spy)
    config = GradualConfig(sparsity=0.75, steps=30, end_step=20, frequency=5, importance="random")
    ctx = Context(task, quiet=True)
    prune_gradual(net, config, ctx)
    for masks in history.values():
        assert len(masks) == 5
        for old, new in itertools.pairwise(masks):
            assert not bool((new & ~old).any())  # kept now implies kept before
    # Held entries are ranked first, so even random scores reach each target exactly.
    for point in ctx.records["schedule"]:
        expected = sum(round(point["target"] * net.get_parameter(w).numel()) for w in WEIGHTS)
        assert point["sparsity"] == expected / total_weights(net)


# -- prune.iterative --------------------------------------------------------------------------


def test_iterative_rounds_rise_to_the_target_and_keep_accuracy() -> None:
    net, task = tiny_net(), tiny_task()
    ctx = Context(task, quiet=True)
    config = IterativeConfig(
        sparsity=0.875, rounds=3, train_steps=80, finetune_steps=40, scope="global", lr=1e-2
    )
    prune_iterative(net, config, ctx)
    n = total_weights(net)
    rounds = ctx.records["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["sparsity"] for r in rounds] == [0.0] + [round(s * n) / n for s in (0.5, 0.75, 0.875)]
    assert zeros(net) == round(0.875 * n)
    assert rounds[0]["accuracy"] >= 90.0
    assert rounds[-1]["accuracy"] >= rounds[0]["accuracy"] - 5.0
    assert ctx.records["train_steps"] == 80 + 3 * 40


def test_iterative_keeps_masks_set_before_it() -> None:
    net, task = tiny_net(), tiny_task()
    earlier = torch.zeros(4, 32, dtype=torch.bool)
    earlier[:, :16] = True  # half of the last layer pruned by an earlier stage
    set_mask(net, "4.weight", earlier)
    config = IterativeConfig(sparsity=0.25, rounds=1, finetune_steps=5, lr=1e-3)
    prune_iterative(net, config, Context(task, quiet=True))
    assert bool((net[4].weight[:, 16:] == 0).all())


def held_values(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every held entry's value (NaN where the weight is free)."""
    out = {}
    for w, mask in masks_of(net).items():
        out[w] = torch.where(mask.keep, torch.nan, net.get_parameter(w).detach())
    return out


@pytest.mark.parametrize("mode", ["freeze", "freeze_initial"])
def test_iterative_freeze_holds_pruned_weights_at_their_values_through_training(
    mode: str,
) -> None:
    from netchisel.core.train import fit, train_settings

    task = tiny_task()
    net, twin = tiny_net(), tiny_net()
    initial = {w: net.get_parameter(w).detach().clone() for w in WEIGHTS}
    ctx = Context(task, quiet=True)
    config = IterativeConfig(
        sparsity=0.75, rounds=1, train_steps=20, finetune_steps=20, lr=1e-2, mode=mode
    )
    prune_iterative(net, config, ctx)
    # The same 20 training steps on a twin give the weights at the moment of pruning.
    fit(twin, task, train_settings(config, 20), ctx)
    at_pruning = {w: twin.get_parameter(w).detach() for w in WEIGHTS}
    expected = at_pruning if mode == "freeze" else initial
    for w in WEIGHTS:
        weight, keep = net.get_parameter(w).detach(), masks_of(net)[w].keep
        assert int((~keep).sum()) == round(0.75 * weight.numel())
        assert torch.equal(weight[~keep], expected[w][~keep])  # held exactly, not zero
        assert int((weight[~keep] == 0).sum()) == 0
        assert not torch.equal(weight[keep], at_pruning[w][keep])  # the rest trained on
    assert ctx.records["note"] == schedule.FREEZE_NOTE


def test_iterative_freeze_rounds_reach_each_sparsity_exactly() -> None:
    net, task = tiny_net(), tiny_task()
    ctx = Context(task, quiet=True)
    config = IterativeConfig(
        sparsity=0.875, rounds=3, finetune_steps=10, scope="global", lr=1e-2, mode="freeze"
    )
    prune_iterative(net, config, ctx)
    n = total_weights(net)
    # Frozen weights are not zero, yet they are ranked first: no round keeps one of them.
    assert [r["sparsity"] for r in ctx.records["rounds"]] == [0.0] + [
        round(s * n) / n for s in (0.5, 0.75, 0.875)
    ]
    assert zeros(net) == 0


def test_gradual_freeze_holds_each_weight_at_its_value_when_first_pruned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, task = tiny_net(), tiny_task()
    before: list[dict[str, torch.Tensor]] = []  # weights right before each pruning step
    held: list[dict[str, torch.Tensor]] = []  # what is held right after it
    prune_to = schedule.prune_to_

    def spy(model: nn.Module, *args: object, **kwargs: object) -> float:
        before.append({w: model.get_parameter(w).detach().clone() for w in WEIGHTS})
        reached = prune_to(model, *args, **kwargs)  # type: ignore[arg-type]
        held.append({w: ~masks_of(model)[w].keep for w in WEIGHTS})
        return reached

    monkeypatch.setattr(schedule, "prune_to_", spy)
    config = GradualConfig(sparsity=0.8, steps=40, end_step=24, frequency=8, mode="freeze")
    prune_gradual(net, config, Context(task, quiet=True))
    assert len(before) == 4
    for w in WEIGHTS:
        final = net.get_parameter(w).detach()
        assert int(held[-1][w].sum()) == round(0.8 * final.numel())
        # Each held entry has the value it had right before the step that first pruned it.
        expected = torch.full_like(final, torch.nan)
        for snap, mask in zip(reversed(before), reversed(held), strict=True):
            expected = torch.where(mask[w], snap[w], expected)
        assert torch.equal(final[held[-1][w]], expected[held[-1][w]])
        assert int((final[held[-1][w]] == 0).sum()) == 0


def test_gradual_freeze_initial_puts_pruned_weights_back_to_the_start() -> None:
    net, task = tiny_net(), tiny_task()
    initial = {w: net.get_parameter(w).detach().clone() for w in WEIGHTS}
    config = GradualConfig(sparsity=0.6, steps=30, end_step=20, frequency=5, mode="freeze_initial")
    prune_gradual(net, config, Context(task, quiet=True))
    for w, held in held_values(net).items():
        pruned = ~held.isnan()
        assert int(pruned.sum()) == round(0.6 * held.numel())
        assert torch.equal(held[pruned], initial[w][pruned])


def _failure_configs() -> list[object]:
    from netchisel.prune import LotteryConfig, PenaltyConfig, SparseTrainingConfig

    return [
        IterativeConfig(sparsity=0.5, rounds=2, finetune_steps=10),
        GradualConfig(sparsity=0.5, steps=30, end_step=20, frequency=5),
        LotteryConfig(sparsity=0.5, rounds=2, steps=10),
        SparseTrainingConfig(sparsity=0.5, steps=30, update_every=5),
        PenaltyConfig(sparsity=0.5, steps=30),
    ]


@pytest.mark.parametrize("config", _failure_configs(), ids=lambda c: type(c).__name__)
def test_a_failure_midway_leaves_the_model_as_it_was(config: object) -> None:
    net, task = tiny_net(), tiny_task()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calls = {"n": 0}

    def failing_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 15:
            raise RuntimeError("data went away")
        return task.loss_fn(model, batch)

    broken = dataclasses.replace(task, loss_fn=failing_loss)
    stage = handler(type(config))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="data went away"):
        stage(net, config, Context(broken, quiet=True))  # type: ignore[arg-type]
    assert calls["n"] == 16 and masks_of(net) == {} and net.training
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("cls", "values", "field"),
    [
        (IterativeConfig, {"sparsity": 1.0}, "sparsity"),
        (IterativeConfig, {"rounds": 0}, "rounds"),
        (IterativeConfig, {"finetune_steps": -1}, "finetune_steps"),
        (IterativeConfig, {"importance": "size"}, "importance"),
        (IterativeConfig, {"lr": 0.0}, "lr"),
        (GradualConfig, {"sparsity": -0.1}, "sparsity"),
        (GradualConfig, {"initial_sparsity": 0.6, "sparsity": 0.5}, "initial_sparsity"),
        (GradualConfig, {"steps": 0}, "steps"),
        (GradualConfig, {"steps": 100, "end_step": 100}, "end_step"),
        (GradualConfig, {"frequency": 0}, "frequency"),
        (GradualConfig, {"min_keep": 2.0}, "min_keep"),
        (GradualConfig, {"mode": "frozen"}, "mode"),
        (IterativeConfig, {"mode": "remove"}, "mode"),
    ],
)
def test_bad_values_name_the_field(
    cls: type[IterativeConfig | GradualConfig], values: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        cls.from_dict(values)


def test_impossible_global_floor_fails_before_training() -> None:
    net, task = tiny_net(), tiny_task()
    config = IterativeConfig(sparsity=0.95, scope="global", min_keep=0.5, train_steps=10)
    with pytest.raises(ConfigError, match="min_keep"):
        prune_iterative(net, config, Context(task, quiet=True))
    assert masks_of(net) == {}


def test_stages_are_registered() -> None:
    assert get_stage("prune.iterative").config_class is IterativeConfig
    assert get_stage("prune.gradual").config_class is GradualConfig


def _layer_zeros(net: nn.Module) -> dict[str, int]:
    return {w: int((net.get_parameter(w) == 0).sum()) for w in WEIGHTS}


def test_iterative_per_layer_ratios_rise_along_the_same_schedule() -> None:
    net, task = tiny_net(), tiny_task()
    config = IterativeConfig(
        sparsity=0.75, per_layer={"4": 0.5}, rounds=2, finetune_steps=2, spacing="linear"
    )
    seen = []
    original = schedule.prune_to_

    def spy(*args: object, **kwargs: object) -> float:
        reached = original(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(_layer_zeros(args[0]))  # type: ignore[arg-type]
        return reached

    schedule.prune_to_ = spy  # type: ignore[assignment]
    try:
        prune_iterative(net, config, Context(task, quiet=True))
    finally:
        schedule.prune_to_ = original
    # linear rounds: 0.375 then 0.75 for the default, 0.25 then 0.5 for layer 4 (128 weights)
    assert seen[0] == {"0.weight": 192, "2.weight": 384, "4.weight": 32}
    assert seen[1] == {"0.weight": 384, "2.weight": 768, "4.weight": 64}


def test_gradual_per_layer_ratios_end_exactly() -> None:
    net, task = tiny_net(), tiny_task()
    config = GradualConfig(
        sparsity=0.8, per_layer={"0": 0.5}, steps=30, end_step=20, frequency=5, initial_sparsity=0.1
    )
    prune_gradual(net, config, Context(task, quiet=True))
    assert _layer_zeros(net) == {"0.weight": 256, "2.weight": round(0.8 * 1024), "4.weight": 102}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (lambda: IterativeConfig(per_layer={"0": 1.0}), r"prune\.iterative\.per_layer: '0': 1\.0"),
        (lambda: IterativeConfig(per_layer={"(": 0.5}), r"'\(' is not a valid regex"),
        (
            lambda: GradualConfig(per_layer={"0": 0.5}, scope="global"),
            "per_layer and group: row are for scope local",
        ),
        (
            lambda: GradualConfig(per_layer={"0": 0.05}, initial_sparsity=0.1),
            r"initial_sparsity 0\.1 is above per_layer\['0'\] 0\.05",
        ),
    ],
)
def test_per_layer_mistakes_in_schedules_are_config_errors(config: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config()  # type: ignore[operator]


def test_a_per_layer_pattern_matching_no_layer_stops_before_training() -> None:
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match=r"prune\.gradual\.per_layer: 'fc' matches none"):
        prune_gradual(net, GradualConfig(per_layer={"fc": 0.5}), Context(tiny_task(), quiet=True))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
