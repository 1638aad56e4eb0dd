from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.factorize import CPConfig, factorize_
from netchisel.factorize.cp import cp_factors, cp_params, factorize_cp
from netchisel.factorize.rank import energy_kept
from netchisel.measure import count_flops
from tests.factorize._nets import conv_net


def _weight_of(seq: nn.Module) -> torch.Tensor:
    """The kxk weight the three convs compute together."""
    first, middle, last = (m.weight.detach().double() for m in seq)
    return torch.einsum("or,ri,rhw->oihw", last[:, :, 0, 0], first[:, :, 0, 0], middle[:, 0])


def _error(approx: torch.Tensor, weight: torch.Tensor) -> float:
    w = weight.detach().double()
    return float((approx - w).norm() / w.norm())


@torch.no_grad()
def test_a_weight_of_cp_rank_three_is_reproduced() -> None:
    torch.manual_seed(0)
    a_out, a_in, a_k = torch.randn(24, 3), torch.randn(8, 3), torch.randn(9, 3)
    conv = nn.Conv2d(8, 24, 3, stride=2, padding=1)
    conv.weight.copy_(torch.einsum("or,ir,kr->oik", a_out, a_in, a_k).reshape(24, 8, 3, 3))
    net = nn.Sequential(conv)
    x = torch.randn(2, 8, 9, 9)
    want = net(x)
    ctx = Context(None, quiet=True)
    factorize_cp(net, CPConfig(rank=3), ctx)
    assert float((net(x) - want).abs().max()) < 1e-4
    entry = ctx.records["factorized"]["0"]
    assert entry["rank"] == 3 and entry["weight_relative_error"] < 1e-6
    # 3 * (8 + 9 + 24) + 24 bias instead of 24 * 8 * 9 + 24.
    assert (entry["params_before"], entry["params_after"]) == (1752, 147)


def test_rank_shapes_and_exact_macs() -> None:
    net = conv_net()
    factorize_(net, CPConfig(rank=10, layers=("2",)))
    seq = net[2]
    assert isinstance(seq, nn.Sequential)
    assert [tuple(m.weight.shape) for m in seq] == [(10, 16, 1, 1), (10, 1, 3, 3), (32, 10, 1, 1)]
    assert seq[1].groups == 10 and seq[1].stride == (2, 2) and seq[1].padding == (1, 1)
    # Input 16x9x9, output 32x5x5: the first 1x1 at 9x9, depthwise and last 1x1 at 5x5.
    assert (
        count_flops(seq, torch.zeros(1, 16, 9, 9)).macs == 81 * 16 * 10 + 25 * 10 * 9 + 25 * 10 * 32
    )
    assert (
        sum(p.numel() for p in seq.parameters())
        == cp_params(nn.Conv2d(16, 32, 3, bias=False), 10)
        == 570
    )


def test_param_ratio_budget_and_skips() -> None:
    net = conv_net()
    ctx = Context(None, quiet=True)
    factorize_cp(net, CPConfig(), ctx)  # param_ratio 0.5
    factorized, skipped = ctx.records["factorized"], ctx.records["skipped"]
    # conv "0": 3 -> 16 with bias, 448 parameters, budget 224: 16 + 7 * (3 + 9 + 16) = 212.
    assert (factorized["0"]["rank"], factorized["0"]["params_after"]) == (7, 212)
    # conv "2": 16 -> 32, 4,608 parameters, budget 2,304: 40 * (16 + 9 + 32) = 2,280.
    assert (factorized["2"]["rank"], factorized["2"]["params_after"]) == (40, 2280)
    assert sum(p.numel() for p in net[2].parameters()) == 2280
    assert skipped == {
        "4": "depthwise conv (groups=32): only groups=1 convs are rewritten",
        "5": "1x1 conv: nothing to gain from a kxk core",
    }
    assert ctx.records["params_before"] == 448 + 4608 and ctx.records["params_after"] == 2492


def test_a_rank_that_would_not_shrink_is_skipped() -> None:
    ctx = Context(None, quiet=True)
    factorize_cp(conv_net(), CPConfig(rank=20, layers=("0",)), ctx)
    assert ctx.records["skipped"] == {"0": "rank 20 would not reduce parameters (576 >= 448)"}


@torch.no_grad()
def test_weight_error_is_recorded_and_within_bounds() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, bias=False)
    w = conv.weight.detach().double()
    s_out = torch.linalg.svdvals(w.reshape(32, -1))
    errors = {}
    for rank in (4, 16, 64, 80):  # 80 * (16 + 9 + 32) = 4,560 of 4,608 parameters
        net = nn.Sequential(copy.deepcopy(conv))
        ctx = Context(None, quiet=True)
        factorize_cp(net, CPConfig(rank=rank), ctx)
        errors[rank] = ctx.records["factorized"]["0"]["weight_relative_error"]
        # What is recorded is what the modules compute.
        assert errors[rank] == pytest.approx(_error(_weight_of(net[0]), w), rel=1e-6)
        if rank < 32:
            # A rank-r CP tensor has rank <= r unfoldings: never better than their SVD.
            assert errors[rank] >= (1.0 - energy_kept(s_out, rank)) ** 0.5
    assert 0.9 < errors[4] < 1.0 and errors[16] < 0.85
    assert errors[64] < 0.3 and errors[80] < 0.15
    # Past the parameter budget, rank 128 of the 144 a 32x16x9 tensor can need is near exact.
    approx = torch.einsum("or,ir,kr->oik", *(f.double() for f in cp_factors(conv.weight, 128, 100)))
    assert _error(approx.reshape(w.shape), w) < 1e-3


def test_factors_have_balanced_scales() -> None:
    torch.manual_seed(0)
    a_out, a_in, a_k = cp_factors(torch.randn(8, 4, 3, 3) * 100, 5, 20)
    norms = torch.stack([f.norm(dim=0) for f in (a_out, a_in, a_k)])
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-4)


def test_rank_above_the_largest_cp_rank_names_the_value_and_leaves_the_model() -> None:
    net = conv_net()
    before = copy.deepcopy(net)
    with pytest.raises(ConfigError) as error:
        factorize_(net, CPConfig(rank=28))
    message = str(error.value)
    assert message == (
        "factorize.cp: rank 28 is larger than layer '0' allows (a 16x3x9 weight has CP rank "
        "<= 27): lower rank or exclude the layer"
    )
    assert str(net) == str(before)
    assert all(
        torch.equal(a, b) for a, b in zip(net.parameters(), before.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rank": 0}, "factorize.cp: rank must be >= 1, got 0"),
        (
            {"rank": 4, "param_ratio": 0.5},
            "give one of rank, param_ratio, not rank and param_ratio",
        ),
        ({"param_ratio": 1.5}, r"param_ratio 1.5 is not in \(0, 1\]"),
        ({"iterations": 0}, "iterations must be >= 1, got 0"),
    ],
)
def test_bad_config_names_the_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CPConfig.from_dict(values)


def test_artifact_round_trip_is_exact(tmp_path: Path) -> None:
    net = conv_net()
    factorize_(net, CPConfig(rank=10, layers=("2",)))
    loaded = load(save(net, tmp_path / "cp"))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), net(x))
