"""Peak memory of one forward pass, counted from the tensors the ops allocate.

Hand-written because CPU has no allocator statistics in torch (torch.cuda.max_memory_allocated
is CUDA only). Every op output whose storage is new is counted until the tensor is freed; the
peak of that running total, plus the weights and the inputs, is the forward's peak.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from netchisel.measure.size import memory_bytes


class _AllocationTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0
        self.total_allocated = 0
        self._alive: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Opaque layouts (a oneDNN-packed weight) have no storage to look at.
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, Tensor) and t.layout == torch.strided
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self._alive or key == 0:
                continue  # a view, an in-place result, or an empty tensor
            nbytes = storage.nbytes()
            self._alive[key] = nbytes
            self.live += nbytes
            self.total_allocated += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._alive.pop(key, 0)


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call `model` with a tensor, a tuple of positional inputs, or a dict of keyword inputs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def peak_forward_bytes(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """(peak bytes, bytes of all activations allocated) of one no-grad forward in eval mode.

    The peak counts weights, buffers and inputs plus the largest total of intermediate
    tensors alive at once.

    Example:
        >>> net = nn.Linear(1000, 1000, bias=False)
        >>> peak_forward_bytes(net, torch.zeros(10, 1000))[1]
        40000
    """
    was_training = model.training
    model.eval()
    fixed = sum(memory_bytes(model).values()) + sum(
        t.untyped_storage().nbytes()
        for t in tree_flatten(example_inputs)[0]
        if isinstance(t, Tensor)
    )
    tracker = _AllocationTracker()
    try:
        with torch.no_grad(), tracker:
            out = run_model(model, example_inputs)
        del out
    finally:
        model.train(was_training)
    return fixed + tracker.peak, tracker.total_allocated
