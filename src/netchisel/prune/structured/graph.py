"""Running and tracing the model: Torch-Pruning's dependency graph of coupled channels.

Why Torch-Pruning: removing one conv filter also removes the BatchNorm channel after it, the
input channel of every layer that reads it and, through residual adds, the channels of every
layer joined to it; after a flatten it removes a block of Linear inputs, and in attention the
q/k/v rows and the o_proj columns of a head. `tp.DependencyGraph` traces these couplings
through autograd and slices every coupled tensor consistently; rewriting it would be thousands
of lines of tracing rules. What this file adds: tracing that names the layer where it failed
and leaves no hooks behind, and the flags and modes tracing needs, put back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from netchisel.core.errors import ModelError, first_line
from netchisel.prune.structured.config import STAGE

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers whose output channels can be chosen for pruning."""


def run_eval(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """One forward in eval mode without grad (BatchNorm statistics untouched); modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(*inputs)
    finally:
        for module, mode in modes:
            module.training = mode


def output_shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_flatten(output)[0] if isinstance(t, Tensor)]


def dependency_graph(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """Torch-Pruning's dependency graph of `model`, or a ModelError naming where tracing failed.

    The layer named is the innermost one still running when the forward raised; Torch-Pruning's
    own hooks are removed if it fails (it leaves them on the model otherwise).
    """
    running: list[str] = []
    done: list[str] = []
    before = {m: set(m._forward_hooks) for m in model.modules()}
    handles = []
    for n, m in model.named_modules():
        if n:
            handles.append(m.register_forward_pre_hook(lambda *_, name=n: running.append(name)))
            handles.append(m.register_forward_hook(lambda *_, name=n: done.append(running.pop())))
    finished: list[bool] = []
    handles.append(model.register_forward_hook(lambda *_: finished.append(True)))
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=lambda m, x: m(*x), verbose=False
            )
    except Exception as e:
        for module, keys in before.items():  # Torch-Pruning's hooks, left behind by the raise
            for key in set(module._forward_hooks) - keys:
                del module._forward_hooks[key]
        if finished:
            where = "reading the autograd graph of its outputs"
            fix = "wrap the model so that it returns only tensors"
        else:
            if running:
                where = f"in layer {running[-1]}"
            elif done:
                where = f"in the model's own forward, after layer {done[-1]}"
            else:
                where = "before its first layer"
            fix = "check that the model runs on the example inputs"
        raise ModelError(
            f"{STAGE}: Torch-Pruning cannot trace the model (failed {where}: "
            f"{type(e).__name__}: {first_line(e)}); {fix}, or prune it with "
            "prune.unstructured, which needs no graph"
        ) from e
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad (tracing follows autograd); flags and modes restored."""
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, True))
        for n, m in model.named_modules():
            if n in modes:
                m.training = modes[n]
