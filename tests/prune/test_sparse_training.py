from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.prune import sparse_training as st
from netchisel.prune.sparse_training import (
    SparseTrainingConfig,
    cosine_drop_fraction,
    drop_and_grow,
    erk_densities,
    random_keep,
    sparse_training,
)
from netchisel.stages import get_stage
from tests.prune.test_schedule import WEIGHTS, tiny_net, tiny_task, total_weights


def test_erk_densities_average_to_the_target_and_cap_at_one() -> None:
    shapes = [(32, 16), (32, 32), (4, 32)]
    sizes = [math.prod(s) for s in shapes]
    d = erk_densities(shapes, 0.2)
    assert sum(x * n for x, n in zip(d, sizes, strict=True)) == pytest.approx(0.2 * sum(sizes))
    # density is proportional to (sum of dims) / (product of dims)
    assert d[0] / d[1] == pytest.approx((48 / 512) / (64 / 1024))
    capped = erk_densities([(1000, 1000), (2, 2)], 0.05)
    assert capped[1] == 1.0
    assert capped[0] * 1e6 + 4 == pytest.approx(0.05 * (1e6 + 4))


def test_cosine_drop_fraction_decays_to_zero() -> None:
    values = [cosine_drop_fraction(t, 0.4, 100) for t in (0, 25, 50, 100, 150)]
    assert values == pytest.approx([0.4, 0.2 * (1 + math.cos(math.pi / 4)), 0.2, 0.0, 0.0])


def test_drop_and_grow_keeps_the_count_and_picks_by_score() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(20, 30, generator=g)
    keep = random_keep(weight.shape, 150, g)
    weight = weight * keep
    scores = torch.rand(20, 30, generator=g)
    new = drop_and_grow(weight, keep, scores, 40)
    assert int(new.sum()) == 150
    # expected: drop the 40 smallest active magnitudes, grow the 40 best-scored absent after it
    active = keep.flatten().nonzero().squeeze(1)
    dropped = active[weight.flatten()[active].abs().topk(40, largest=False).indices]
    expected = keep.flatten().clone()
    expected[dropped] = False
    expected[scores.flatten().masked_fill(expected, -1.0).topk(40).indices] = True
    assert torch.equal(new.flatten(), expected)
    assert int((new & ~keep).sum()) > 0
    with pytest.raises(ValueError, match="cannot drop"):
        drop_and_grow(weight, keep, scores, 151)


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_masks_keep_their_size_across_every_update(
    regrow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, torch.Tensor]] = []

    def spy(model: nn.Module, name: str, keep: torch.Tensor, fill: object = None) -> None:
        calls.append((name, keep.clone()))
        set_mask(model, name, keep)

    monkeypatch.setattr(st, "set_mask", spy)
    net, task = tiny_net(), tiny_task()
    ctx = Context(task, quiet=True)
    config = SparseTrainingConfig.from_dict(
        {"sparsity": 0.8, "steps": 200, "update_every": 30, "regrow": regrow, "lr": 1e-2}
    )
    sparse_training(net, config, ctx)
    densities = erk_densities([tuple(net.get_parameter(w).shape) for w in WEIGHTS], 0.2)
    expected = {
        w: round(d * net.get_parameter(w).numel()) for w, d in zip(WEIGHTS, densities, strict=True)
    }
    updates = ctx.records["updates"]
    assert [u["step"] for u in updates] == [30, 60, 90, 120]  # before 3/4 of 200 steps
    assert len(calls) == len(WEIGHTS) * (1 + len(updates))
    for name, keep in calls:
        assert int(keep.sum()) == expected[name]  # the same count before and after each update
    assert all(u["replaced"] > 0 for u in updates)
    fractions = [u["drop_fraction"] for u in updates]
    assert fractions == [cosine_drop_fraction(s, 0.3, 150) for s in (30, 60, 90, 120)]
    n = total_weights(net)
    assert ctx.records["sparsity"] == (n - sum(expected.values())) / n
    for w in WEIGHTS:
        weight = net.get_parameter(w)
        assert bool((weight[~masks_of(net)[w].keep] == 0).all())
    assert task.evaluate(net)["accuracy"] >= 85.0


def test_rigl_regrows_where_the_dense_gradient_is_largest(monkeypatch: pytest.MonkeyPatch) -> None:
    grown: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real = st.drop_and_grow

    def spy(
        weight: torch.Tensor, keep: torch.Tensor, scores: torch.Tensor, count: int
    ) -> torch.Tensor:
        new = real(weight, keep, scores, count)
        grown.append((keep, new, scores))
        return new

    monkeypatch.setattr(st, "drop_and_grow", spy)
    config = SparseTrainingConfig(sparsity=0.8, steps=20, update_every=10, update_until=1.0)
    sparse_training(tiny_net(), config, Context(tiny_task(), quiet=True))
    assert len(grown) == len(WEIGHTS)
    for keep, new, scores in grown:
        assert float(scores[~keep].abs().sum()) > 0  # gradients of absent weights were seen
        fresh = new & ~keep
        assert scores[fresh].min() >= scores[~keep & ~new].max()


def test_zero_drop_fraction_trains_a_static_mask_and_seeds_repeat() -> None:
    config = SparseTrainingConfig(sparsity=0.9, steps=30, update_every=5, drop_fraction=0.0)
    masks = []
    for seed in (1, 1, 2):
        net = tiny_net()
        ctx = Context(tiny_task(), quiet=True, seed=seed)
        sparse_training(net, config, ctx)
        assert all(u["replaced"] == 0 for u in ctx.records["updates"])
        masks.append(masks_of(net)["0.weight"].keep)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_uniform_distribution_prunes_every_layer_alike() -> None:
    net = tiny_net()
    config = SparseTrainingConfig(sparsity=0.75, steps=10, distribution="uniform")
    sparse_training(net, config, Context(tiny_task(), quiet=True))
    for w in WEIGHTS:
        weight = net.get_parameter(w)
        assert int(masks_of(net)[w].keep.sum()) == round(0.25 * weight.numel())


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"steps": 0}, "steps"),
        ({"drop_fraction": 1.0}, "drop_fraction"),
        ({"update_every": 0}, "update_every"),
        ({"update_until": 0.0}, "update_until"),
        ({"regrow": "magic"}, "regrow"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SparseTrainingConfig.from_dict(values)


def test_stage_is_registered() -> None:
    assert get_stage("prune.sparse_training").config_class is SparseTrainingConfig
