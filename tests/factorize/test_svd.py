from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.factorize import SVDConfig, factorize_
from netchisel.factorize.rank import rank_for_energy
from netchisel.factorize.svd import (
    factorize_svd,
    factorized_linear,
    rank_for_params,
    svd_factors,
)
from netchisel.measure import count_flops


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def _with_spectrum(singular: list[float], out: int = 6, inp: int = 5) -> torch.Tensor:
    """A float64 (out, inp) matrix whose singular values are exactly `singular`."""
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(out, len(singular), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(singular), dtype=torch.float64))
    return u @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ v.T


@torch.no_grad()
def test_full_rank_reproduces_the_layer() -> None:
    # The stage skips full rank (it saves nothing), so the pieces are checked directly.
    layer = _mlp()[0]
    assert isinstance(layer, nn.Linear)
    first, second, _ = svd_factors(layer.weight, 48)
    pair = factorized_linear(layer, first, second)
    assert [tuple(m.weight.shape) for m in pair] == [(48, 64), (48, 48)]
    x = torch.randn(16, 64)
    assert float((pair(x) - layer(x)).abs().max()) < 1e-5


def test_factors_multiply_back_to_the_weight() -> None:
    w = _with_spectrum([5.0, 3.0, 2.0, 1.0, 0.5])
    first, second, s = svd_factors(w, 5)
    assert float((second @ first - w).abs().max()) < 1e-12
    assert torch.allclose(s, torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64))


def test_energy_picks_the_exact_rank() -> None:
    # squares 16, 9, 4, 1, 0 of total 30: cumulative 16/30, 25/30, 29/30, 30/30.
    s = torch.linalg.svdvals(_with_spectrum([4.0, 3.0, 2.0, 1.0, 0.0]))
    assert rank_for_energy(s, 16 / 30) == 1
    assert rank_for_energy(s, 0.6) == 2
    assert rank_for_energy(s, 25 / 30) == 2
    assert rank_for_energy(s, 0.9) == 3
    assert rank_for_energy(s, 0.97) == 4
    assert rank_for_energy(s, 1.0) == 4

    layer = nn.Linear(5, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(_with_spectrum([4.0, 3.0, 2.0, 1.0, 0.0]))
    net = nn.Sequential(layer)
    ctx = Context(None, quiet=True)
    # rank 2 has 22 weights < 30: factorized at exactly rank 2.
    factorize_svd(net, SVDConfig(energy=0.8), ctx)
    assert ctx.records["factorized"]["0"]["rank"] == 2
    assert ctx.records["factorized"]["0"]["energy_kept"] == pytest.approx(25 / 30, abs=1e-6)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.8])
def test_param_ratio_is_never_exceeded(ratio: float) -> None:
    net = _mlp()
    before = [sum(p.numel() for p in m.parameters()) for m in (net[0], net[2])]
    ctx = Context(None, quiet=True)
    factorize_svd(net, SVDConfig(param_ratio=ratio), ctx)
    for name, size in zip(("0", "2"), before, strict=True):
        entry = ctx.records["factorized"].get(name)
        if entry is None:
            continue
        after = sum(p.numel() for p in net.get_submodule(name).parameters())
        assert after == entry["params_after"] <= ratio * size
        # One more rank would not fit.
        n_out, n_in = entry["shape"]
        assert after + n_in + n_out > ratio * size
    # 64x48 + 48 = 3120 params; at 0.5: r = (1560 - 48) // 112 = 13.
    assert rank_for_params(64, 48, True, 0.5) == 13


def test_layers_that_would_not_shrink_are_skipped_and_recorded() -> None:
    net = _mlp()
    ctx = Context(None, quiet=True)
    factorize_svd(net, SVDConfig(rank=9), ctx)  # 10x48: 9 * 58 = 522 >= 480 weights
    assert isinstance(net[0], nn.Sequential) and isinstance(net[2], nn.Linear)
    assert "would not reduce parameters" in ctx.records["skipped"]["2"]


def test_macs_are_the_two_thin_matmuls() -> None:
    net = _mlp()
    factorize_(net, SVDConfig(rank=8, layers=("0",)))
    assert count_flops(net[0], torch.zeros(3, 64)).macs == 3 * (64 * 8 + 8 * 48)


def test_rank_too_large_names_the_value_and_leaves_the_model() -> None:
    net = _mlp()
    before = copy.deepcopy(net)
    # Layer "0" alone would accept rank 20; layer "2" (10 outputs) does not.
    with pytest.raises(ConfigError, match=r"rank 20 is larger than layer '2' allows.*= 10"):
        factorize_(net, SVDConfig(rank=20))
    assert isinstance(net[0], nn.Linear)
    assert all(
        torch.equal(a, b) for a, b in zip(net.parameters(), before.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 4, "energy": 0.9}, "give one of rank, energy, param_ratio, not rank and energy"),
        ({"energy": 1.5}, "energy 1.5 is not in"),
        ({"param_ratio": 0.0}, "param_ratio 0.0 is not in"),
        ({"rank": 0}, "rank must be >= 1, got 0"),
    ],
)
def test_bad_configs(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SVDConfig.from_dict(kwargs)


def test_artifact_round_trip_is_exact(tmp_path: Path) -> None:
    net = _mlp()
    factorize_(net, SVDConfig(param_ratio=0.5))
    loaded = load(save(net, tmp_path / "svd"))
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), net(x))
    assert [tuple(m.weight.shape) for m in loaded[0]] == [(13, 64), (48, 13)]
