"""The cell space (NASNet, Zoph et al. 2018): search two small cells, then stack them.

A cell has two inputs (the outputs of the two cells before it) and `nodes` nodes; node k sums
two ops, each applied to an input chosen among the cell inputs and the nodes before k. The
cell's output concatenates every node (as in DARTS). A normal cell keeps the spatial size; a
reduction cell applies its ops to the cell inputs with stride 2 and the network doubles its
channels there.

Dimensions, for `t` in (normal, reduce) and node k = 1..nodes:
`{t}{k}_in1`, `{t}{k}_in2` (0 = the cell before the previous one, 1 = the previous one,
1 + m = node m) and `{t}{k}_op1`, `{t}{k}_op2` (from `CELL_OPS`).

Search small, ship large: `cell_net(**candidate)` defaults to one normal cell per stage and
width 16; the final model is the same candidate with more `cells_per_stage` and a larger
`width` (NASNet-A on CIFAR-10 ships as "6 @ 768": 6 normal cells per stage, 768 filters in
the penultimate layer).

Cells run on images (`dims=2`, the default) or sequences (`dims=1`, e.g. MNIST-1D's (N, 1, 40)):
the same candidate, with Conv1d/BatchNorm1d/1-D pools in place of the 2-D ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder, mark_builder
from netchisel.search.nas.cell_ops import (
    CELL_OPS,
    batch_norm,
    cell_op,
    check_dims,
    conv,
    global_pool,
    relu_conv_bn,
)
from netchisel.search.space import Dimension, Space, categorical

CELLS_REF = "netchisel.search.nas:cell_net"
CELL_TYPES = ("normal", "reduce")
_KEY = re.compile(r"(normal|reduce)(\d+)_(in|op)([12])")

Genotype = tuple[tuple[int, str, int, str], ...]
"""One cell: per node (input 1, op 1, input 2, op 2)."""
CellPlan = tuple[int, int, int, bool, bool]
"""One cell of a network: (prev_prev channels, prev channels, channels, reduction,
reduction_prev)."""


def cell_space(nodes: int = 3, ops: Sequence[str] = CELL_OPS) -> Space:
    """The normal and reduction cells of `nodes` nodes over `ops`.

    Example:
        >>> space = cell_space(nodes=1, ops=("sep3", "skip"))
        >>> space.size()  # per cell: 2 inputs x 2 ops, twice; then both cells
        256
    """
    if nodes < 1:
        raise ConfigError(f"cell_space needs nodes >= 1, got {nodes}")
    unknown = [op for op in ops if op not in CELL_OPS]
    if unknown or not ops:
        raise ConfigError(
            f"cell_space ops: unknown or none: {list(ops)} (known: {', '.join(CELL_OPS)})"
        )
    dims: dict[str, Dimension] = {}
    for kind in CELL_TYPES:
        for k in range(1, nodes + 1):
            for slot in (1, 2):
                dims[f"{kind}{k}_in{slot}"] = categorical(*range(k + 1))
                dims[f"{kind}{k}_op{slot}"] = categorical(*ops)
    return Space(dims)


class Cell(nn.Module):
    """One cell: preprocess both inputs to C channels, compute the nodes, concatenate them."""

    def __init__(
        self,
        genotype: Genotype,
        prev_prev: int,
        prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.pre0, self.pre1 = preprocess(prev_prev, prev, channels, reduction_prev, dims)
        self.inputs = tuple(i for node in genotype for i in (node[0], node[2]))
        self.ops = nn.ModuleList(
            cell_op(op, channels, 2 if reduction and i < 2 else 1, dims)
            for node in genotype
            for i, op in ((node[0], node[1]), (node[2], node[3]))
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(0, len(self.ops), 2):
            a, b = self.inputs[k], self.inputs[k + 1]
            states.append(self.ops[k](states[a]) + self.ops[k + 1](states[b]))
        return torch.cat(states[2:], dim=1)


class CellNet(nn.Module):
    """Stem, stages of normal cells separated by reduction cells, pooling and a Linear."""

    def __init__(
        self,
        normal: Genotype,
        reduce: Genotype,
        cells_per_stage: int,
        width: int,
        reductions: int,
        in_channels: int,
        num_classes: int,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.stem = stem(in_channels, width, dims)
        plan = cell_plan(cells_per_stage, width, reductions, len(normal))
        self.cells = nn.ModuleList(
            Cell(reduce if cell[3] else normal, *cell, dims=dims) for cell in plan
        )
        self.pool = global_pool(dims)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(len(normal) * plan[-1][2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.flatten(self.pool(s1)))  # type: ignore[no-any-return]


def stem(in_channels: int, width: int, dims: int) -> nn.Sequential:
    """The network's first layer: a 3-wide conv to `width` channels and BatchNorm."""
    return nn.Sequential(conv(dims, in_channels, width, 3), batch_norm(dims, width))


def preprocess(
    prev_prev: int, prev: int, channels: int, reduction_prev: bool, dims: int
) -> tuple[nn.Sequential, nn.Sequential]:
    """The two 1x1 ReLU-conv-BN that bring a cell's inputs to `channels` channels."""
    # After a reduction the older input is twice as large: a strided 1x1 conv matches it.
    pre0 = nn.Sequential(*relu_conv_bn(prev_prev, channels, 1, 2 if reduction_prev else 1, 1, dims))
    return pre0, nn.Sequential(*relu_conv_bn(prev, channels, 1, dims=dims))


def cell_plan(cells_per_stage: int, width: int, reductions: int, nodes: int) -> list[CellPlan]:
    """Every cell's channels and kind, in order: stages of normal cells, a reduction between.

    Example:
        >>> cell_plan(1, 4, 1, 2)
        [(4, 4, 4, False, False), (4, 8, 8, True, False), (8, 16, 8, False, True)]
    """
    plan: list[CellPlan] = []
    prev_prev, prev, channels, reduction_prev = width, width, width, False
    for stage in range(reductions + 1):
        for reduction in [False] * cells_per_stage + ([True] if stage < reductions else []):
            channels *= 2 if reduction else 1
            plan.append((prev_prev, prev, channels, reduction, reduction_prev))
            prev_prev, prev, reduction_prev = prev, nodes * channels, reduction
    return plan


@builder
def cell_net(
    cells_per_stage: int = 1,
    width: int = 16,
    nodes: int = 3,
    reductions: int = 2,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 32,
    dims: int = 2,
    **genotype: Any,
) -> nn.Module:
    """Build a cell-space candidate: `cell_net(**candidate, cells_per_stage=..., width=...)`.

    `genotype` holds the dimensions of `cell_space(nodes)`, all of them. `width` is the
    channel count of the first stage's nodes (doubled at each reduction); `image_size` (the
    sequence length when `dims=1`) only checks that the reductions leave at least one pixel.
    `dims` is 2 for images (N, C, H, W), 1 for sequences (N, C, L).

    Example:
        >>> import random
        >>> candidate = cell_space(nodes=2).sample(random.Random(0))
        >>> net = cell_net(**candidate, nodes=2, width=8, image_size=8)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> seq = cell_net(**candidate, nodes=2, width=4, image_size=40, dims=1)
        >>> seq(torch.zeros(2, 1, 40)).shape
        torch.Size([2, 10])
    """
    check_dims(dims, "cell_net")
    sizes = {"cells_per_stage": cells_per_stage, "width": width, "nodes": nodes}
    sizes |= {"in_channels": in_channels, "num_classes": num_classes}
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"cell_net {name} must be an integer >= 1, got {value!r}")
    if reductions < 0 or image_size < 2**reductions:
        raise ConfigError(
            f"cell_net: {reductions} reductions need reductions >= 0 and image_size >= "
            f"{2 ** max(reductions, 0)}, got image_size {image_size}"
        )
    normal, reduce = (_genotype(genotype, kind, nodes) for kind in CELL_TYPES)
    model = CellNet(
        normal, reduce, cells_per_stage, width, reductions, in_channels, num_classes, dims
    )
    kwargs = {**sizes, "reductions": reductions, "image_size": image_size, "dims": dims}
    kwargs |= genotype
    return mark_builder(model, CELLS_REF, kwargs)


def _genotype(choices: dict[str, Any], kind: str, nodes: int) -> Genotype:
    for key in choices:
        match = _KEY.fullmatch(key)
        if match is None or not 1 <= int(match[2]) <= nodes:
            raise ConfigError(
                f"cell_net: unknown argument {key!r} (per cell type and node k = 1..{nodes}: "
                "normal{k}_in1, normal{k}_op1, normal{k}_in2, normal{k}_op2, reduce{k}_...)"
            )
    genotype = []
    for k in range(1, nodes + 1):
        node: list[Any] = []
        for slot in (1, 2):
            source, op = f"{kind}{k}_in{slot}", f"{kind}{k}_op{slot}"
            if source not in choices or op not in choices:
                raise ConfigError(
                    f"cell_net: missing {source if source not in choices else op} "
                    f"(a candidate of cell_space(nodes={nodes}) has every dimension)"
                )
            if choices[op] not in CELL_OPS:
                raise ConfigError(
                    f"cell_net {op}: unknown cell op {choices[op]!r} (known: {', '.join(CELL_OPS)})"
                )
            value = choices[source]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= k:
                raise ConfigError(
                    f"cell_net {source} must be an input index in 0..{k} "
                    f"(0, 1: cell inputs; 2..{k}: earlier nodes), got {value!r}"
                )
            node += [value, choices[op]]
        genotype.append((node[0], node[1], node[2], node[3]))
    return tuple(genotype)
