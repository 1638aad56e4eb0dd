from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.task import classification_task
from netchisel.dynamic.moe_costs import (
    expert_macs,
    load_cv,
    load_entropy,
    measure_routing,
    moe_costs,
    router_macs,
)
from netchisel.dynamic.moe_layer import MoEFeedForward, make_expert
from netchisel.measure import count_flops


def _net(top_k: int = 2, capacity_factor: float | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    experts = [make_expert(6, h, 6, nn.GELU()) for h in (4, 8, 4, 8)]
    moe = MoEFeedForward(
        nn.Linear(6, 4), experts, torch.zeros(6), top_k=top_k, capacity_factor=capacity_factor
    )
    return nn.Sequential(nn.Linear(3, 6), moe, nn.Linear(6, 2))


def test_macs_per_expert_and_active_macs() -> None:
    moe = _net()[1]
    assert expert_macs(moe) == [48, 96, 48, 96] and router_macs(moe) == 24
    costs = moe_costs(_net(), torch.randn(1, 5, 3))
    row = costs["layers"]["1"]
    assert row["active_macs_per_token"] == 24 + 96 + 96  # the two widest: an upper bound
    assert row["all_experts_macs_per_token"] == 24 + 288
    assert costs["expected_macs"] is None  # no routing measured


def test_exact_macs_match_count_flops_on_a_real_forward() -> None:
    net = _net(top_k=2, capacity_factor=1.0)
    x = torch.randn(4, 7, 3)
    costs = moe_costs(net, x)  # prices the first sample: 7 tokens
    count = count_flops(net, x[:1])
    assert count.uncounted_ops == ()
    assert costs["example_macs"] == count.macs
    kept = net[1].stats["kept"]  # what that same forward served
    assert net[1].stats["tokens"] == 7 and sum(kept) + net[1].stats["dropped"] == 14
    served = sum(k * m for k, m in zip(kept, expert_macs(net[1]), strict=True))
    outside = 7 * (3 * 6) + 7 * 24 + 7 * (6 * 2)  # Linear, router, Linear
    assert costs["macs_outside_experts"] == outside
    assert count.macs == outside + served


def test_routing_over_a_split_and_the_expected_macs() -> None:
    net = _net(top_k=1)
    data = TensorDataset(torch.randn(10, 3, 3), torch.zeros(10, dtype=torch.long))
    task = classification_task({"val": data}, batch_size=4)
    task = type(task)(task.name, task.splits, task.loss_fn, lambda m, b: {}, "accuracy", True, 4)
    routing = measure_routing(net, task)
    seen = routing["layers"]["1"]
    assert routing["samples"] == 10 and seen["tokens"] == 30
    assert sum(seen["load"]) == 30 and seen["kept"] == seen["load"] and seen["dropped"] == 0
    assert 0.0 < seen["router_entropy"] <= float(torch.log(torch.tensor(4.0)))
    costs = moe_costs(net, torch.randn(1, 3, 3), routing)
    row = costs["layers"]["1"]
    want = sum(k / 10 * m for k, m in zip(seen["kept"], [48, 96, 48, 96], strict=True))
    assert row["expected_expert_macs_per_sample"] == pytest.approx(want)
    assert costs["expected_macs"] == pytest.approx(3 * (18 + 24 + 12) + want)
    assert row["load_cv"] == pytest.approx(load_cv(seen["load"]))


def test_load_statistics() -> None:
    assert load_cv([3, 3, 3]) == 0.0 and load_cv([0, 0]) == 0.0
    assert load_cv([4, 0]) == pytest.approx(1.0)
    assert load_entropy([2, 2]) == pytest.approx(0.6931471805599453)
    assert load_entropy([0, 0]) == 0.0
