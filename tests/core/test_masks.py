from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.masks import Mask, apply_masks_, clear_masks, masks_of, set_mask, sparsity
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


@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (3, 5, 7), (2, 3, 3, 3)])
def test_keep_is_held_in_one_bit_per_entry_and_round_trips(shape: tuple[int, ...]) -> None:
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) > 0.4
    mask = Mask.of(keep)
    n = keep.numel()
    assert mask.packed.dtype == torch.uint8
    assert mask.packed.numel() * mask.packed.element_size() == -(-n // 8)  # ceil(n / 8) bytes
    assert mask.shape == shape
    assert mask.keep.dtype == torch.bool and torch.equal(mask.keep, keep)


def test_set_mask_stores_packed_bits_and_keeps_odd_shapes_exact() -> None:
    net = nn.Conv2d(3, 5, 3)  # 5 x 3 x 3 x 3 = 135 weights: 17 bytes, the last one partial
    keep = torch.rand(5, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(net, "weight", keep)
    mask = masks_of(net)["weight"]
    assert mask.packed.numel() == 17
    assert torch.equal(mask.keep, keep)
    assert torch.equal(net.weight != 0, keep)
    with torch.no_grad():
        net.weight.fill_(2.0)
    apply_masks_(net)
    assert torch.equal(net.weight, 2.0 * keep)


def test_frozen_entries_of_an_odd_shape_keep_their_values() -> None:
    net = nn.Linear(7, 3)
    before = net.weight.detach().clone()
    keep = torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.5
    set_mask(net, "weight", keep, fill=before)
    with torch.no_grad():
        net.weight.add_(1.0)
    apply_masks_(net)
    assert torch.equal(net.weight, torch.where(keep, before + 1.0, before))
