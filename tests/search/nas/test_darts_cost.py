"""The cost penalty: exact per-op MACs at each edge's shape, its gradient, the budget."""

from __future__ import annotations

import torch

from netchisel.measure import count_flops
from netchisel.search.nas.cell_ops import cell_op
from netchisel.search.nas.darts_cost import cost_penalty, expected_cost, set_op_costs_
from netchisel.search.nas.darts_ops import SearchNet

OPS = ("none", "sep3", "conv3", "avg3", "skip")


def test_costs_are_each_ops_exact_macs_at_its_shape() -> None:
    net = SearchNet(OPS, nodes=1, width=4, reductions=1, dims=1)
    set_op_costs_(net, torch.zeros(5, 1, 16))
    normal, reduce = (cell.cost for cell in net.search_cells()[:2])
    # normal cell: 4 channels x 16 steps; reduction cell: 8 channels, stride 2 on the inputs
    assert normal[0].tolist() == [
        0.0,
        count_flops(cell_op("sep3", 4, 1, 1), torch.zeros(1, 4, 16)).macs,
        4 * 4 * 3 * 16,
        0.0,
        0.0,
    ]
    assert reduce[0, 2] == 8 * 8 * 3 * 8  # conv3 at stride 2: 8 output steps
    assert reduce[0, 4] == 8 * 8 * 8  # the strided skip is a 1x1 conv
    assert int(normal[0, 1]) == 4 * 3 * 16 + 4 * 4 * 16  # depthwise + pointwise


def test_penalty_pushes_weight_to_cheap_ops_and_respects_the_budget() -> None:
    torch.manual_seed(0)
    net = SearchNet(OPS, nodes=1, width=4, reductions=1, dims=1)
    set_op_costs_(net, torch.zeros(1, 1, 16))
    total = float(expected_cost(net).detach())
    reference = sum(float(c.cost.sum()) / len(OPS) for c in net.search_cells())
    assert abs(total - reference) < 1e-2 * reference  # alphas start almost uniform
    cost_penalty(net, 1.0, None, reference).backward()
    grad = net.alpha_normal.grad
    assert grad is not None
    assert (grad[:, 2] > 0).all() and (grad[:, 0] < 0).all()  # conv3 down, none up
    assert float(cost_penalty(net, 1.0, total + 1.0, reference).detach()) == 0.0
    under = float(cost_penalty(net, 2.0, total / 2, reference).detach())
    assert abs(under - 2.0 * (total / 2) / reference) < 1e-6


def test_latency_costs_are_measured_per_op_and_leave_the_net_runnable() -> None:
    net = SearchNet(OPS, nodes=1, width=4, reductions=1, dims=1)
    set_op_costs_(net, torch.zeros(2, 1, 16), "latency")
    normal = net.search_cells()[0].cost
    assert normal[0, 0] == 0.0  # none costs nothing
    assert (normal[0, 1:3] > 0).all()  # sep3 and conv3 were timed (ms)
    assert net(torch.zeros(2, 1, 16)).shape == (2, 10)  # the hooks are gone, ops unchanged
