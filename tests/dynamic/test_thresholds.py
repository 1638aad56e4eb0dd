from __future__ import annotations

import pytest
import torch

from netchisel.dynamic.costs import ExitCosts
from netchisel.dynamic.thresholds import (
    Budget,
    allowed_misses,
    calibrate,
    outcome_of,
    simulate,
    trade_off,
)

EXACT = Budget(100.0, 0.0, "accuracy")


def _sure(labels: list[int], classes: int = 2, strength: float = 8.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).float() * strength


def test_simulate_counts_exits_and_charges_each_sample_its_exit() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.95, 0.3]])
    correct = torch.tensor(
        [[True, False, False, False], [True, True, True, False], [True, True, True, True]]
    )
    accuracy, fractions, mean = simulate(scores, correct, [0.5, 0.5], [10, 20, 40])
    # Exits: sample 0 -> 0 (right), 1 -> 1 (right), 2 -> 0 (wrong), 3 -> end (right).
    assert fractions == [0.5, 0.25, 0.25]
    assert accuracy == 75.0
    assert mean == pytest.approx(0.5 * 10 + 0.25 * 20 + 0.25 * 40)


def test_calibration_takes_the_cheapest_thresholds_within_budget() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    final = _sure(labels.tolist())
    # Exit 0 is sure and right on the first four, unsure on the rest; exit 1 is sure and right
    # on samples 4-5, sure and wrong on 6-7.
    early = torch.cat([_sure([0, 1, 0, 1]), torch.zeros(4, 2)])
    middle = torch.cat([torch.zeros(4, 2), _sure([0, 1, 1, 0])])
    costs = ExitCosts([1, 4, 5], [0, 0], [0, 1])  # 1, 5 and 10 MACs, heads free
    out = calibrate([early, middle, final], labels, "max_softmax", costs, EXACT)
    assert out is not None
    # Exit 1 must not take 6-7 (wrong): only its right samples may go, or none.
    assert out.accuracy == 100.0
    assert out.fractions == [0.5, 0.0, 0.5]
    assert out.expected_macs == pytest.approx(0.5 * 1 + 0.5 * 10)
    # A budget of 75% allows two wrong in eight: exit 0 then takes everything, its unsure
    # (uniform) rows too, whose argmax 0 is right on samples 4 and 6: the cheapest answer.
    loose = calibrate(
        [early, middle, final], labels, "max_softmax", costs, Budget(100.0, 25.0, "accuracy")
    )
    assert loose is not None and loose.fractions == [1.0, 0.0, 0.0]
    assert loose.accuracy == 75.0 and loose.expected_macs == 1.0


def test_an_exit_that_is_always_wrong_never_fires() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    wrong = _sure([1, 0, 1, 0])
    costs = ExitCosts([1, 9], [0], [0])
    out = calibrate([wrong, _sure(labels.tolist())], labels, "entropy", costs, EXACT)
    assert out is not None
    assert out.fractions == [0.0, 1.0]
    assert out.thresholds == [0.0]  # entropy's "never"


def test_no_thresholds_when_the_final_head_misses_the_budget() -> None:
    labels = torch.tensor([0, 1])
    final = _sure([0, 0])
    costs = ExitCosts([1, 1], [0], [0])
    assert (
        calibrate([final, final], labels, "max_softmax", costs, Budget(100.0, 40.0, "accuracy"))
        is None
    )


def test_given_thresholds_give_their_outcome() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    early = torch.tensor([[9.0, 0.0], [0.0, 0.5], [0.0, 9.0], [0.2, 0.0]])
    costs = ExitCosts([2, 6], [0], [0])
    out = outcome_of([early, _sure(labels.tolist())], labels, "max_softmax", costs, [0.9])
    assert out.fractions == [0.5, 0.5]
    assert out.accuracy == 75.0
    assert out.expected_macs == 5.0


def test_a_head_set_to_never_costs_nothing_so_calibration_may_switch_it_off() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    final = _sure(labels.tolist())
    unsure = torch.zeros(4, 2)  # never sure, and wrong on half: it cannot help
    costs = ExitCosts([1, 9], [3], [0])  # the exit's head costs 3 MACs
    out = calibrate([unsure, final], labels, "max_softmax", costs, EXACT)
    assert out is not None and out.thresholds == [1.0] and out.fractions == [0.0, 1.0]
    assert out.expected_macs == 10.0  # the end alone: the head does not run
    on = outcome_of([unsure, final], labels, "max_softmax", costs, [0.9])
    assert on.fractions == [0.0, 1.0] and on.expected_macs == 13.0  # it runs, never fires


@pytest.mark.parametrize(
    ("samples", "max_drop", "confidence", "allowed"),
    # Checked against scipy.stats.beta.ppf(confidence, k + 1, samples - k), the one-sided
    # Clopper-Pearson bound: 0.26% for 0 of 270, 0.62% for 1 of 270; 0.34% / 0.53% for 1 / 2
    # of 500; 1.89% / 2.01% for 13 / 14 of 1,000 at confidence 0.9.
    [
        (270, 0.5, 0.5, 0),
        (500, 0.5, 0.5, 1),
        (1000, 0.5, 0.5, 4),
        (1000, 2.0, 0.9, 13),
        (270, 0.5, 0.9, -1),  # 0.85%: not even zero misses of 270 bounds 0.5 points at 90%
        (500, 0.0, 0.5, -1),  # a zero budget needs no exit at all
    ],
)
def test_allowed_misses_is_the_clopper_pearson_bound(
    samples: int, max_drop: float, confidence: float, allowed: int
) -> None:
    assert allowed_misses(samples, max_drop, confidence) == allowed


def _saturated() -> tuple[list[torch.Tensor], torch.Tensor, ExitCosts]:
    """270 samples, the final head right on all; the early head sure and right on 200
    (p = 0.99), sure and wrong on one (p = 0.9), less sure and right on 69 (p = 0.8)."""
    labels = torch.zeros(270, dtype=torch.long)
    final = _sure([0] * 270)

    def rows(p: float, label: int, n: int) -> torch.Tensor:
        row = torch.full((2,), (1 - p)).log()
        row[label] = torch.tensor(p).log()
        return row.repeat(n, 1)

    early = torch.cat([rows(0.99, 0, 200), rows(0.9, 1, 1), rows(0.8, 0, 69)])
    return [early, final], labels, ExitCosts([1, 9], [0], [0])


def test_the_agreement_rule_needs_evidence_the_accuracy_rule_does_not() -> None:
    logits, labels, costs = _saturated()
    # As measured, all 270 leaving early cost one sample = 0.37 points <= 0.5: accepted.
    point = calibrate(logits, labels, "max_softmax", costs, Budget(100.0, 0.5, "accuracy"))
    assert point is not None and point.fractions == [1.0, 0.0]
    assert point.accuracy == pytest.approx(100 * 269 / 270) and point.expected_macs == 1.0
    # One disagreement in 270 bounds the loss rate at 0.62% > 0.5% (confidence 0.5): only the
    # 200 samples surer than the wrong one may leave.
    honest = calibrate(logits, labels, "max_softmax", costs, Budget(100.0, 0.5))
    assert honest is not None and honest.accuracy == 100.0
    assert honest.fractions == pytest.approx([200 / 270, 70 / 270])
    assert honest.expected_macs == pytest.approx((200 * 1 + 70 * 10) / 270)
    assert 0.9 <= honest.thresholds[0] < 0.991  # just below the sure ones (float32)
    # At confidence 0.9 even zero disagreements of 270 cannot bound 0.5 points: no exit.
    strict = calibrate(logits, labels, "max_softmax", costs, Budget(100.0, 0.5, confidence=0.9))
    assert strict is not None and strict.fractions == [0.0, 1.0]


def test_the_agreement_rule_counts_fixes_as_misses_and_charges_the_final_heads_loss() -> None:
    labels = torch.zeros(500, dtype=torch.long)
    final = torch.cat([_sure([0] * 498), _sure([1, 1])])  # 99.6%: wrong on the last two
    early = _sure([0] * 500)  # right on all, so it differs from the final head on two
    costs = ExitCosts([1, 9], [0], [0])
    accuracy = calibrate(
        [early, final], labels, "max_softmax", costs, Budget(99.6, 0.5, "accuracy")
    )
    assert accuracy is not None and accuracy.fractions == [1.0, 0.0]  # gains count: 100%
    # Two differences of 500 bound 0.53% > 0.5%: the exit cannot take all (every score ties).
    agreement = calibrate([early, final], labels, "max_softmax", costs, Budget(99.6, 0.5))
    assert agreement is not None and agreement.fractions == [0.0, 1.0]
    # Against a reference of 99.8% the final head has spent 0.2 points: one difference is
    # allowed at 0.5 (of 500), none at 0.3.
    budget = Budget(99.8, 0.5)
    assert budget.misses_allowed(500, final_accuracy=99.6) == allowed_misses(500, 0.3, 0.5) == 0
    assert budget.misses_allowed(500, final_accuracy=99.8) == 1
    assert budget.misses_allowed(500, final_accuracy=100.0) == 1  # a gain is not credited


def test_trade_off_recalibrates_at_each_budget_with_the_rule() -> None:
    logits, labels, costs = _saturated()
    curve = trade_off(logits, labels, "max_softmax", costs, Budget(100.0, 0.5), (0.0, 0.5, 2.0))
    # 0: no exit; 0.5: the 200 sure ones; 2.0 (up to 2 misses of 270 at 0.5): all 270.
    assert [b for b, _ in curve] == [0.0, 0.5, 2.0]
    assert [o.fractions[0] for _, o in curve] == pytest.approx([0.0, 200 / 270, 1.0])
