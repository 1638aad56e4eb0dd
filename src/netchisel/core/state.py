"""Snapshots of a model, and the one transaction guard every stage that changes a model runs in.

A stage can fail, or be interrupted (Ctrl-C), midway: after some layers were swapped, some
channels cut, some training steps taken. `restored_on_error` puts back everything a stage may
have changed, so the caller's model is exactly what it was: the module tree (swapped or added
submodules, replaced parameters and buffers, changed attributes such as `out_features` or a
head count), the tensors' values, gradients, masks, codecs and train/eval modes. One guard
for every kind of change, so no stage writes its own copy-back. `probed` is the same snapshot
undone on every exit, for what-if measurements (prune a layer, evaluate, put it back).

`seeded` draws random numbers without touching the caller's generators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict (rewind points, snapshots)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


_TREE_TABLES = ("_parameters", "_buffers", "_modules")


def snapshot(model: nn.Module) -> Callable[[], None]:
    """Take everything a stage may change on `model` now; the function returned puts it back.

    Each module's attributes (its `__dict__`, with the parameter, buffer and child tables
    copied one level down) are kept by reference, so swapped-out modules and replaced
    parameters come back as the very same objects; tensor values, gradients and
    `requires_grad` are copied, so changes made in place are undone too. Masks and codecs are
    model attributes that are replaced, never mutated, so keeping the attribute keeps them.
    Restore once.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> restore, old = snapshot(net), net[0]
        >>> net[0] = nn.Linear(2, 3)
        >>> restore()
        >>> net[0] is old
        True
    """
    attributes: list[tuple[nn.Module, dict[str, Any]]] = []
    values: dict[int, tuple[Tensor, Tensor]] = {}
    grads: dict[int, tuple[nn.Parameter, Tensor | None, bool]] = {}
    for module in model.modules():
        kept = dict(vars(module))
        for table in _TREE_TABLES:
            kept[table] = dict(kept[table])
        attributes.append((module, kept))
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None and id(tensor) not in values:
                values[id(tensor)] = (tensor, tensor.detach().clone())
        for param in module._parameters.values():
            if param is not None:
                grad = None if param.grad is None else param.grad.clone()
                grads[id(param)] = (param, grad, param.requires_grad)

    def restore() -> None:
        for module, kept in attributes:
            current = vars(module)
            current.clear()
            current.update(kept)
        with torch.no_grad():
            for tensor, value in values.values():
                same = (tensor.shape, tensor.dtype, tensor.device)
                if same == (value.shape, value.dtype, value.device):
                    tensor.copy_(value)
                else:  # the block reassigned `.data` (a new shape, dtype or device)
                    tensor.data = value
        for param, grad, requires_grad in grads.values():  # last: values may have moved them
            param.requires_grad_(requires_grad)
            fits = grad is None or (
                grad.shape == param.shape
                and grad.dtype == param.dtype
                and grad.device == param.device
            )
            param.grad = grad if fits else None

    return restore


@contextlib.contextmanager
def restored_on_error(model: nn.Module) -> Iterator[None]:
    """Run a block that changes `model`; if it raises (an error or an interrupt), put back
    everything it changed: module tree, attributes, weights, gradients, masks and modes.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> before, layer = net[0].weight.detach().clone(), net[0]
        >>> try:
        ...     with restored_on_error(net):
        ...         _ = layer.weight.data.zero_()
        ...         net[0] = nn.Identity()
        ...         raise RuntimeError("midway")
        ... except RuntimeError:
        ...     pass
        >>> net[0] is layer, torch.equal(layer.weight, before)
        (True, True)
    """
    restore = snapshot(model)
    try:
        yield
    except BaseException:
        restore()
        raise


@contextlib.contextmanager
def probed(model: nn.Module) -> Iterator[None]:
    """Run a block whose changes to `model` are always undone (a what-if measurement).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> with probed(layer):
        ...     _ = layer.weight.data.zero_()
        >>> torch.equal(layer.weight, before)
        True
    """
    restore = snapshot(model)
    try:
        yield
    finally:
        restore()


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
