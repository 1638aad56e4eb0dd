"""Snapshots of a model, and the one transaction guard every stage that changes a model runs in.

A stage can fail, or be interrupted (Ctrl-C), midway: after some layers were swapped, some
channels cut, some training steps taken. `restored_on_error` puts back everything a stage may
have changed, so the caller's model is exactly what it was: the module tree (swapped or added
submodules, replaced parameters and buffers, changed attributes such as `out_features` or a
head count), the tensors' values, gradients, masks, codecs and train/eval modes. One guard
for every kind of change, so no stage writes its own copy-back. `probed` is the same snapshot
undone on every exit, for what-if measurements (prune a layer, evaluate, put it back).

The copy of the tensor values is the guard's cost: in memory it doubles the model's footprint
while the stage runs. For large models (language models calibrated layer by layer) it can
be kept in a temporary file instead (`spill`, `core.spill.SpillFile`), written and read back
one tensor at a time; the module tree and attributes are still kept by reference.

`seeded` draws random numbers without touching the caller's generators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.spill import SpillFile, spillable, spills


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
    return _Snapshot(model, None).restore


class _Snapshot:
    """What `snapshot` takes; with a `SpillFile`, the tensor values go to it, not to memory."""

    def __init__(self, model: nn.Module, spill: SpillFile | None) -> None:
        self.spill = spill
        self.attributes: list[tuple[nn.Module, dict[str, Any]]] = []
        # id -> (tensor, its value in memory, or None when the value is in the spill file)
        self.values: dict[int, tuple[Tensor, Tensor | None]] = {}
        self.grads: dict[int, tuple[nn.Parameter, Tensor | None, bool, bool]] = {}
        for module in model.modules():
            kept = dict(vars(module))
            for table in _TREE_TABLES:
                kept[table] = dict(kept[table])
            self.attributes.append((module, kept))
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is not None and id(tensor) not in self.values:
                    self.values[id(tensor)] = (tensor, self._keep(("value", id(tensor)), tensor))
            for param in module._parameters.values():
                if param is not None and id(param) not in self.grads:
                    grad = param.grad
                    kept_grad = None if grad is None else self._keep(("grad", id(param)), grad)
                    self.grads[id(param)] = (
                        param,
                        kept_grad,
                        grad is not None,
                        param.requires_grad,
                    )

    def _keep(self, key: tuple[str, int], tensor: Tensor) -> Tensor | None:
        if self.spill is not None and spillable(tensor):
            self.spill.put(key, tensor)
            return None
        return tensor.detach().clone()

    def restore(self) -> None:
        for module, kept in self.attributes:
            current = vars(module)
            current.clear()
            current.update(kept)
        with torch.no_grad():
            for key, (tensor, value) in self.values.items():
                self._put_back(tensor, value, ("value", key))
        for key, (param, grad, had_grad, requires_grad) in self.grads.items():
            param.requires_grad_(requires_grad)  # last: values may have moved the parameters
            if had_grad and grad is None:  # spilled
                assert self.spill is not None
                grad = self.spill.read(("grad", key), param.device)
            fits = grad is None or (
                grad.shape == param.shape
                and grad.dtype == param.dtype
                and grad.device == param.device
            )
            param.grad = grad if fits else None

    def _put_back(self, tensor: Tensor, value: Tensor | None, key: tuple[str, int]) -> None:
        if value is None:
            assert self.spill is not None
            shape, dtype = self.spill.shape_of(key)
            if (tensor.shape, tensor.dtype) == (shape, dtype):
                self.spill.read_into(key, tensor)
            else:  # the block reassigned `.data` (a new shape or dtype)
                tensor.data = self.spill.read(key, tensor.device)
            return
        same = (tensor.shape, tensor.dtype, tensor.device)
        if same == (value.shape, value.dtype, value.device):
            tensor.copy_(value)
        else:  # the block reassigned `.data` (a new shape, dtype or device)
            tensor.data = value


@contextlib.contextmanager
def _guarded(model: nn.Module, spill: bool | None, always: bool) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        file = stack.enter_context(SpillFile()) if spills(model, spill) else None
        taken = _Snapshot(model, file)
        try:
            yield
        except BaseException:
            taken.restore()
            raise
        else:
            if always:
                taken.restore()


@contextlib.contextmanager
def restored_on_error(model: nn.Module, spill: bool | None = False) -> Iterator[None]:
    """Run a block that changes `model`; if it raises (an error or an interrupt), put back
    everything it changed: module tree, attributes, weights, gradients, masks and modes.

    `spill=True` keeps the copy of the tensor values in a temporary file (`core.spill`)
    instead of in memory, so the guard does not double the model's memory; `None` does so
    when the model's tensors take more than `core.spill.SPILL_ABOVE_BYTES`. The file is gone
    when the block ends, however it ends.

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
    with _guarded(model, spill, always=False):
        yield


@contextlib.contextmanager
def probed(model: nn.Module, spill: bool | None = False) -> Iterator[None]:
    """Run a block whose changes to `model` are always undone (a what-if measurement).

    `spill` as for `restored_on_error`.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> with probed(layer):
        ...     _ = layer.weight.data.zero_()
        >>> torch.equal(layer.weight, before)
        True
    """
    with _guarded(model, spill, always=True):
        yield


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
