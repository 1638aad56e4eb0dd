from __future__ import annotations

import pytest
import torch

from netchisel.dynamic.costs import ExitCosts
from netchisel.dynamic.thresholds import calibrate, outcome_of, simulate


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
    out = calibrate([early, middle, final], labels, "max_softmax", costs, 100.0)
    assert out is not None
    # Exit 1 must not take 6-7 (wrong): only its right samples may go, or none.
    assert out.accuracy == 100.0
    assert out.fractions == [0.5, 0.0, 0.5]
    assert out.expected_macs == pytest.approx(0.5 * 1 + 0.5 * 10)
    # A budget of 75% allows two wrong in eight: exit 0 then takes everything, its unsure
    # (uniform) rows too, whose argmax 0 is right on samples 4 and 6: the cheapest answer.
    loose = calibrate([early, middle, final], labels, "max_softmax", costs, 75.0)
    assert loose is not None and loose.fractions == [1.0, 0.0, 0.0]
    assert loose.accuracy == 75.0 and loose.expected_macs == 1.0


def test_an_exit_that_is_always_wrong_never_fires() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    wrong = _sure([1, 0, 1, 0])
    costs = ExitCosts([1, 9], [0], [0])
    out = calibrate([wrong, _sure(labels.tolist())], labels, "entropy", costs, 100.0)
    assert out is not None
    assert out.fractions == [0.0, 1.0]
    assert out.thresholds == [0.0]  # entropy's "never"


def test_no_thresholds_when_the_final_head_misses_the_budget() -> None:
    labels = torch.tensor([0, 1])
    final = _sure([0, 0])
    costs = ExitCosts([1, 1], [0], [0])
    assert calibrate([final, final], labels, "max_softmax", costs, 60.0) is None


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
    out = calibrate([unsure, final], labels, "max_softmax", costs, 100.0)
    assert out is not None and out.thresholds == [1.0] and out.fractions == [0.0, 1.0]
    assert out.expected_macs == 10.0  # the end alone: the head does not run
    on = outcome_of([unsure, final], labels, "max_softmax", costs, [0.9])
    assert on.fractions == [0.0, 1.0] and on.expected_macs == 13.0  # it runs, never fires
