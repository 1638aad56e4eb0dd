"""Derivation: DARTS' softmax weights -> one discrete `cell_space` candidate.

Liu et al. 2019, section 2.4: each node keeps its two strongest incoming edges, an edge's
strength being its largest non-`none` op weight, and each kept edge keeps its strongest
non-`none` op. The result has exactly the dimensions of `cell_space(nodes, ops)`, so
`cell_net(**candidate, ...)` is the same module the multi-trial search builds.

The skip limit is P-DARTS' (Chen et al. ICCV 2019, section 3.3): while the normal cell has more
than `max_skips` skip connections, the weakest kept skip is removed from its edge's choices and
the cell derived again. `limited` widens what counts: on MNIST-1D the normal cells DARTS
derives fill with max-pooling instead of skips (`bench/nas_darts_pipeline.py`), the same
degenerate parameter-free cell, so `limited=PARAMETER_FREE` caps every parameter-free op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from netchisel.core.errors import ConfigError
from netchisel.search.nas.cells import CELL_TYPES
from netchisel.search.nas.darts_ops import NONE, edge_inputs

SKIP = "skip"
PARAMETER_FREE = ("skip", "max3", "avg3")
"""The cell ops without weights: the ops DARTS' collapse fills a normal cell with."""


def derive_cell(
    weights: Tensor, ops: Sequence[str], nodes: int, kind: str = "normal"
) -> dict[str, Any]:
    """The `{kind}{k}_in/op{1,2}` dimensions of one cell from its (edges x ops) weights.

    Ties go to the lower input index, then to the earlier op. `in1` is the stronger edge.

    Example:
        >>> import torch
        >>> w = torch.tensor([[0.1, 0.8, 0.1], [0.5, 0.2, 0.3]])  # node 1: edges from 0 and 1
        >>> derive_cell(w, ("none", "sep3", "skip"), nodes=1)
        {'normal1_in1': 0, 'normal1_op1': 'sep3', 'normal1_in2': 1, 'normal1_op2': 'skip'}
    """
    edges = edge_inputs(nodes)
    if tuple(weights.shape) != (len(edges), len(ops)):
        raise ConfigError(
            f"derive: weights of shape {tuple(weights.shape)} do not fit {nodes} nodes and "
            f"{len(ops)} ops (expected {(len(edges), len(ops))})"
        )
    keep = [j for j, name in enumerate(ops) if name != NONE]
    out: dict[str, Any] = {}
    for k in range(1, nodes + 1):
        rows = [e for e, (node, _) in enumerate(edges) if node == k]
        best = {e: _strongest(weights[e], keep) for e in rows}
        ranked = sorted(rows, key=lambda e: (-float(weights[e, best[e]]), e))[:2]
        for slot, e in enumerate(ranked, start=1):
            out[f"{kind}{k}_in{slot}"] = edges[e][1]
            out[f"{kind}{k}_op{slot}"] = ops[best[e]]
    return out


def _strongest(row: Tensor, columns: list[int]) -> int:
    return max(columns, key=lambda j: (float(row[j]), -j))


def derive(
    normal: Tensor,
    reduce: Tensor,
    ops: Sequence[str],
    nodes: int,
    max_skips: int | None = None,
    limited: Sequence[str] = (SKIP,),
) -> dict[str, Any]:
    """A full `cell_space(nodes)` candidate; with `max_skips`, at most that many of the
    `limited` ops (skip: P-DARTS; `PARAMETER_FREE`: every op without weights) in the normal
    cell, the weakest dropped first.

    Example:
        >>> import torch
        >>> w = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.3, 0.6]])
        >>> c = derive(w, w, ("none", "sep3", "skip"), nodes=1, max_skips=1)
        >>> c["normal1_op1"], c["normal1_op2"], c["reduce1_op2"]
        ('skip', 'sep3', 'skip')
    """
    if max_skips is not None and max_skips < 0:
        raise ConfigError(f"derive max_skips must be >= 0 or None, got {max_skips}")
    normal = normal.detach().clone()
    cell = derive_cell(normal, ops, nodes, "normal")
    if max_skips is not None:
        rows = {(k, i): e for e, (k, i) in enumerate(edge_inputs(nodes))}
        while (kept := _edges_with(cell, nodes, limited)) and len(kept) > max_skips:
            column = {edge: list(ops).index(op) for edge, op in kept}
            weakest = min(column, key=lambda e: (float(normal[rows[e], column[e]]), e))
            normal[rows[weakest], column[weakest]] = -1.0  # below every weight: never again
            cell = derive_cell(normal, ops, nodes, "normal")
    return cell | derive_cell(reduce.detach(), ops, nodes, "reduce")


def _edges_with(
    candidate: dict[str, Any], nodes: int, names: Sequence[str]
) -> list[tuple[tuple[int, int], str]]:
    """((node, input), op) of every op of the normal cell that is one of `names`."""
    return [
        ((k, candidate[f"normal{k}_in{slot}"]), candidate[f"normal{k}_op{slot}"])
        for k in range(1, nodes + 1)
        for slot in (1, 2)
        if candidate[f"normal{k}_op{slot}"] in names
    ]


def skip_edges(
    candidate: dict[str, Any], nodes: int, kind: str = "normal"
) -> list[tuple[int, int]]:
    """(node, input) of every skip in one cell of a candidate.

    Example:
        >>> skip_edges({"normal1_in1": 0, "normal1_op1": "skip",
        ...             "normal1_in2": 1, "normal1_op2": "sep3"}, nodes=1)
        [(1, 0)]
    """
    if kind not in CELL_TYPES:
        raise ConfigError(f"skip_edges kind must be one of {CELL_TYPES}, got {kind!r}")
    return [
        (k, candidate[f"{kind}{k}_in{slot}"])
        for k in range(1, nodes + 1)
        for slot in (1, 2)
        if candidate[f"{kind}{k}_op{slot}"] == SKIP
    ]
