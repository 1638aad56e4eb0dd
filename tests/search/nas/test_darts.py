"""The DARTS search loop: determinism, both orders, the trace, early stopping, the cost
penalty, 1-D and 2-D data, the derived model's artifact round trip, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from netchisel.artifact.store import load, save
from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder_of
from netchisel.core.task import Task, classification_task
from netchisel.measure import count_flops
from netchisel.search.nas import cell_net, cell_space
from netchisel.search.nas.darts import darts_search
from netchisel.search.nas.darts_config import DartsConfig

TINY = DartsConfig(
    epochs=2,
    steps_per_epoch=2,
    nodes=2,
    width=4,
    reductions=1,
    batch_size=16,
    ops=("sep3", "conv3", "max3", "skip"),
    eigen_iterations=3,
)


def task_of(shape: tuple[int, ...], n: int = 128) -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=generator)
    y = (x.flatten(1).mean(1) > 0).long() + 2 * (x.flatten(1)[:, 0] > 0).long()
    data = TensorDataset(x, y)
    return classification_task({"train": data, "val": data}, batch_size=16)


SEQUENCES = task_of((1, 16))


def test_same_seed_same_search_and_the_trace_is_complete() -> None:
    a, b = darts_search(SEQUENCES, TINY), darts_search(SEQUENCES, TINY)
    assert a.candidate == b.candidate and a.alpha_history == b.alpha_history
    assert [r.eigenvalue for r in a.trace] == [r.eigenvalue for r in b.trace]
    other = darts_search(SEQUENCES, TINY.with_changes(seed=1, epochs=1))
    assert other.alpha_history[0] != a.alpha_history[0]
    assert [r.epoch for r in a.trace] == [0, 1] and a.stopped_at is None
    assert a.candidate == a.trace[-1].candidate
    assert set(a.candidate) == set(cell_space(nodes=2).dimensions)
    assert a.net_kwargs == {
        "nodes": 2, "width": 4, "cells_per_stage": 1, "reductions": 1,
        "in_channels": 1, "num_classes": 4, "image_size": 16, "dims": 1,
    }  # fmt: skip
    assert a.ops == ("none", "sep3", "conv3", "max3", "skip")
    for epoch in a.alpha_history:  # softmax rows: 5 edges x 5 ops, each summing to 1
        assert len(epoch["normal"]) == 5 and len(epoch["normal"][0]) == 5
        assert max(abs(sum(row) - 1) for row in epoch["normal"] + epoch["reduce"]) < 1e-6
    for record in a.trace:
        assert 0 <= record.skips <= 4
        assert record.eigenvalue is not None and abs(record.eigenvalue) < 1e3
        assert 0 <= record.val_accuracy <= 100 and record.train_loss > 0
        assert record.expected_macs > 0


def test_second_order_moves_alpha_differently() -> None:
    first, second = (
        darts_search(SEQUENCES, TINY),
        darts_search(SEQUENCES, TINY.with_changes(order=2)),
    )
    one = torch.tensor(first.alpha_history[-1]["normal"])
    two = torch.tensor(second.alpha_history[-1]["normal"])
    assert 0 < float((one - two).abs().max()) < 1e-2  # same start, same data, other gradient


def test_early_stop_returns_the_cell_from_before_the_growth() -> None:
    config = TINY.with_changes(epochs=6, mitigation="early_stop", es_window=1, es_factor=1.01)
    result = darts_search(SEQUENCES, config)
    values = [r.eigenvalue or 0.0 for r in result.trace]
    assert result.stopped_at == len(result.trace) - 1 < 5
    assert values[-1] > 1.01 * values[-2] > 0
    assert all(not v > 1.01 * u > 0 for u, v in itertools.pairwise(values[:-1]))
    assert result.candidate == result.trace[-2].candidate


def test_a_higher_cost_lambda_derives_a_cell_with_fewer_macs() -> None:
    base = TINY.with_changes(epochs=1, steps_per_epoch=6, alpha_lr=0.05, eigen_iterations=0)
    macs = {}
    for weight in (0.0, 2.0):
        result = darts_search(SEQUENCES, base.with_changes(cost_lambda=weight))
        macs[weight] = count_flops(result.model(), torch.zeros(1, 1, 16)).macs
    assert macs[2.0] < macs[0.0]
    assert (macs[0.0], macs[2.0]) == (13184, 3840)


def test_images_and_the_derived_model_round_trips(tmp_path: Path) -> None:
    result = darts_search(task_of((1, 8, 8)), TINY.with_changes(epochs=1, eigen_iterations=0))
    assert result.net_kwargs["dims"] == 2 and result.net_kwargs["image_size"] == 8
    model = result.model(width=6, cells_per_stage=2).eval()
    assert str(model) == str(
        cell_net(**result.candidate, **(result.net_kwargs | {"width": 6, "cells_per_stage": 2}))
    )
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(load(save(model, tmp_path / "darts"))(x), model(x))
    swapped = result.model(normal1_op1="conv3")  # a cell dimension can be overridden too
    marked = builder_of(swapped)
    assert marked is not None and marked[1]["normal1_op1"] == "conv3"


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="order must be 1 or 2"):
        DartsConfig(order=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mitigation must be one of"):
        DartsConfig(mitigation="pdarts")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs eigen_iterations >= 1"):
        DartsConfig(mitigation="both", eigen_iterations=0)
    with pytest.raises(ConfigError, match="width must be an integer >= 1"):
        DartsConfig(width=0)
    with pytest.raises(ConfigError, match="dims=2 but the data is 1-D"):
        darts_search(SEQUENCES, TINY.with_changes(dims=2))
    with pytest.raises(ConfigError, match="at least 4 batches of 64"):
        darts_search(task_of((1, 16), n=100), TINY.with_changes(batch_size=64))


def test_early_stop_needs_two_windows_of_epochs() -> None:
    with pytest.raises(ConfigError, match="needs epochs >= 10 \\(got 6\\)"):
        DartsConfig(epochs=6, mitigation="both")
    assert DartsConfig(epochs=6, es_window=3, mitigation="both").early_stop
