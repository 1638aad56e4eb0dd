"""Snapshots of a model's state, the guard every stage runs in (a failure, an error or an
interrupt, midway through a stage leaves the model as it was: weights, gradients, masks and
mode), and `seeded`, which draws random numbers without touching the caller's generators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from netchisel.core.masks import clear_masks, masks_of, set_mask


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict (rewind points, snapshots)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def restored_on_error(model: nn.Module) -> Iterator[None]:
    """Run a block that changes `model`; if it raises, put weights, gradients, masks and mode back.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> before = net.weight.detach().clone()
        >>> try:
        ...     with restored_on_error(net):
        ...         _ = net.weight.data.zero_()
        ...         raise RuntimeError("midway")
        ... except RuntimeError:
        ...     pass
        >>> torch.equal(net.weight, before)
        True
    """
    state = clone_state(model)
    masks = dict(masks_of(model))
    was_training = model.training
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            model.load_state_dict(state)
        clear_masks(model)
        for name, mask in masks.items():
            set_mask(model, name, mask.keep, mask.fill)
        model.train(was_training)
        for name, param in model.named_parameters():  # last: a block may have moved them
            grad = grads.get(name)
            fits = grad is None or (
                grad.shape == param.shape
                and grad.dtype == param.dtype
                and grad.device == param.device
            )
            param.grad = grad if fits else None
        raise


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under `torch.manual_seed(seed)`; every device's generator is then put back.

    Example:
        >>> state = torch.get_rng_state()
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b), torch.equal(torch.get_rng_state(), state)
        (True, True)
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
