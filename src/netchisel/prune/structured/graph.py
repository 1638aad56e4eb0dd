"""Running and tracing the model: Torch-Pruning's dependency graph of coupled channels.

Why Torch-Pruning: removing one conv filter also removes the BatchNorm channel after it, the
input channel of every layer that reads it and, through residual adds, the channels of every
layer joined to it; after a flatten it removes a block of Linear inputs, and in attention the
q/k/v rows and the o_proj columns of a head. `tp.DependencyGraph` traces these couplings
through autograd and slices every coupled tensor consistently; rewriting it would be thousands
of lines of tracing rules. What this file adds: tracing that names the layer where it failed
and leaves no hooks behind, the flags and modes tracing needs (Hugging Face's `use_cache`
among them), put back afterwards, and the model's outputs, so that a group whose channels are
an output's width is never taken for a prunable one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from netchisel.core.conv1d import conv1d_types, is_conv1d
from netchisel.core.errors import ModelError, first_line
from netchisel.prune.structured.config import STAGE

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers whose output channels can be chosen for pruning."""


def run_eval(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """One forward in eval mode without grad (BatchNorm statistics untouched); modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), no_kv_cache(model):
            return model(*inputs)
    finally:
        for module, mode in modes:
            module.training = mode


def output_shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_flatten(output)[0] if isinstance(t, Tensor)]


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models run with `use_cache=False` (restored afterwards).

    A causal LM otherwise returns its key/value cache, an object Torch-Pruning cannot trace
    and whose shapes change with the heads; pruning needs the logits only.

    Example:
        >>> class Config:
        ...     use_cache = True
        >>> net = nn.Linear(2, 2)
        >>> net.config = Config()
        >>> with no_kv_cache(net):
        ...     net.config.use_cache
        False
        >>> net.config.use_cache
        True
    """
    configs: dict[int, Any] = {
        id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "use_cache")
    }
    saved = {key: c.use_cache for key, c in configs.items()}
    for c in configs.values():
        c.use_cache = False
    try:
        yield
    finally:
        for key, c in configs.items():
            c.use_cache = saved[key]


def _guarded_reshape_mapping(graph: Any, node: Any) -> None:
    """Torch-Pruning's reshape index mapping, left out where its channel inference gives 0
    (a channel shuffle: ShuffleNetV2), instead of a ZeroDivisionError that ends tracing; the
    groups through that reshape then fail the forward check and are left alone."""
    try:
        _REAL_RESHAPE_MAPPING(graph, node)
    except ZeroDivisionError:
        return


_REAL_RESHAPE_MAPPING = tp.dependency.index_mapping.update_reshape_index_mapping


@contextlib.contextmanager
def guarded_mapping() -> Iterator[None]:
    """Torch-Pruning with `_guarded_reshape_mapping` while the graph is built and used (it
    updates its index mappings again for every group); its own function put back after."""
    mapping = tp.dependency.index_mapping
    before = mapping.update_reshape_index_mapping  # nested uses put back what they found
    mapping.update_reshape_index_mapping = _guarded_reshape_mapping
    try:
        yield
    finally:
        mapping.update_reshape_index_mapping = before


MAX_GROUP_INDICES = 2_000_000
MAX_INDEX_GROWTH = 256  # a flatten multiplies indices by the spatial size: 49 in VGG


class GroupTooLarge(Exception):
    """Raised inside Torch-Pruning when one group collects more couplings than `bounded_groups`
    allows."""


@contextlib.contextmanager
def bounded_groups(limit: int) -> Iterator[None]:
    """Torch-Pruning's groups stop with `GroupTooLarge` past `limit` couplings.

    Building a group follows couplings until their index sets repeat; through some graphs
    (rotary embeddings with grouped-query attention, Swin's shifted windows) the sets never
    repeat and the group grows for minutes. A real group holds a few couplings per node of the
    graph, so a bound of a few times the node count ends only those; so does a bound on the
    indices it carries (a flatten multiplies them by the spatial size: 25,088 for VGG's).
    """
    cls = tp.dependency.group.Group
    add = cls.add_dep

    def bounded(self: Any, dep: Any, idxs: Any) -> None:
        if len(self._group) >= limit:
            raise GroupTooLarge(f"more than {limit} couplings")
        width = self._group[0].idxs if self._group else idxs
        if len(idxs) > MAX_INDEX_GROWTH * max(len(width), 1):
            raise GroupTooLarge(
                f"one coupling carries {len(idxs)} indices for {len(width)} channels"
            )
        total = getattr(self, "_netchisel_indices", 0) + len(idxs)
        if total > MAX_GROUP_INDICES:
            raise GroupTooLarge(f"more than {MAX_GROUP_INDICES} channel indices")
        self._netchisel_indices = total
        add(self, dep, idxs)

    cls.add_dep = bounded
    try:
        yield
    finally:
        cls.add_dep = add


def is_layer(module: nn.Module) -> bool:
    """Whether `module`'s output channels can be chosen for pruning (Conv, Linear, Conv1D)."""
    return isinstance(module, LAYER_TYPES) or is_conv1d(module)


class Conv1DPruner(tp.pruner.BasePruningFunc):  # type: ignore[misc]
    """Torch-Pruning's handler for Hugging Face's `Conv1D`: LinearPruner with the weight's
    dimensions swapped and `nf` as the output width."""

    def prune_out_channels(self, layer: Any, idxs: list[int]) -> Any:
        keep = sorted(set(range(layer.nf)) - set(idxs))
        layer.nf = len(keep)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        return layer

    def prune_in_channels(self, layer: Any, idxs: list[int]) -> Any:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        return layer

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.nf)

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.weight.shape[0])


def layer_types(model: nn.Module) -> list[type[nn.Module]]:
    """The root layer types of `model`'s channel groups (its Conv1D class among them)."""
    return [*LAYER_TYPES, *conv1d_types(model)]


def dependency_graph(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """Torch-Pruning's dependency graph of `model`, or a ModelError naming where tracing failed.

    The layer named is the innermost one still running when the forward raised; Torch-Pruning's
    own hooks are removed if it fails (it leaves them on the model otherwise). The graph's
    `netchisel_outputs` holds the autograd nodes that produced the model's outputs.
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
    outputs: list[Any] = []

    def forward(m: nn.Module, x: tuple[Tensor, ...]) -> Any:
        outputs.append(m(*x))
        return outputs[-1]

    pruners = {t: Conv1DPruner() for t in layer_types(model)[len(LAYER_TYPES) :]}
    try:
        with torch.enable_grad(), no_kv_cache(model), guarded_mapping():
            dg = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=inputs,
                forward_fn=forward,
                verbose=False,
                customized_pruners=pruners,
            )
        dg.netchisel_outputs = {
            t.grad_fn for t in tree_flatten(outputs)[0] if isinstance(t, Tensor)
        } - {None}
        return dg
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
