"""What a layer reads: batch-by-batch statistics equal the one-shot ones; empty tasks refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.calib import LayerInputs, calibration_inputs, collect_inputs
from netchisel.core.errors import ConfigError
from netchisel.core.task import classification_task


def test_batches_add_up_to_the_statistics_of_all_rows() -> None:
    x = torch.randn(3, 5, 6)  # (batch, tokens, features): one row per token
    net = nn.Sequential(nn.Linear(6, 2))
    stats = collect_inputs(net, {"0": net[0]}, [(x[:1],), (x[1:],)], with_gram=True)["0"]
    rows = x.reshape(-1, 6)
    assert stats.tokens == 15 and stats.gram is not None
    assert torch.allclose(stats.gram, rows.T @ rows, atol=1e-5)
    assert torch.allclose(stats.abs_mean, rows.abs().mean(0))
    assert torch.equal(stats.abs_max, rows.abs().amax(0))


def test_finite_checks_the_gram_too() -> None:
    seen = LayerInputs.empty(1)
    seen.add(torch.tensor([[3e38]]), with_gram=True)  # finite, but its square is not
    assert not seen.finite()
    assert LayerInputs.empty(1).finite()


def test_an_empty_train_split_is_one_config_error() -> None:
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0))
    task = classification_task({"train": empty})
    with pytest.raises(ConfigError, match="demo: task 'classification' gave no calibration"):
        calibration_inputs(task, 8, torch.device("cpu"), "demo")
