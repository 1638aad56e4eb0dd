"""Plans: how many channels each unit keeps and which, as pure functions of the scores."""

from __future__ import annotations

import torch

from netchisel.prune.structured import StructuredConfig, kept_count
from netchisel.prune.structured.plan import choose_plan, nonempty
from netchisel.prune.structured.units import Unit


def test_kept_count_is_floor_with_a_floor_of_one_and_rounding() -> None:
    assert [kept_count(64, r) for r in (0.0, 0.3, 0.5, 0.999)] == [64, 44, 32, 1]
    assert kept_count(16, 0.3, round_to=8) == 16 and kept_count(64, 0.5, round_to=24) == 48


def _unit(name: str, scores: list[float], members: tuple[str, ...] = ()) -> Unit:
    return Unit(name, name, members or (name,), torch.tensor(scores))


def test_local_plans_keep_the_top_scores_of_every_unit_and_per_layer_overrides() -> None:
    units = [_unit("a", [4.0, 1.0, 3.0, 2.0]), _unit("b", [1.0, 2.0, 3.0, 4.0])]
    plan = choose_plan(units, 0.5, StructuredConfig(per_layer={"b": 0.75}))
    assert plan["a"].tolist() == [True, False, True, False]
    assert plan["b"].tolist() == [False, False, False, True]


def test_global_plans_rank_mean_normalised_scores_with_a_floor() -> None:
    # After dividing by each unit's mean, a's scores are 1.6, 0.4, 1.2, 0.8 and b's 1, 1: three
    # of six channels go, and every unit keeps min_keep: a its two best, b one of its two.
    units = [_unit("a", [4.0, 1.0, 3.0, 2.0]), _unit("b", [5.0, 5.0])]
    plan = choose_plan(units, 0.5, StructuredConfig(scope="global", min_keep=0.5))
    assert plan["a"].tolist() == [True, False, True, False]
    assert int(plan["b"].sum()) == 1


def test_a_plan_never_drops_all_channels_that_are_a_whole_coupled_layer() -> None:
    """GhostNet: root channels 0-1 are all of a coupled layer (concat, then a slice)."""
    unit = Unit("a", "a", ("a",), torch.tensor([1.0, 2.0, 5.0, 6.0]), covers=((0, 1),))
    plan = choose_plan([unit], 0.5, StructuredConfig(ratio=0.5))
    # the top-2 keep would be channels 2 and 3; channel 1 (the better of 0-1) is added
    assert plan["a"].tolist() == [False, True, True, True]
    assert nonempty([unit], {"a": torch.tensor([True, False, False, True])})["a"].tolist() == [
        True,
        False,
        False,
        True,
    ]
