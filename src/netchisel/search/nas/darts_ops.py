"""The DARTS search network (Liu et al. ICLR 2019): every edge of the cell DAG is a mixed op.

A mixed op runs every op of the cell space on its input and sums them weighted by a softmax
over architecture weights `alpha` (one row per edge, one column per op, `none` included: the
zero op, which adds nothing and so is left out of the sum). Unlike a `cell_net` candidate, node
k sees every earlier state (both cell inputs and nodes 1..k-1), so the normal and reduction
cells have `sum(k + 1 for k in 1..nodes)` edges each; all normal cells share `alpha_normal`,
all reduction cells `alpha_reduce`. The stem, cell plan, preprocessing and head are those of
`cell_net` (`cells.cell_plan`), so a derived candidate is trained on the same layout it was
searched on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.search.nas.cell_ops import CELL_OPS, cell_op, global_pool
from netchisel.search.nas.cells import CellPlan, cell_plan, preprocess, stem

NONE = "none"
"""The zero op: an edge that carries nothing (never part of a derived cell)."""


def edge_inputs(nodes: int) -> list[tuple[int, int]]:
    """(node k = 1..nodes, input index) of every edge, in alpha-row order.

    Input indices follow `cell_space`: 0 and 1 are the cell inputs, 1 + m is node m.

    Example:
        >>> edge_inputs(2)
        [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    """
    return [(k, i) for k in range(1, nodes + 1) for i in range(k + 1)]


def search_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """`none` followed by the cell space's `ops`: the columns of alpha.

    Example:
        >>> search_ops(("sep3", "skip"))
        ('none', 'sep3', 'skip')
    """
    unknown = [op for op in ops if op not in CELL_OPS]
    if unknown or not ops or len(set(ops)) != len(ops):
        raise ConfigError(
            f"DARTS ops: unknown, repeated or none: {list(ops)} (known: {', '.join(CELL_OPS)})"
        )
    return (NONE, *ops)


class MixedOp(nn.Module):
    """One edge: sum over the ops of softmax weight times op output (`none` adds zero)."""

    def __init__(self, ops: Sequence[str], channels: int, stride: int, dims: int) -> None:
        super().__init__()
        self.columns = tuple(j for j, name in enumerate(ops) if name != NONE)
        self.ops = nn.ModuleList(cell_op(ops[j], channels, stride, dims) for j in self.columns)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = [weights[j] * op(x) for j, op in zip(self.columns, self.ops, strict=True)]
        return torch.stack(out).sum(0)


class SearchCell(nn.Module):
    """A cell over the full DAG; `cost` holds each (edge, op)'s cost for the penalty."""

    def __init__(self, ops: Sequence[str], nodes: int, plan: CellPlan, dims: int) -> None:
        super().__init__()
        prev_prev, prev, channels, reduction, reduction_prev = plan
        self.reduction = reduction
        self.pre0, self.pre1 = preprocess(prev_prev, prev, channels, reduction_prev, dims)
        self.inputs = edge_inputs(nodes)
        self.edges = nn.ModuleList(
            MixedOp(ops, channels, 2 if reduction and i < 2 else 1, dims) for _, i in self.inputs
        )
        self.cost: Tensor
        self.register_buffer("cost", torch.zeros(len(self.inputs), len(ops)), persistent=False)

    def mixed_ops(self) -> list[MixedOp]:
        """The edges, in alpha-row order."""
        return [e for e in self.edges if isinstance(e, MixedOp)]

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        node: list[Tensor] = []
        for e, (k, i) in enumerate(self.inputs):
            node.append(self.edges[e](states[i], weights[e]))
            if i == k:  # the last input of node k: the node is complete
                states.append(torch.stack(node).sum(0))
                node = []
        return torch.cat(states[2:], dim=1)


class SearchNet(nn.Module):
    """The one-shot network DARTS trains: `cell_net`'s layout with search cells.

    `weight_parameters()` are the ordinary weights (trained on one half of the train split),
    `arch_parameters()` the two alpha matrices (trained on the other half).

    Example:
        >>> net = SearchNet(("none", "skip", "avg3"), nodes=2, width=4, dims=1)
        >>> net(torch.zeros(2, 1, 16)).shape, tuple(net.alpha_normal.shape)
        (torch.Size([2, 10]), (5, 3))
    """

    def __init__(
        self,
        ops: Sequence[str],
        nodes: int,
        width: int,
        cells_per_stage: int = 1,
        reductions: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.op_names = tuple(ops)
        self.stem = stem(in_channels, width, dims)
        plan = cell_plan(cells_per_stage, width, reductions, nodes)
        self.cells = nn.ModuleList(SearchCell(ops, nodes, cell, dims) for cell in plan)
        self.pool = global_pool(dims)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(nodes * plan[-1][2], num_classes)
        shape = (len(edge_inputs(nodes)), len(ops))
        # Near-zero start (Liu et al.: 1e-3 * N(0, 1)): every op starts at almost equal weight.
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def search_cells(self) -> list[SearchCell]:
        """The cells, in order."""
        return [c for c in self.cells if isinstance(c, SearchCell)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights: [alpha_normal, alpha_reduce]."""
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the architecture weights."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def op_weights(self) -> tuple[Tensor, Tensor]:
        """Softmax over the ops of each edge: (normal, reduce), rows sum to 1."""
        return self.alpha_normal.softmax(-1), self.alpha_reduce.softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        normal, reduce = self.op_weights()
        s0 = s1 = self.stem(x)
        for cell in self.search_cells():
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(self.flatten(self.pool(s1)))  # type: ignore[no-any-return]
