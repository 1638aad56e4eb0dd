from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.factorize import TuckerConfig, factorize_
from netchisel.factorize.tucker import (
    factorize_tucker,
    tucker2_factors,
    tucker_conv,
    tucker_params,
)
from netchisel.measure import count_flops
from tests.factorize._nets import conv_net


@torch.no_grad()
def test_full_ranks_reproduce_the_conv() -> None:
    conv = conv_net()[2]
    assert isinstance(conv, nn.Conv2d)
    core, u_in, u_out = tucker2_factors(conv.weight, 16, 32, 1)
    rewritten = tucker_conv(conv, core, u_in, u_out)
    x = torch.randn(2, 16, 9, 9)
    assert float((rewritten(x) - conv(x)).abs().max()) < 1e-5


def test_ranks_shapes_and_exact_macs() -> None:
    net = conv_net()
    factorize_(net, TuckerConfig(ranks=(4, 8), layers=("2",)))
    seq = net[2]
    assert isinstance(seq, nn.Sequential)
    assert [tuple(m.weight.shape) for m in seq] == [(4, 16, 1, 1), (8, 4, 3, 3), (32, 8, 1, 1)]
    assert seq[1].stride == (2, 2) and seq[1].padding == (1, 1)
    # Input 16x9x9, output 32x5x5: 1x1 at 9x9, core and last 1x1 at 5x5.
    macs = 81 * 16 * 4 + 25 * 4 * 8 * 9 + 25 * 8 * 32
    assert count_flops(seq, torch.zeros(1, 16, 9, 9)).macs == macs
    assert sum(p.numel() for p in seq.parameters()) == tucker_params(
        nn.Conv2d(16, 32, 3, bias=False), 4, 8
    )


def test_skips_depthwise_1x1_and_non_shrinking_layers() -> None:
    net = conv_net()
    ctx = Context(None, quiet=True)
    factorize_tucker(net, TuckerConfig(param_ratio=0.5), ctx)
    skipped = ctx.records["skipped"]
    assert "depthwise conv (groups=32)" in skipped["4"]
    assert "1x1 conv" in skipped["5"]
    assert isinstance(net[2], nn.Sequential)
    entry = ctx.records["factorized"]["2"]
    assert entry["params_after"] <= 0.5 * 16 * 32 * 9
    # conv "0" (3 -> 16, bias): 448 parameters, a budget of 224.
    first = ctx.records["factorized"]["0"]
    r_in, r_out = first["ranks"]
    assert first["params_after"] == tucker_params(nn.Conv2d(3, 16, 3), r_in, r_out) <= 224
    assert sum(p.numel() for p in net[0].parameters()) == first["params_after"]
    assert set(skipped) == {"4", "5"}


@torch.no_grad()
def test_energy_one_keeps_full_ranks_when_that_shrinks() -> None:
    torch.manual_seed(0)
    # A weight of Tucker ranks (2, 3) exactly: energy 1.0 finds them.
    core = torch.randn(3, 2, 3, 3)
    u_out, u_in = torch.randn(24, 3), torch.randn(20, 2)
    conv = nn.Conv2d(20, 24, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in))
    net = nn.Sequential(conv)
    x = torch.randn(2, 20, 6, 6)
    want = net(x)
    ctx = Context(None, quiet=True)
    factorize_tucker(net, TuckerConfig(energy=1.0), ctx)
    assert ctx.records["factorized"]["0"]["ranks"] == [2, 3]
    assert float((net(x) - want).abs().max()) < 1e-4


def test_ranks_too_large_name_the_value_and_leave_the_model() -> None:
    net = conv_net()
    before = copy.deepcopy(net)
    with pytest.raises(ConfigError, match=r"r_in 8 is larger than layer '0' allows \(3 input"):
        factorize_(net, TuckerConfig(ranks=(8, 8)))
    assert all(isinstance(m, nn.Conv2d | nn.ReLU) for m in net)
    assert all(
        torch.equal(a, b) for a, b in zip(net.parameters(), before.parameters(), strict=True)
    )


def test_r_out_too_large_is_one_line_naming_the_value() -> None:
    with pytest.raises(ConfigError) as error:
        factorize_(conv_net(), TuckerConfig(ranks=(2, 17), layers=("0",)))
    assert str(error.value) == (
        "factorize.tucker: r_out 17 is larger than layer '0' allows (16 output channels): "
        "lower ranks or exclude the layer"
    )


def test_bad_ranks() -> None:
    with pytest.raises(ConfigError, match=r"ranks must be two integers >= 1"):
        TuckerConfig.from_dict({"ranks": [4]})


def test_artifact_round_trip_is_exact(tmp_path: Path) -> None:
    net = conv_net()
    factorize_(net, TuckerConfig(ranks=(4, 8), layers=("2",)))
    loaded = load(save(net, tmp_path / "tucker"))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), net(x))
