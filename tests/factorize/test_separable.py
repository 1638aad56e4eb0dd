from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.factorize import SeparableConfig, factorize_
from netchisel.factorize.separable import factorize_separable, separable_params
from netchisel.measure import count_flops


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 4, 1),
    )


def test_shapes_and_exact_macs() -> None:
    net = _net()
    factorize_(net, SeparableConfig(layers=("0",)))
    seq = net[0]
    assert isinstance(seq, nn.Sequential)
    assert [tuple(m.weight.shape) for m in seq] == [(8, 1, 3, 3), (16, 8, 1, 1)]
    assert seq[0].groups == 8 and seq[0].stride == (2, 2)
    # 8x10x10 in, 16x5x5 out: depthwise 25*8*9, pointwise 25*8*16.
    assert count_flops(seq, torch.zeros(1, 8, 10, 10)).macs == 25 * 8 * 9 + 25 * 8 * 16
    assert sum(p.numel() for p in seq.parameters()) == 8 * 9 + 8 * 16 + 16
    assert separable_params(nn.Conv2d(8, 16, 3)) == 8 * 9 + 8 * 16 + 16


@torch.no_grad()
def test_exactly_separable_weight_is_reproduced() -> None:
    torch.manual_seed(0)
    depthwise, pointwise = torch.randn(8, 1, 3, 3), torch.randn(16, 8, 1, 1)
    net = _net()
    with torch.no_grad():
        net[0].weight.copy_(pointwise * depthwise.transpose(0, 1))
    x = torch.randn(2, 8, 10, 10)
    want = net(x)
    ctx = Context(None, quiet=True)
    factorize_separable(net, SeparableConfig(layers=("0",)), ctx)
    assert float((net(x) - want).abs().max()) < 1e-4
    assert ctx.records["factorized"]["0"]["weight_relative_error"] < 1e-6


@torch.no_grad()
def test_batchnorm_between_starts_as_identity() -> None:
    plain, with_bn = _net(), _net()
    factorize_(plain, SeparableConfig(layers=("0",)))
    factorize_(with_bn, SeparableConfig(layers=("0",), batchnorm=True))
    assert isinstance(with_bn[0][1], nn.BatchNorm2d)
    x = torch.randn(2, 8, 10, 10)
    plain.eval(), with_bn.eval()
    assert float((plain(x) - with_bn(x)).abs().max()) < 1e-6


def test_skips_are_recorded() -> None:
    net = _net()
    ctx = Context(None, quiet=True)
    factorize_separable(net, SeparableConfig(), ctx)
    assert "depthwise conv (groups=16)" in ctx.records["skipped"]["2"]
    assert "1x1 conv" in ctx.records["skipped"]["3"]
    assert ctx.records["params_before"] == 8 * 16 * 9 + 16
    assert ctx.records["params_after"] == 8 * 9 + 8 * 16 + 16


def test_a_typo_in_layers_is_an_error_and_leaves_the_model() -> None:
    net = _net()
    before = copy.deepcopy(net)
    with pytest.raises(ConfigError, match="include pattern 'conv9' matches no layer"):
        factorize_(net, SeparableConfig(layers=("conv9",)))
    assert str(net) == str(before)


def test_artifact_round_trip_is_exact(tmp_path: Path) -> None:
    net = _net()
    factorize_(net, SeparableConfig(batchnorm=True))
    net.eval()
    loaded = load(save(net, tmp_path / "separable"))
    x = torch.randn(2, 8, 10, 10)
    assert torch.equal(loaded(x), net(x))
