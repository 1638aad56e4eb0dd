"""The transaction guard: whatever a block changed, an error or an interrupt puts it back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.core.masks import masks_of, set_mask
from netchisel.core.state import probed, restored_on_error, seeded


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _values(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(net: nn.Module, values: dict[str, torch.Tensor]) -> bool:
    state = net.state_dict()
    return state.keys() == values.keys() and all(
        torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in values.items()
    )


def test_weights_grads_masks_and_modes_come_back_after_an_interrupt() -> None:
    net = _net()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    set_mask(net, "2.weight", torch.ones(2, 3, dtype=torch.bool))
    values, masks = _values(net), dict(masks_of(net))
    with pytest.raises(KeyboardInterrupt), restored_on_error(net):
        with torch.no_grad():
            net[0].weight.mul_(3)
        net[0].weight.grad = None
        set_mask(net, "0.weight", torch.zeros(3, 4, dtype=torch.bool))
        net.eval()
        raise KeyboardInterrupt
    assert _same(net, values) and masks_of(net) == masks
    assert torch.equal(net[0].weight.grad, torch.ones(3, 4))  # type: ignore[arg-type]
    assert net.training and net[0].training


def test_swapped_modules_replaced_parameters_and_attributes_come_back() -> None:
    net = _net()
    first, weight, values = net[0], net[0].weight, _values(net)
    with pytest.raises(RuntimeError), restored_on_error(net):
        net[2] = nn.Identity()  # a swap
        first.weight = nn.Parameter(torch.zeros(2, 4))  # surgery: a narrower layer
        first.out_features = 2
        first.extra = "added"
        first.weight.requires_grad_(False)
        raise RuntimeError("midway")
    assert net[0] is first and first.weight is weight and isinstance(net[2], nn.Linear)
    assert first.out_features == 3 and not hasattr(first, "extra")
    assert first.weight.requires_grad and _same(net, values)


def test_a_new_dtype_is_undone_and_the_old_grad_fits_again() -> None:
    net = _net()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    values = _values(net)
    with pytest.raises(KeyboardInterrupt), restored_on_error(net):
        net.double()
        raise KeyboardInterrupt
    assert _same(net, values) and net[0].weight.dtype == torch.float32
    assert net[0].weight.grad is not None and net[0].weight.grad.dtype == torch.float32


def test_a_block_that_succeeds_keeps_its_changes() -> None:
    net = _net()
    with restored_on_error(net):
        net[2] = nn.Identity()
    assert isinstance(net[2], nn.Identity)


def test_a_probe_is_undone_on_every_exit() -> None:
    net = _net()
    values = _values(net)
    with probed(net[0]):
        with torch.no_grad():
            net[0].weight.zero_()
        assert float(net[0].weight.detach().abs().sum()) == 0.0
    assert _same(net, values)


def test_seeded_draws_repeat_and_leave_the_caller_generator() -> None:
    state = torch.get_rng_state()
    with seeded(3):
        a = torch.rand(3)
    with seeded(3):
        b = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
