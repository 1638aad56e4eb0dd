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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder, mark_builder
from netchisel.search.nas.cell_ops import CELL_OPS, cell_op, relu_conv_bn
from netchisel.search.space import Dimension, Space, categorical

CELLS_REF = "netchisel.search.nas:cell_net"
CELL_TYPES = ("normal", "reduce")
_KEY = re.compile(r"(normal|reduce)(\d+)_(in|op)([12])")

Genotype = tuple[tuple[int, str, int, str], ...]
"""One cell: per node (input 1, op 1, input 2, op 2)."""


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
    ) -> None:
        super().__init__()
        # After a reduction the older input is twice as large: a strided 1x1 conv matches it.
        self.pre0 = nn.Sequential(*relu_conv_bn(prev_prev, channels, 1, 2 if reduction_prev else 1))
        self.pre1 = nn.Sequential(*relu_conv_bn(prev, channels, 1))
        self.inputs = tuple(i for node in genotype for i in (node[0], node[2]))
        self.ops = nn.ModuleList(
            cell_op(op, channels, 2 if reduction and i < 2 else 1)
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
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        nodes = len(normal)
        cells: list[nn.Module] = []
        prev_prev, prev, channels, reduction_prev = width, width, width, False
        for stage in range(reductions + 1):
            kinds = [False] * cells_per_stage + ([True] if stage < reductions else [])
            for reduction in kinds:
                if reduction:
                    channels *= 2
                genotype = reduce if reduction else normal
                cells.append(Cell(genotype, prev_prev, prev, channels, reduction, reduction_prev))
                prev_prev, prev, reduction_prev = prev, nodes * channels, reduction
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.flatten(self.pool(s1)))  # type: ignore[no-any-return]


@builder
def cell_net(
    cells_per_stage: int = 1,
    width: int = 16,
    nodes: int = 3,
    reductions: int = 2,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 32,
    **genotype: Any,
) -> nn.Module:
    """Build a cell-space candidate: `cell_net(**candidate, cells_per_stage=..., width=...)`.

    `genotype` holds the dimensions of `cell_space(nodes)`, all of them. `width` is the
    channel count of the first stage's nodes (doubled at each reduction); `image_size` only
    checks that the reductions leave at least one pixel.

    Example:
        >>> import random
        >>> candidate = cell_space(nodes=2).sample(random.Random(0))
        >>> net = cell_net(**candidate, nodes=2, width=8, image_size=8)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
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
    model = CellNet(normal, reduce, cells_per_stage, width, reductions, in_channels, num_classes)
    kwargs = {**sizes, "reductions": reductions, "image_size": image_size, **genotype}
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
