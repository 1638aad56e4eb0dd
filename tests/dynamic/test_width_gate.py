from __future__ import annotations

import pytest
import torch

from netchisel.dynamic.thresholds import Budget
from netchisel.dynamic.width_gate import (
    calibrate_bias,
    choices,
    gate_targets,
    make_gate,
    outcome,
    switch_points,
)
from netchisel.measure import count_flops


def test_gate_shapes_and_macs() -> None:
    conv = make_gate(torch.zeros(1, 1, 32, 32), 4)
    # Conv2d(1, 8, 3, stride 2): 8 * 9 * 16 * 16 = 18,432; Linear(8 * 16, 4) = 512.
    assert count_flops(conv, torch.zeros(1, 1, 32, 32)).macs == 18_944
    one_d = make_gate(torch.zeros(1, 1, 40), 3, channels=4, pool=2)
    # Conv1d(1, 4, 3, stride 2): 4 * 3 * 20 = 240; Linear(4 * 2, 3) = 24.
    assert count_flops(one_d, torch.zeros(1, 1, 40)).macs == 264
    flat = make_gate(torch.zeros(1, 64), 2, channels=16)
    assert count_flops(flat, torch.zeros(1, 64)).macs == 64 * 16 + 16 * 2


def test_targets_are_the_narrowest_sure_width_priced_by_cost() -> None:
    # Three samples, widths costing 10 / 50 / 100; p(label) per width:
    # sample 0: 0.95 / 0.97 / 0.99 -> narrowest (its extra sureness costs more than it gains)
    # sample 1: 0.30 / 0.90 / 0.92 -> the middle one
    # sample 2: 0.10 / 0.20 / 0.99 -> the widest
    right = torch.tensor([[0.95, 0.30, 0.10], [0.97, 0.90, 0.20], [0.99, 0.92, 0.99]])
    probs = torch.stack([right, 1 - right], dim=-1)  # label 0 everywhere
    labels = torch.zeros(3, dtype=torch.long)
    assert gate_targets(probs, labels, [10, 50, 100], 0.1).tolist() == [0, 1, 2]
    # No price: the surest width (ties to the narrower).
    assert gate_targets(probs, labels, [10, 50, 100], 0.0).tolist() == [2, 2, 2]
    # A high price: always the narrowest.
    assert gate_targets(probs, labels, [10, 50, 100], 10.0).tolist() == [0, 0, 0]


def test_bias_leans_wider_and_switch_points_are_exact() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert choices(logits, 0.0).tolist() == [0, 1]
    assert choices(logits, 5.0).tolist() == [2, 2]
    assert choices(logits, -5.0).tolist() == [0, 0]
    # Sample 0 switches 0->2 at 0.5 (2 = 1 + 2b) and would switch 0->1 at 2, 1->2 at -1;
    # sample 1 switches 0->1 at -1, 1->2 at 1, 0->2 at 0.
    assert switch_points(logits).tolist() == [-1.0, 0.0, 0.5, 1.0, 2.0]


def test_calibration_takes_the_cheapest_bias_within_budget() -> None:
    # Four samples; width 0 is right on the first two only, width 1 on all.
    logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    correct = torch.tensor([[True, True, False, False], [True, True, True, True]])
    costs, gate = [10, 100], 2
    full = calibrate_bias(logits, correct, costs, gate, Budget(100.0, 0.0, "accuracy"))
    assert full is not None
    # The bias must move sample 2 (switch point 1.0) but not samples 0 and 1 (2.0 and 3.0).
    assert full.fractions == [0.5, 0.5] and full.accuracy == 100.0
    assert full.expected_macs == gate + 0.5 * 10 + 0.5 * 100
    assert 1.0 <= full.bias < 2.0
    loose = calibrate_bias(logits, correct, costs, gate, Budget(100.0, 50.0, "accuracy"))
    assert loose is not None and loose.fractions == [1.0, 0.0] and loose.expected_macs == 12.0
    nothing = Budget(100.0, 40.0, "accuracy")
    assert calibrate_bias(logits, ~correct, costs, gate, nothing) is None  # nothing meets it
    again = outcome(logits, correct, costs, gate, full.bias)
    assert again == full


def test_the_agreement_rule_counts_answers_that_differ_from_the_widest() -> None:
    # 500 samples; width 0 answers as the widest on all but three (gate logits 1.0, 2.0, 3.0
    # lean narrow on those, 4.0 on the rest). The widest is right on every one.
    n = 500
    margin = torch.full((n,), 4.0)
    margin[:3] = torch.tensor([1.0, 2.0, 3.0])
    logits = torch.stack([margin, torch.zeros(n)], 1)
    differs = torch.zeros(2, n, dtype=torch.bool)
    differs[0, :3] = True
    correct = ~differs
    costs, gate = [10, 100], 0
    point = calibrate_bias(logits, correct, costs, gate, Budget(100.0, 0.5, "accuracy"), differs)
    # As measured, two of 500 wrong = 0.4 points: the narrow width takes all but one.
    assert point is not None and point.fractions == [499 / 500, 1 / 500]
    # One difference of 500 bounds 0.34% <= 0.5%, two 0.53% > 0.5% (Clopper-Pearson at 0.5):
    # only one of the three may stay narrow.
    honest = calibrate_bias(logits, correct, costs, gate, Budget(100.0, 0.5), differs)
    assert honest is not None and honest.fractions == [498 / 500, 2 / 500]
    assert honest.accuracy == pytest.approx(100.0 - 100.0 / 500) and 2.0 <= honest.bias < 3.0
    with pytest.raises(ValueError, match="needs `differs`"):
        calibrate_bias(logits, correct, costs, gate, Budget(100.0, 0.5))
