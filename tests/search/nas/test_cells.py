"""The cell space: sizes, stacking, artifacts, exact MACs, errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from netchisel.artifact.store import load, read_manifest, save
from netchisel.core.errors import ConfigError
from netchisel.measure import count_flops
from netchisel.search.nas import CELL_OPS, NAS_SPACES, cell_net, cell_space
from netchisel.search.nas.cells import Cell

# One node per cell: the normal cell sums two skips, the reduction cell a max and an avg pool.
TINY = {
    "normal1_in1": 0, "normal1_op1": "skip", "normal1_in2": 1, "normal1_op2": "skip",
    "reduce1_in1": 0, "reduce1_op1": "max3", "reduce1_in2": 1, "reduce1_op2": "avg3",
}  # fmt: skip


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_space_dimensions_and_size() -> None:
    space = cell_space()
    assert len(space) == 2 * 3 * 4  # two cells, three nodes, (in, op) x 2
    assert space.dimensions["normal3_in1"].values() == [0, 1, 2, 3]
    assert space.dimensions["reduce1_op2"].values() == list(CELL_OPS)
    # per cell: (2 inputs x 2 ops)^2 = 16; both cells: 256
    assert cell_space(nodes=1, ops=("sep3", "skip")).size() == 256
    assert NAS_SPACES["cells"] is cell_space


def test_tiny_net_params_and_macs_by_hand() -> None:
    net = cell_net(**TINY, nodes=1, width=2, reductions=1, num_classes=2, image_size=4)
    # stem 9*2 + bn 4; normal cell: two 1x1 (2->2) + bn; reduction cell: two 1x1 (2->4) + bn;
    # last normal cell: 1x1 stride 2 (2->4) and 1x1 (4->4), + bn; classifier 4*2 + 2.
    assert params(net) == 22 + 16 + 32 + 40 + 10 == 120
    count = count_flops(net, torch.zeros(1, 1, 4, 4))
    # stem 16*2*9; normal 2*16*2*2; reduction 2*16*4*2; last: 4*4*2 + 4*4*4; classifier 4*2
    assert count.macs == 288 + 128 + 256 + 96 + 8 == 776
    assert count.uncounted_ops == ()


def test_stacking_deeper_and_wider_keeps_the_cells() -> None:
    candidate = cell_space().sample(random.Random(0))
    small = cell_net(**candidate, image_size=8)
    large = cell_net(**candidate, image_size=8, cells_per_stage=3, width=32)
    assert sum(isinstance(m, Cell) for m in small.modules()) == 3 * 1 + 2
    assert sum(isinstance(m, Cell) for m in large.modules()) == 3 * 3 + 2
    assert (params(small), params(large)) == (336_954, 2_762_730)
    cells = [m for m in large.modules() if isinstance(m, Cell)]
    assert cells[0].inputs == small.cells[0].inputs  # type: ignore[union-attr]
    assert large(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_every_op_runs_in_both_cells() -> None:
    for op in CELL_OPS:
        genotype = {key: (op if "_op" in key else value) for key, value in TINY.items()}
        net = cell_net(**genotype, nodes=1, width=4, image_size=8)
        assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
        assert count_flops(net, torch.zeros(1, 1, 8, 8)).uncounted_ops == ()


def test_artifact_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    candidate = cell_space().sample(random.Random(3))
    net = cell_net(**candidate, width=8, cells_per_stage=2, image_size=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(3, 1, 8, 8)
    directory = save(net, tmp_path / "cells")
    assert read_manifest(directory)["builder"]["ref"] == "netchisel.search.nas:cell_net"
    assert torch.equal(load(directory)(x), net(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"normal1_op1": "dil3"}, "normal1_op1: unknown cell op 'dil3'"),
        ({"width": 0}, "width must be an integer >= 1"),
        ({"cells_per_stage": 0}, "cells_per_stage must be an integer >= 1"),
        ({"normal1_in2": 2}, "normal1_in2 must be an input index in 0..1"),
        ({"normal2_in1": 0}, "unknown argument 'normal2_in1'"),
        ({"image_size": 2}, "image_size >= 4"),
    ],
)
def test_bad_input_is_one_clear_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cell_net(**{"nodes": 1, "reductions": 2, **TINY, **change})


def test_missing_dimension_and_bad_space() -> None:
    partial = {k: v for k, v in TINY.items() if k != "reduce1_op2"}
    with pytest.raises(ConfigError, match="missing reduce1_op2"):
        cell_net(**partial, nodes=1)
    with pytest.raises(ConfigError, match="unknown or none"):
        cell_space(ops=("sep3", "zero"))
    with pytest.raises(ConfigError, match="nodes >= 1"):
        cell_space(nodes=0)


def test_sequences_tiny_net_params_and_macs_by_hand(tmp_path: Path) -> None:
    net = cell_net(**TINY, nodes=1, width=2, reductions=1, num_classes=2, image_size=4, dims=1)
    # as the 2-D net but the stem's kernel has 3 taps, not 9: 120 - 2 * 6 = 108
    assert params(net) == 108
    assert sum(isinstance(m, torch.nn.Conv1d) for m in net.modules()) == 7
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    count = count_flops(net, torch.zeros(1, 1, 4))
    # stem 4*2*3; normal 2*4*2*2; reduction 2*4*4*2; last: 2*4*2 + 2*4*4; classifier 4*2
    assert count.macs == 24 + 32 + 64 + 48 + 8 == 176
    x = torch.randn(3, 1, 4)
    directory = save(net.eval(), tmp_path / "cells1d")
    assert read_manifest(directory)["builder"]["kwargs"]["dims"] == 1
    assert torch.equal(load(directory)(x), net(x))


def test_every_op_runs_on_sequences() -> None:
    for op in CELL_OPS:
        genotype = {key: (op if "_op" in key else value) for key, value in TINY.items()}
        net = cell_net(**genotype, nodes=1, width=4, image_size=40, dims=1)
        assert net(torch.zeros(1, 1, 40)).shape == (1, 10)
        assert count_flops(net, torch.zeros(1, 1, 40)).uncounted_ops == ()
    with pytest.raises(ConfigError, match=r"dims must be 1 \(sequences\) or 2 \(images\), got 3"):
        cell_net(**TINY, nodes=1, dims=3)
