from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.core.train import TrainSettings, fit
from netchisel.prune.lottery import LotteryConfig, prune_lottery, reinitialise_
from netchisel.stages import get_stage
from tests.prune.test_schedule import WEIGHTS, tiny_net, tiny_task, total_weights


def _ticket(**values: object) -> tuple[nn.Module, dict[str, torch.Tensor], Context]:
    net = tiny_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = Context(tiny_task(), quiet=True, seed=3)
    base = {"sparsity": 0.75, "rounds": 2, "steps": 30, "lr": 1e-2, "train_ticket": False}
    prune_lottery(net, LotteryConfig.from_dict({**base, **values}), ctx)
    return net, start, ctx


def test_rewinding_to_init_restores_the_exact_initial_values_on_kept_weights() -> None:
    net, start, ctx = _ticket()
    n = total_weights(net)
    kept = 0
    for w in WEIGHTS:
        keep = masks_of(net)[w].keep
        weight = net.get_parameter(w)
        assert torch.equal(weight[keep], start[w][keep])
        assert bool((weight[~keep] == 0).all())
        kept += int(keep.sum())
    assert n - kept == round(0.75 * n)  # local scope: every layer at 75% -> exact in total too
    for b in ("0.bias", "2.bias", "4.bias"):
        assert torch.equal(net.get_parameter(b), start[b])
    assert ctx.records["rounds"][-1] == {"round": 2, "sparsity": 0.75, "trained": False}


def test_rewinding_to_step_k_restores_the_weights_after_k_steps() -> None:
    task = tiny_task()
    reference = tiny_net()
    seen: dict[str, torch.Tensor] = {}

    def after_step(step: int) -> None:
        if step == 4:  # five steps done
            seen.update({k: v.clone() for k, v in reference.state_dict().items()})

    settings = TrainSettings(steps=30, lr=1e-2)
    fit(reference, task, settings, Context(task, quiet=True, seed=3), after_step=after_step)
    net, start, _ = _ticket(rewind_step=5)
    for w in WEIGHTS:
        keep = masks_of(net)[w].keep
        assert torch.equal(net.get_parameter(w)[keep], seen[w][keep])
        assert not torch.equal(seen[w], start[w])


def test_random_reinit_control_has_the_same_mask_and_other_values() -> None:
    ticket, start, _ = _ticket()
    control, _, ctx = _ticket(init="random")
    again, _, _ = _ticket(init="random")
    assert ctx.records["init"] == "random"
    for w in WEIGHTS:
        keep = masks_of(ticket)[w].keep
        assert torch.equal(masks_of(control)[w].keep, keep)
        a, b = ticket.get_parameter(w)[keep], control.get_parameter(w)[keep]
        assert not bool((a == b).any())  # every kept value re-drawn
        # drawn like theta_0 (the layer's own initialiser), not like the selected large ones
        assert float(b.detach().std()) == pytest.approx(float(start[w].std()), rel=0.25)
        assert torch.equal(control.get_parameter(w), again.get_parameter(w))  # seeded
        assert bool((control.get_parameter(w)[~keep] == 0).all())


def test_trained_ticket_records_every_round() -> None:
    net = tiny_net()
    ctx = Context(tiny_task(), quiet=True)
    config = LotteryConfig(sparsity=0.75, rounds=2, steps=60, lr=1e-2, scope="global")
    prune_lottery(net, config, ctx)
    n = total_weights(net)
    rounds = ctx.records["rounds"]
    assert [r["sparsity"] for r in rounds] == [0.0, round(0.5 * n) / n, round(0.75 * n) / n]
    assert all(r["accuracy"] >= 90.0 for r in rounds)
    assert sum(int((net.get_parameter(w) == 0).sum()) for w in WEIGHTS) == round(0.75 * n)


def test_reinitialise_leaves_the_callers_random_stream_alone() -> None:
    layer = nn.Linear(3, 3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    reinitialise_(layer, seed=9)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"rounds": 0}, "rounds"),
        ({"steps": 0}, "steps"),
        ({"steps": 10, "rewind_step": 10}, "rewind_step"),
        ({"init": "fresh"}, "init"),
        ({"min_keep": -1.0}, "min_keep"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LotteryConfig.from_dict(values)


def test_stage_is_registered() -> None:
    assert get_stage("prune.lottery").config_class is LotteryConfig
