"""Cost-aware DARTS: the expected MACs (or latency) of the search network, differentiable in
the architecture weights (FBNet, Wu et al. CVPR 2019; ProxylessNAS, Cai et al. ICLR 2019).

Each (edge, op) gets a fixed cost measured once at the shape it runs at in the search network:
its exact MACs from `netchisel.measure.count_flops`, or its measured median latency from
`netchisel.measure.measure_latency` (batch 1, one thread). The expected cost is the sum over
cells of softmax(alpha) * cost, so its gradient pushes weight from expensive ops to cheap ones.
The stem, preprocessing and classifier cost the same whatever is chosen and are left out.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from netchisel.measure import count_flops, measure_latency
from netchisel.search.nas.darts_ops import SearchNet

CostKind = Literal["macs", "latency"]


def set_op_costs_(net: SearchNet, example: Tensor, kind: CostKind = "macs") -> None:
    """Fill every search cell's `cost` table (MACs per sample, or latency in ms at batch 1).

    Example:
        >>> net = SearchNet(("none", "conv3", "skip"), nodes=1, width=2, reductions=0, dims=1)
        >>> set_op_costs_(net, torch.zeros(1, 1, 8))
        >>> net.search_cells()[0].cost.tolist()  # conv3: 8 steps x 2 x 2 x 3 taps; none and skip: 0
        [[0.0, 96.0, 0.0], [0.0, 96.0, 0.0]]
    """
    one = example[:1]
    if kind == "macs":
        macs = count_flops(net, one).macs_by_module
        for c, cell in enumerate(net.search_cells()):
            for e, edge in enumerate(cell.mixed_ops()):
                for j, k in zip(edge.columns, range(len(edge.ops)), strict=True):
                    cell.cost[e, j] = float(macs[f"cells.{c}.edges.{e}.ops.{k}"])
        return
    shapes: dict[nn.Module, torch.Size] = {}

    def remember(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        # Returns None: a pre-hook's return value would replace the op's arguments.
        shapes.setdefault(module, args[0].shape)

    hooks = [
        op.register_forward_pre_hook(remember)
        for cell in net.search_cells()
        for edge in cell.mixed_ops()
        for op in edge.ops
    ]
    try:
        with torch.no_grad():
            net.eval()(one)
    finally:
        for hook in hooks:
            hook.remove()
        net.train()
    for cell in net.search_cells():
        for e, edge in enumerate(cell.mixed_ops()):
            for j, op in zip(edge.columns, edge.ops, strict=True):
                x = torch.zeros(shapes[op])
                cell.cost[e, j] = measure_latency(op, x, warmup=3, repeats=15).median_ms


def expected_cost(net: SearchNet) -> Tensor:
    """Sum over cells of softmax(alpha) * cost: the cost the mixture is expected to have.

    Example:
        >>> net = SearchNet(("none", "conv3"), nodes=1, width=2, reductions=0, dims=1)
        >>> set_op_costs_(net, torch.zeros(1, 1, 8))
        >>> round(float(expected_cost(net).detach()), 1)  # two edges, each about half conv3
        96.0
    """
    normal, reduce = net.op_weights()
    total = torch.zeros(())
    for cell in net.search_cells():
        total = total + ((reduce if cell.reduction else normal) * cell.cost).sum()
    return total


def cost_penalty(net: SearchNet, weight: float, budget: float | None, reference: float) -> Tensor:
    """`weight * max(0, E[cost] - budget) / reference` (budget None: penalise all the cost).

    `reference` (the expected cost at uniform alphas) makes `weight` unitless: at weight 1,
    doubling the expected cost costs as much as one nat of validation loss.

    Example:
        >>> net = SearchNet(("none", "conv3"), nodes=1, width=2, reductions=0, dims=1)
        >>> set_op_costs_(net, torch.zeros(1, 1, 8))
        >>> round(float(cost_penalty(net, 0.5, 90.0, 96.0).detach()), 3)  # 0.5 * (96 - 90) / 96
        0.031
    """
    cost = expected_cost(net)
    if budget is not None:
        cost = torch.relu(cost - budget)
    return weight * cost / max(reference, 1e-12)
