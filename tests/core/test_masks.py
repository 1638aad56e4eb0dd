from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.masks import apply_masks_, clear_masks, masks_of, set_mask, sparsity
from netchisel.core.task import classification_task
from netchisel.core.train import TrainSettings, fit


def test_masked_weights_stay_zero_through_training() -> None:
    x = torch.randn(64, 4)
    task = classification_task({"train": TensorDataset(x, (x[:, 0] > 0).long())}, 16)
    net = nn.Linear(4, 2)
    keep = torch.tensor([[True, False, True, False], [False, True, True, True]])
    set_mask(net, "weight", keep)
    fit(net, task, TrainSettings(steps=10, lr=0.1), Context(task, quiet=True))
    assert torch.equal(net.weight != 0, keep)
    assert sparsity(net, ["weight"]) == 3 / 8


def test_frozen_entries_keep_their_values() -> None:
    net = nn.Linear(3, 1, bias=False)
    before = net.weight.detach().clone()
    set_mask(net, "weight", torch.tensor([[True, False, False]]), fill=before)
    with torch.no_grad():
        net.weight.add_(1.0)
    apply_masks_(net)
    assert torch.equal(net.weight[0, 1:], before[0, 1:])
    assert net.weight[0, 0] == before[0, 0] + 1


def test_clear_and_shape_check() -> None:
    net = nn.Linear(2, 2)
    set_mask(net, "bias", torch.tensor([True, False]))
    assert list(masks_of(net)) == ["bias"]
    clear_masks(net)
    assert masks_of(net) == {}
    try:
        set_mask(net, "weight", torch.ones(3, dtype=torch.bool))
    except ValueError as e:
        assert "has shape (3,), not (2, 2)" in str(e)
    else:
        raise AssertionError("a wrong-shaped mask was accepted")
