"""The search network: edges over the full DAG, mixed ops, parameter groups, 1-D and 2-D."""

from __future__ import annotations

import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.search.nas.darts_ops import (
    MixedOp,
    SearchCell,
    SearchNet,
    edge_inputs,
    search_ops,
)

OPS = search_ops(("sep3", "conv3", "max3", "skip"))


def test_edges_cover_every_earlier_state() -> None:
    assert len(edge_inputs(3)) == 2 + 3 + 4
    assert edge_inputs(3)[-4:] == [(3, 0), (3, 1), (3, 2), (3, 3)]
    net = SearchNet(OPS, nodes=3, width=4, dims=1)
    assert tuple(net.alpha_normal.shape) == tuple(net.alpha_reduce.shape) == (9, 5)
    assert sum(isinstance(m, SearchCell) for m in net.modules()) == 3 + 2  # 1 per stage, 2 reduce
    assert sum(isinstance(m, MixedOp) for m in net.modules()) == 5 * 9
    weights, arch = net.weight_parameters(), net.arch_parameters()
    assert len(weights) + 2 == len(list(net.parameters()))
    assert not {id(p) for p in weights} & {id(p) for p in arch}


def test_a_one_hot_mixed_op_is_that_op() -> None:
    torch.manual_seed(0)
    mixed = MixedOp(OPS, channels=3, stride=2, dims=2).eval()
    x = torch.randn(2, 3, 8, 8)
    for j, name in enumerate(OPS):
        out = mixed(x, torch.eye(len(OPS))[j])
        if name == "none":
            assert torch.equal(out, torch.zeros(2, 3, 4, 4))
        else:
            assert torch.equal(out, mixed.ops[j - 1](x))
    half = mixed(x, torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5]))
    assert torch.allclose(half, 0.5 * mixed.ops[0](x) + 0.5 * mixed.ops[3](x))


@pytest.mark.parametrize(("dims", "shape"), [(1, (3, 1, 40)), (2, (3, 1, 8, 8))])
def test_search_net_runs_on_sequences_and_images(dims: int, shape: tuple[int, ...]) -> None:
    net = SearchNet(OPS, nodes=2, width=4, num_classes=7, dims=dims)
    out = net(torch.randn(shape))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert net.alpha_normal.grad is not None and float(net.alpha_normal.grad.abs().sum()) > 0
    assert net.alpha_reduce.grad is not None and float(net.alpha_reduce.grad.abs().sum()) > 0


def test_bad_ops_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown, repeated or none"):
        search_ops(("sep3", "zero"))
    with pytest.raises(ConfigError, match="unknown, repeated or none"):
        search_ops(("skip", "skip"))
