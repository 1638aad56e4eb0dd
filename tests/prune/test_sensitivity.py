from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.task import Task, classification_task, custom_task
from netchisel.prune import SensitivityConfig, prune_
from netchisel.prune.sensitivity import (
    SensitivityResult,
    allocate,
    predicted_loss,
    prune_sensitivity,
    sensitivity,
)


def handmade() -> tuple[nn.Module, Task]:
    """y = w2 @ (w1 @ [1, 1]) with |w1| = 1, 2, 3, 4 and |w2| = 5, 6: every curve by hand."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        net[1].weight.copy_(torch.tensor([[5.0, -6.0]]))
    x = torch.ones(1, 2)
    task = custom_task(lambda m: {"y": float(m(x).sum())}, [x], "y")
    return net, task


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = x[:, :4].argmax(dim=1)
    data = TensorDataset(x, y)
    return classification_task({"train": data, "val": data}, 64)


def trained(task: Task) -> nn.Module:
    from netchisel.core.train import TrainSettings, fit

    net = tiny_net()
    fit(net, task, TrainSettings(steps=60, lr=1e-2), Context(task, quiet=True))
    return net


def test_curves_are_exact_on_a_handmade_model() -> None:
    net, task = handmade()
    result = sensitivity(net, task, [0.25, 0.5, 0.75])
    assert result.ratios == (0.0, 0.25, 0.5, 0.75)
    # Layer 0 loses 1, then -2, then 3: h = [-2, 7], [0, 7], [0, 4]; y = 5 h0 - 6 h1.
    assert result.curves["0"] == (-47.0, -52.0, -42.0, -24.0)
    # Layer 1 has two weights: 0.25 prunes round(0.5) = 0, 0.5 prunes the 5, 0.75 both.
    assert result.curves["1"] == (-47.0, -47.0, -42.0, 0.0)
    assert result.sizes == {"0": 4, "1": 2}
    assert result.losses("0") == [0.0, 5.0, -5.0, -23.0]


def test_model_is_bit_identical_after_the_sweep_and_ratio_0_is_the_unpruned_metric() -> None:
    task = tiny_task()
    net = trained(task)
    earlier = torch.rand(32, 32) > 0.3
    set_mask(net, "2.weight", earlier, fill=net[2].weight.detach().clone())  # a frozen mask
    before = copy.deepcopy(net.state_dict())
    masks_before = dict(masks_of(net))
    dense = task.evaluate(net)["accuracy"]
    result = sensitivity(net, task, [0.5, 0.9, 0.99], importance="taylor", calibration_samples=64)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert masks_of(net) == masks_before
    assert all(curve[0] == dense for curve in result.curves.values())
    assert result.baseline == dense
    assert list(result.curves) == ["0", "2", "4"]
    # Pruning 99% of the first layer alone costs more than half of it.
    assert result.curves["0"][3] < result.curves["0"][1]


def test_allocate_prunes_exactly_the_target_count() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = {"a": 37, "b": 512, "c": 100, "d": 3}
    ratios = (0.0, 0.3, 0.5, 0.7, 0.9)
    curves = {
        n: tuple([90.0] + [90.0 - float(v) for v in torch.rand(4, generator=g).cumsum(0) * 20])
        for n in sizes
    }
    result = SensitivityResult("accuracy", True, ratios, curves, sizes)
    total = sum(sizes.values())
    for target in (0.0, 0.1, 0.5, 0.61, 0.85, 0.89):
        chosen = allocate(result, target)
        counts = {n: round(chosen[n] * sizes[n]) for n in sizes}
        assert sum(counts.values()) == round(target * total)
        # No layer past the largest ratio swept, none pruned whole (d: round(0.9 * 3) = 3).
        assert all(0 <= counts[n] <= min(round(0.9 * sizes[n]), sizes[n] - 1) for n in sizes)
    with pytest.raises(ConfigError, match=r"needs 587 of 652 weights pruned.*reaches 586"):
        allocate(result, 0.9)


def test_allocate_is_the_least_predicted_loss_for_convex_curves() -> None:
    sizes = {"a": 10, "b": 20, "c": 8}
    ratios = (0.0, 0.25, 0.5, 0.75)
    curves = {  # convex losses: 0, 1, 3, 7 / 0, 0.5, 4, 12 / 0, 2, 5, 9
        "a": (50.0, 49.0, 47.0, 43.0),
        "b": (50.0, 49.5, 46.0, 38.0),
        "c": (50.0, 48.0, 45.0, 41.0),
    }
    result = SensitivityResult("accuracy", True, ratios, curves, sizes)
    # The sweep pruned round(r * n) weights: a at 0, 2, 5, 8; b at 0, 5, 10, 15; c at 0, 2, 4, 6.
    for budget in (3, 9, 14, 19, 25, 29):
        chosen = allocate(result, budget / 38)
        best = min(
            predicted_loss(result, {"a": ka / 10, "b": kb / 20, "c": kc / 8})
            for ka, kb, kc in itertools.product(range(9), range(16), range(7))
            if ka + kb + kc == budget
        )
        assert predicted_loss(result, chosen) == pytest.approx(best, abs=1e-9)


def test_lower_is_better_metrics_count_a_rise_as_loss() -> None:
    result = SensitivityResult(
        "perplexity", False, (0.0, 0.5), {"a": (3.0, 3.5), "b": (3.0, 9.0)}, {"a": 10, "b": 10}
    )
    assert result.losses("b") == [0.0, 6.0]
    assert allocate(result, 0.25) == {"a": 0.5, "b": 0.0}


def test_stage_records_curves_and_prunes_to_the_chosen_ratios_exactly() -> None:
    task = tiny_task()
    net = trained(task)
    ctx = Context(task, quiet=True)
    config = SensitivityConfig(ratios=(0.5, 0.8, 0.9, 0.95), target_sparsity=0.8)
    prune_sensitivity(net, config, ctx)
    record = ctx.records["sensitivity"]
    assert record["ratios"] == [0.0, 0.5, 0.8, 0.9, 0.95]
    assert record["split"] == "val" and record["sizes"] == {"0": 512, "2": 1024, "4": 128}
    chosen = record["chosen"]
    pruned = {n: int((~masks_of(net)[f"{n}.weight"].keep).sum()) for n in chosen}
    assert pruned == {n: round(chosen[n] * record["sizes"][n]) for n in chosen}
    assert sum(pruned.values()) == round(0.8 * 1664)
    assert ctx.records["sparsity"] == round(0.8 * 1664) / 1664
    assert ctx.records["predicted_loss"] == pytest.approx(
        predicted_loss(
            SensitivityResult(
                "accuracy",
                True,
                tuple(record["ratios"]),
                {n: tuple(c) for n, c in record["curves"].items()},
                record["sizes"],
            ),
            chosen,
        )
    )


def test_stage_without_a_target_only_records() -> None:
    net, task = handmade()
    before = copy.deepcopy(net.state_dict())
    ctx = Context(task, quiet=True)
    prune_sensitivity(net, SensitivityConfig(ratios=(0.5,), layers=("1",)), ctx)
    assert ctx.records["sensitivity"]["curves"] == {"1": [-47.0, -42.0]}
    assert "chosen" not in ctx.records["sensitivity"] and masks_of(net) == {}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratios": [0.5, 1.0]}, r"ratio 1.0 is not in \[0, 1\)"),
        ({"ratios": [-0.1]}, r"ratio -0.1 is not in \[0, 1\)"),
        ({"ratios": [0.0]}, "no ratio above 0"),
        ({"target_sparsity": 1.0}, r"target_sparsity 1.0 is not in \[0, 1\)"),
        ({"ratios": [0.5], "target_sparsity": 0.6}, "above the largest ratio swept"),
        ({"importance": "snip"}, "unknown importance 'snip'"),
    ],
)
def test_bad_config_is_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SensitivityConfig.from_dict(options)


def test_layer_regex_matching_nothing_names_it() -> None:
    net, task = handmade()
    with pytest.raises(ConfigError, match=r"prune.sensitivity: include pattern 'fc\.\*' matches"):
        prune_(net, SensitivityConfig(layers=("fc.*",)), task)
    with pytest.raises(ConfigError, match="exclude pattern 'nope'"):
        sensitivity(net, task, [0.5], exclude=("nope",))
    with pytest.raises(ConfigError, match=r"ratio 1\.5"):
        sensitivity(net, task, [1.5])


def test_freeze_mode_holds_the_chosen_weights_at_their_values() -> None:
    task = tiny_task()
    net = trained(task)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    ctx = Context(task, quiet=True)
    prune_sensitivity(
        net, SensitivityConfig(ratios=(0.5, 0.9), target_sparsity=0.5, mode="freeze"), ctx
    )
    chosen, sizes = ctx.records["sensitivity"]["chosen"], ctx.records["sensitivity"]["sizes"]
    masks = masks_of(net)
    held = {n: int((~masks[f"{n}.weight"].keep).sum()) for n in chosen}
    assert held == {n: round(chosen[n] * sizes[n]) for n in chosen}
    assert sum(held.values()) == round(0.5 * 1664)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert all(masks[f"{n}.weight"].fill is not None for n in chosen)
