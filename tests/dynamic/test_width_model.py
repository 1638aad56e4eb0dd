from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import netchisel as nc
from netchisel.dynamic.width_gate import make_gate
from netchisel.dynamic.width_model import WidthModel, grouped, width_costs, width_macs
from netchisel.dynamic.width_slim import plan_width
from netchisel.measure import count_flops, profile
from netchisel.zoo.models.vision import cnn
from tests.dynamic.test_width_slim import bn_chain

WIDTHS = [0.5, 1.0]
# bn_chain: conv 96 / 192, conv 384 / 1536, linear 48 / 96 MACs per sample at width 0.5 / 1.0.
MACS = [96 + 384 + 48, 192 + 1536 + 96]
# The gate on (1, 8): Conv1d(1, 8, 3, stride 2) 8 * 3 * 4 = 96, Linear(8 * 4, 2) 64.
GATE = 96 + 64


def _model(seed: int = 0) -> WidthModel:
    net = bn_chain(seed)
    x = torch.zeros(1, 1, 8)
    torch.manual_seed(seed)
    model = WidthModel(net, plan_width(net, WIDTHS, x), WIDTHS, make_gate(x, 2)).eval()
    with torch.no_grad():  # the narrow width's own statistics, unlike the full one's prefix
        for norms in model.norms:
            norms[0].running_mean.normal_()  # type: ignore[index]
        # Lean the random gate so that it sends about half of the inputs to each width.
        z = model.gate(torch.randn(256, 1, 8, generator=torch.Generator().manual_seed(9)))
    model.gate_bias = -float((z[:, 1] - z[:, 0]).median())
    return model


def test_exact_macs_per_width_match_a_real_forward() -> None:
    model = _model()
    x = torch.randn(12, 1, 8)
    assert width_macs(model, x) == (MACS, GATE, MACS[1])
    for k in range(2):
        model.fixed_width = k  # every sample at width k; the gate does not run
        assert count_flops(model, x).macs == 12 * MACS[k]
    model.fixed_width = None
    with torch.no_grad():
        choice = model.choose(x)
    assert 0 < int(choice.sum()) < 12  # both widths are chosen (seed 0)
    expected = 12 * GATE + sum(MACS[int(k)] for k in choice)
    assert count_flops(model, x).macs == expected  # the gated forward pays what it chose


def test_zoo_cnn_macs_per_width() -> None:
    widths = [0.25, 0.5, 0.75, 1.0]
    x = torch.zeros(1, 1, 32, 32)
    net = cnn()
    model = WidthModel(net, plan_width(net, widths, x), widths, make_gate(x, 4))
    # Width 0.25: conv 8*1*9*32*32 = 73,728, conv 16*8*9*16*16 = 294,912, conv 32*16*9*8*8 =
    # 294,912, Linear 512*10 = 5,120. Gate: conv 8*9*16*16 = 18,432, Linear 128*4 = 512.
    per_width, gate, static = width_macs(model, x)
    assert per_width == [668_672, 2_516_992, 5_544_960, 9_752_576] and gate == 18_944
    assert static == count_flops(net, x).macs == per_width[-1]


def test_full_width_is_the_backbone_and_narrow_norms_are_their_own() -> None:
    model = _model()
    x = torch.randn(5, 1, 8)
    with torch.no_grad():
        assert torch.equal(model.run_width(x, 1), model.backbone(x))
    assert model.norm_at(1, 1) is model.backbone[1]
    assert model.norm_at(1, 0) is model.norms[0][0]  # type: ignore[index]
    assert model.norms[1][0].num_features == 4  # type: ignore[index]


def test_regrouped_batch_equals_each_sample_alone() -> None:
    model = _model()
    x = torch.randn(20, 1, 8)
    with torch.no_grad():
        out, choice = model.routed(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(20)])
        by_width = [model.run_width(x[choice == k], k) for k in range(2)]
    assert sorted(set(choice.tolist())) == [0, 1]
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-6)
    for k in range(2):  # each group ran as one batch: exactly its outputs, in place
        assert torch.equal(out[choice == k], by_width[k])


def test_batch_one_runs_only_its_width() -> None:
    model = _model()
    x = torch.randn(20, 1, 8)
    with torch.no_grad():
        choice = model.choose(x)
    for i in (int((choice == 0).nonzero()[0]), int((choice == 1).nonzero()[0])):
        k = int(choice[i])
        assert count_flops(model, x[i : i + 1]).macs == GATE + MACS[k]


def test_grouped_puts_outputs_back_in_order() -> None:
    x = torch.arange(6.0)[:, None]
    out = grouped(x, torch.tensor([2, 0, 1, 2, 0, 1]), lambda t, k: t + 100 * k)
    assert out.flatten().tolist() == [200.0, 1.0, 102.0, 203.0, 4.0, 105.0]


def test_dynamic_costs_in_the_profile() -> None:
    model = _model()
    model.width_fractions = [0.75, 0.25]
    costs = width_costs(model, torch.zeros(3, 1, 8))
    assert [r["macs"] for r in costs["widths"]] == MACS
    assert [r["macs_with_gate"] for r in costs["widths"]] == [m + GATE for m in MACS]
    assert costs["expected_macs"] == 0.75 * (MACS[0] + GATE) + 0.25 * (MACS[1] + GATE)
    assert costs["mac_reduction"] == 1 - costs["expected_macs"] / MACS[1]
    p = profile(model, torch.zeros(3, 1, 8), latency=False, on_disk=False)
    assert p.dynamic == costs


def test_save_load_is_bit_exact(tmp_path: Path) -> None:
    model = _model()
    model.gate_bias = 0.375
    model.width_fractions = [0.5, 0.5]
    loaded = nc.load(nc.save(model, tmp_path / "width"))
    assert isinstance(loaded, WidthModel)
    assert (loaded.widths, loaded.gate_bias, loaded.width_fractions) == (WIDTHS, 0.375, [0.5, 0.5])
    assert loaded.channels_in == model.channels_in and loaded.fixed_width is None
    x = torch.randn(33, 1, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.choose(x), model.choose(x))
        for k in range(2):
            assert torch.equal(loaded.run_width(x, k), model.run_width(x, k))
    assert isinstance(loaded.norms[0][0], nn.BatchNorm1d)  # type: ignore[index]
