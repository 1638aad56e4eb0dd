"""Surgery: the model is cut in place, its layers stay the same objects, a failure undoes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.core.errors import ModelError
from netchisel.prune.structured.plan import Plan
from netchisel.prune.structured.surgery import cut
from netchisel.prune.structured.units import Unit

INPUTS = (torch.zeros(1, 3, 8, 8),)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def _head(net: nn.Sequential, out: int) -> nn.Sequential:
    return nn.Sequential(*net, nn.Linear(8, out))


def _plan(keep: list[bool]) -> tuple[list[Unit], Plan]:
    unit = Unit("0", "0", ("0",), torch.ones(len(keep)))
    return [unit], {"0": torch.tensor(keep)}


def test_the_cut_is_in_place_and_keeps_the_layer_objects() -> None:
    net = _head(_net(), 2)
    conv, weight = net[0], net[0].weight.detach().clone()
    units, plan = _plan([True, False] * 4)
    assert cut(net, INPUTS, units, plan, False, [(1, 2)], in_place=True) is net
    assert net[0] is conv and conv.out_channels == 4 and net[4].in_features == 4
    assert torch.equal(conv.weight, weight[0::2])


def test_a_copy_leaves_the_model_and_a_failure_leaves_it_whole() -> None:
    net = _head(_net(), 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    units, plan = _plan([True, False] * 4)
    assert cut(net, INPUTS, units, plan, False, [(1, 2)], in_place=False)[0].out_channels == 4
    with pytest.raises(ModelError, match=r"pruning the group of 0 \(0\) breaks"):
        cut(net, INPUTS, units, plan, False, [(1, 3)], in_place=True)  # 3 outputs: never
    assert net[0].out_channels == 8
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
