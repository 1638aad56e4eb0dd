"""Derivation: top-2 edges per node, strongest non-none op, the P-DARTS skip limit, and the
derived candidate is a `cell_space` candidate that builds the same `cell_net`."""

from __future__ import annotations

import optuna
import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.search.nas import cell_net, cell_space
from netchisel.search.nas.darts_derive import PARAMETER_FREE, derive, derive_cell, skip_edges
from netchisel.search.nas.darts_ops import edge_inputs

OPS = ("none", "sep3", "max3", "skip")


def test_top_two_edges_by_strongest_non_none_op() -> None:
    # node 1: edges from 0, 1; node 2: edges from 0, 1, 2 (= node 1)
    w = torch.tensor(
        [
            [0.90, 0.05, 0.03, 0.02],  # (1, 0): `none` dominates; best real op sep3 0.05
            [0.10, 0.20, 0.30, 0.40],  # (1, 1): skip 0.40
            [0.00, 0.50, 0.25, 0.25],  # (2, 0): sep3 0.50
            [0.40, 0.10, 0.45, 0.05],  # (2, 1): max3 0.45
            [0.10, 0.20, 0.60, 0.10],  # (2, 2): max3 0.60
        ]
    )
    assert derive_cell(w, OPS, nodes=2) == {
        "normal1_in1": 1, "normal1_op1": "skip", "normal1_in2": 0, "normal1_op2": "sep3",
        "normal2_in1": 2, "normal2_op1": "max3", "normal2_in2": 0, "normal2_op2": "sep3",
    }  # fmt: skip


def test_derived_candidate_is_a_cell_space_candidate_and_builds_the_same_net() -> None:
    torch.manual_seed(1)
    rows = len(edge_inputs(3))
    normal, reduce = torch.rand(rows, len(OPS)), torch.rand(rows, len(OPS))
    candidate = derive(normal, reduce, OPS, nodes=3)
    space = cell_space(nodes=3, ops=OPS[1:])
    assert set(candidate) == set(space.dimensions)
    for name, value in candidate.items():
        assert value in space.dimensions[name].values()
    # what an Optuna trial of the multi-trial search proposes for these choices
    trial = space.suggest(optuna.trial.FixedTrial(candidate))
    assert trial == candidate
    torch.manual_seed(0)
    derived = cell_net(**candidate, nodes=3, width=4, image_size=40, dims=1)
    torch.manual_seed(0)
    same = cell_net(**trial, nodes=3, width=4, image_size=40, dims=1)
    x = torch.randn(2, 1, 40)
    assert str(derived) == str(same)
    assert torch.equal(derived.eval()(x), same.eval()(x))


def test_skip_limit_keeps_the_strongest_skips() -> None:
    rows = len(edge_inputs(3))
    normal = torch.full((rows, len(OPS)), 0.1)
    normal[:, 3] = torch.linspace(0.5, 0.9, rows)  # skip strongest on every edge
    free = derive(normal, normal, OPS, nodes=3)
    limited = derive(normal, normal, OPS, nodes=3, max_skips=2)
    assert len(skip_edges(free, 3)) == 6
    assert skip_edges(limited, 3) == [(3, 3), (3, 2)]  # the two strongest skips
    assert len(skip_edges(limited, 3, "reduce")) == 6  # the limit is on the normal cell only
    assert len(skip_edges(derive(normal, normal, OPS, nodes=3, max_skips=0), 3)) == 0


def test_bad_shapes_and_limits_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="do not fit 2 nodes and 4 ops"):
        derive_cell(torch.zeros(3, 4), OPS, nodes=2)
    with pytest.raises(ConfigError, match="max_skips must be >= 0"):
        derive(torch.zeros(2, 4), torch.zeros(2, 4), OPS, nodes=1, max_skips=-1)
    with pytest.raises(ConfigError, match="kind must be one of"):
        skip_edges({}, 1, "middle")


def test_the_limit_can_count_every_parameter_free_op() -> None:
    # Every edge's strongest op is max3 (the collapse bench/nas_darts_pipeline.py measured);
    # sep3 is second everywhere, so capping parameter-free ops at 1 leaves one max3.
    ops = ("none", "sep3", "max3", "avg3", "skip")
    row = torch.tensor([0.05, 0.3, 0.45, 0.1, 0.1])
    normal = torch.stack([row + 0.01 * e for e in range(len(edge_inputs(3)))])
    plain = derive(normal, normal, ops, nodes=3, max_skips=1)
    assert [plain[f"normal{k}_op{s}"] for k in (1, 2, 3) for s in (1, 2)] == ["max3"] * 6
    assert plain == derive(normal, normal, ops, nodes=3, max_skips=1, limited=("skip",))
    capped = derive(normal, normal, ops, nodes=3, max_skips=1, limited=PARAMETER_FREE)
    normal_ops = [capped[f"normal{k}_op{s}"] for k in (1, 2, 3) for s in (1, 2)]
    assert sorted(normal_ops) == ["max3"] + ["sep3"] * 5
    # The strongest max3 (node 3's stronger edge, the last row) is the one kept.
    assert capped["normal3_op1"] == "max3" and capped["normal3_in1"] == 3
    assert [capped[f"reduce{k}_op1"] for k in (1, 2, 3)] == ["max3"] * 3  # reduce: no limit
