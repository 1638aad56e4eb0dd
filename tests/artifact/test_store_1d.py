"""Save/load of 1-D models: bit-exact outputs, unpruned, pruned and quantized."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from tests._models_1d import POOLS, cnn1d, inputs_1d


def _round_trip(model: nn.Module, tmp_path: Path) -> tuple[nn.Module, bool]:
    """The loaded model, and whether its outputs equal the saved model's bit for bit."""
    x = inputs_1d(8)
    with torch.no_grad():
        ref = model.eval()(x)
    nc.save(model, tmp_path / "a")
    loaded = nc.load(tmp_path / "a")
    with torch.no_grad():
        return loaded, torch.equal(loaded(x), ref)


@pytest.mark.parametrize("pool", POOLS)
def test_unpruned_1d_model_round_trips_bit_exact(pool: str, tmp_path: Path) -> None:
    net = cnn1d(pool)
    loaded, exact = _round_trip(net, tmp_path)
    assert exact
    assert [type(m) for m in loaded] == [type(m) for m in net]


def test_structured_pruned_1d_model_round_trips_bit_exact(tmp_path: Path) -> None:
    net = nc.prune_(cnn1d(), nc.prune.StructuredConfig(ratio=0.5, input_shape=(1, 1, 40)))
    assert net[0].out_channels == 12
    loaded, exact = _round_trip(net, tmp_path)
    assert exact
    assert loaded[0].weight.shape == (12, 1, 5)


def test_sparse_1d_model_round_trips_bit_exact(tmp_path: Path) -> None:
    net = nc.prune_(cnn1d(), nc.prune.UnstructuredConfig(sparsity=0.5))
    zeros = [int((m.weight == 0).sum()) for m in net if isinstance(m, (nn.Conv1d, nn.Linear))]
    loaded, exact = _round_trip(net, tmp_path)
    assert exact
    assert [
        int((m.weight == 0).sum()) for m in loaded if isinstance(m, (nn.Conv1d, nn.Linear))
    ] == zeros
