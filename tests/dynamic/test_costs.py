from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import netchisel as nc
from netchisel.dynamic.chain import plan_chain
from netchisel.dynamic.costs import exit_costs, exit_macs, expected_macs
from netchisel.dynamic.exits import EarlyExitModel
from netchisel.dynamic.heads import make_head
from tests.dynamic._nets import conv_chain

# conv 96, relu, conv 384, relu, flatten, linear 96; each head Linear(4, 3) = 12 MACs.
STEPS = [96, 0, 384, 0, 0, 96]


def _model() -> EarlyExitModel:
    net = conv_chain().eval()
    x = torch.randn(2, 1, 8)
    chain = plan_chain(net, ["1", "3"], (x,))
    heads = [make_head(f, 3, 1, "x") for f in chain.features]
    return EarlyExitModel(net, heads, chain.steps, chain.exit_after, [], num_classes=3).eval()


def test_exact_macs_per_step_head_and_exit() -> None:
    model = _model()
    macs = exit_macs(model, torch.zeros(5, 1, 8))
    assert macs.steps == STEPS and macs.heads == [12, 12] and macs.static == 576
    assert macs.per_exit() == [108, 504, 600]
    assert macs.per_exit([False, True]) == [96, 492, 588]  # the first head does not run


def test_expected_macs_under_the_calibration_distribution() -> None:
    model = _model()
    model.exit_fractions = [0.5, 0.25, 0.25]
    model.set_thresholds([0.9, 0.8])
    costs = exit_costs(model, torch.zeros(1, 1, 8))
    assert [row["macs"] for row in costs["exits"]] == [108, 504, 600]
    assert [row["after"] for row in costs["exits"]] == ["1", "3", "end"]
    assert costs["static_macs"] == 576
    assert costs["expected_macs"] == pytest.approx(0.5 * 108 + 0.25 * 504 + 0.25 * 600)
    assert costs["mac_reduction"] == pytest.approx(1 - 330 / 576)
    assert costs["never_fire"] == []
    model.exit_fractions = [0.5, 0.0, 0.5]
    assert exit_costs(model, torch.zeros(1, 1, 8))["never_fire"] == ["3"]
    model.set_thresholds([0.9, 1.0])  # "never" at the second exit: its head does not run
    costs = exit_costs(model, torch.zeros(1, 1, 8))
    assert [row["macs"] for row in costs["exits"]] == [108, 492, 588]
    assert [row["head_runs"] for row in costs["exits"][:2]] == [True, False]
    assert expected_macs([1, 2], [0.5, 0.5]) == 1.5


def test_profile_reports_the_dynamic_costs_and_counts_only_what_ran() -> None:
    model = _model()
    model.exit_fractions = [1.0, 0.0, 0.0]
    model.set_thresholds([0.0, 0.0])  # every sample leaves at the first exit
    p = nc.profile(model, torch.zeros(1, 1, 8), latency=False, on_disk=False)
    assert p.macs == 108  # the forward that ran stopped after the first exit
    assert p.dynamic is not None and p.dynamic["expected_macs"] == 108.0
    assert p.dynamic["mac_reduction"] == pytest.approx(1 - 108 / 576)
    static = nc.profile(model.backbone, torch.zeros(1, 1, 8), latency=False, on_disk=False)
    assert static.macs == 576 and static.dynamic is None


def test_the_profile_command_prints_the_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from netchisel.cli import main

    model = _model()
    model.exit_fractions = [0.5, 0.25, 0.25]
    model.set_thresholds([0.9, 0.8])
    directory = nc.save(model, tmp_path / "ee")
    monkeypatch.setattr(
        sys,
        "argv",
        ["netchisel", "profile", str(directory), "--input-shape", "1,1,8", "--no-latency"],
    )
    try:
        main()
    except SystemExit as done:
        assert not done.code
    out = " ".join(capsys.readouterr().out.split())  # the title wraps to the table's width
    assert "expected MACs per sample │ 330 (42.7% fewer than 576)" in out
    assert "exit after 3 (threshold 0.8) │ 504 MACs, 25.0% of calibration" in out
    assert "the end │ 600 MACs, 25.0% of calibration" in out
