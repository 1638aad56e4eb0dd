"""Exact FLOP and MAC counts for one forward pass, per module, per op and per dtype.

`count_flops` runs the model once under a `TorchDispatchMode` and prices every aten op that
reaches the dispatcher with its formula from the table in `netchisel.measure.formulas`; this
module is only the engine (run, attribute each cost to the modules executing, add up). An op
that may compute but has no formula is reported in `FlopCount.uncounted_ops`, never silently
counted as 0.

Written by hand rather than taken from `torch.utils.flop_counter.FlopCounterMode` (or thop,
fvcore, ptflops) because those count only matmuls, convolutions and some GPU attention kernels:
they miss CPU attention (`_scaled_dot_product_flash_attention_for_cpu`), the fused transformer
fast paths (`_transformer_encoder_layer_fwd`, `_native_multi_head_attention`, which
`nn.TransformerEncoderLayer` and `nn.MultiheadAttention` run in eval under no_grad), and every
elementwise, normalisation, softmax, pooling and reduction op. The conventions (1 MAC = 2 FLOPs,
softmax = 5 FLOPs per element, ...) and the reason for each are in `docs/measurement.md`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> count = count_flops(nn.Linear(4, 2), torch.zeros(3, 4))
    >>> count.macs, count.flops  # 3*4*2 MACs; 2 FLOPs per MAC plus 3*2 bias adds
    (24, 54)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch._ops import OpOverload, OpOverloadPacket
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from netchisel.core.modules import prepare_kernels
from netchisel.measure.formulas import (
    FORMULAS,
    LIBRARY_FORMULAS,
    NESTED_AWARE,
    QUANTIZED_FORMULAS,
    ZERO_COST,
    Call,
    Cost,
    Formula,
    dtype_name,
)

__all__ = ["FlopCount", "count_flops"]


@dataclass(frozen=True)
class FlopCount:
    """FLOPs and MACs of one forward pass, in total and broken down.

    `flops_by_module` and `macs_by_module` are inclusive (a module counts its children) and keyed
    by qualified module name, "" being the whole model; every submodule appears, with 0 if it did
    no counted work. Dtypes are compute dtypes ("float32", "bfloat16", "int8", ...): for a
    matmul the dtype of its inputs.
    """

    flops: int
    macs: int
    flops_by_module: dict[str, int]
    macs_by_module: dict[str, int]
    flops_by_op: dict[str, int]
    flops_by_dtype: dict[str, int]
    macs_by_dtype: dict[str, int]
    uncounted_ops: tuple[str, ...]


# -- the formulas, by packet -------------------------------------------------------------------


def _packets(
    names: Sequence[str], namespace: Any = torch.ops.aten
) -> Iterator[tuple[str, OpOverloadPacket]]:
    # Each name also covers its in-place twin (add_ for add); out= variants are overloads of
    # the same packet. Names this torch build lacks are skipped.
    for name in names:
        for variant in (name, name + "_"):
            packet = getattr(namespace, variant, None)
            if isinstance(packet, OpOverloadPacket):
                yield name, packet


_FORMULA_BY_PACKET: dict[OpOverloadPacket, Formula] = {
    **{packet: FORMULAS[name] for name, packet in _packets(list(FORMULAS))},
    **{
        packet: QUANTIZED_FORMULAS[name]
        for name, packet in _packets(list(QUANTIZED_FORMULAS), torch.ops.quantized)
    },
}
_NESTED_AWARE: frozenset[OpOverloadPacket] = frozenset(
    packet for _, packet in _packets(NESTED_AWARE)
)
_ZERO_COST_PACKETS: frozenset[OpOverloadPacket] = frozenset(
    packet for _, packet in _packets(ZERO_COST)
)


# -- the counting mode ------------------------------------------------------------------------


def _compute_dtype(args: Any, out: Any) -> str:
    # The first floating input (a matmul's operands, not its int indices or bool masks);
    # failing that the first tensor input, then the output.
    tensors = [leaf for leaf in tree_leaves(args) if isinstance(leaf, Tensor)]
    for tensor in tensors:
        if tensor.is_floating_point():
            return dtype_name(tensor.dtype)
    if tensors:
        return dtype_name(tensors[0].dtype)
    outs = [leaf for leaf in tree_leaves(out) if isinstance(leaf, Tensor)]
    return dtype_name(outs[0].dtype) if outs else "unknown"


@dataclass
class _Tally:
    """Running totals, plus the stack of modules whose forward is executing."""

    owner_module: dict[int, str]
    stack: list[str] = field(default_factory=list)
    flops_by_module: dict[str, int] = field(default_factory=dict)
    macs_by_module: dict[str, int] = field(default_factory=dict)
    flops_by_op: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    flops_by_dtype: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    macs_by_dtype: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    uncounted: set[str] = field(default_factory=set)

    def modules_for(self, owner: Tensor | None) -> set[str]:
        names = {"", *self.stack}
        owner_name = self.owner_module.get(id(owner)) if owner is not None else None
        top = self.stack[-1] if self.stack else ""
        if owner_name is not None and (top == "" or owner_name.startswith(top + ".")):
            # Work of a fused op also goes to the submodule that does it unfused, and to that
            # submodule's parents below the running module.
            parts = owner_name.split(".")
            prefixes = (".".join(parts[: i + 1]) for i in range(len(parts)))
            names.update(p for p in prefixes if len(p) > len(top))
        return names

    def record(
        self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        packet = func.overloadpacket
        if packet in _ZERO_COST_PACKETS:
            return
        name = str(packet)
        formula = _FORMULA_BY_PACKET.get(packet) or LIBRARY_FORMULAS.get(name)
        leaves = tree_leaves((args, kwargs))
        if packet not in _NESTED_AWARE and any(
            isinstance(leaf, Tensor) and leaf.is_nested for leaf in leaves
        ):
            formula = None  # ragged shapes: only the fused transformer ops price them
        result = None
        if formula is not None:
            try:
                result = formula(Call(func, args, kwargs, out))
            except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError):
                result = None  # an argument form no formula anticipates: report, don't guess
        if result is None:
            self.uncounted.add(name)
            return
        dtype = _compute_dtype((args, kwargs), out)
        for cost in (result,) if isinstance(result, Cost) else result:
            if cost.flops:  # breakdowns list only what costs something
                self.flops_by_op[name] += cost.flops
                self.flops_by_dtype[cost.dtype or dtype] += cost.flops
            if cost.macs:
                self.macs_by_dtype[cost.dtype or dtype] += cost.macs
            for module in self.modules_for(cost.owner):
                self.flops_by_module[module] = self.flops_by_module.get(module, 0) + cost.flops
                self.macs_by_module[module] = self.macs_by_module.get(module, 0) + cost.macs


def _inclusive(model: nn.Module, counted: dict[str, int]) -> dict[str, int]:
    """Per-module totals; a container that is never called itself (a ModuleList, a ModuleDict)
    counts what its children did, as a called module does."""
    out: dict[str, int] = {}
    named = list(model.named_modules())
    for name, module in reversed(named):  # children come after their parent
        if name in counted:
            out[name] = counted[name]
        else:
            prefix = f"{name}." if name else ""
            out[name] = sum(out.get(prefix + child, 0) for child, _ in module.named_children())
    return {name: out[name] for name, _ in named}


class _CountingMode(TorchDispatchMode):
    def __init__(self, tally: _Tally) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.tally = tally

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tally.record(func, args, kwargs, out)
        return out


@contextmanager
def _module_stack(model: nn.Module, tally: _Tally) -> Iterator[None]:
    # Keeps tally.stack equal to the model's forwards currently executing. The hooks are
    # global, filtered to the model's modules: hooks on the modules themselves would switch off
    # nn.TransformerEncoderLayer's fused fast path and so change what is measured.
    names = {id(module): name for name, module in model.named_modules()}

    def push(module: nn.Module, _args: Any) -> None:
        if id(module) in names:
            tally.stack.append(names[id(module)])

    def pop(module: nn.Module, _args: Any, _out: Any) -> None:
        if id(module) in names:
            tally.stack.pop()

    handles = [
        nn.modules.module.register_module_forward_pre_hook(push),
        nn.modules.module.register_module_forward_hook(pop, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Restore each module's own flag: a model may mix train and eval submodules on purpose.
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def count_flops(model: nn.Module, example_inputs: Any) -> FlopCount:
    """Count the exact FLOPs and MACs of one forward pass of `model` on `example_inputs`.

    The model runs once, in eval mode under `torch.no_grad()` (so fused inference fast paths
    run, as they would in deployment); each module's training flag is restored afterwards.
    Every aten op is priced by the conventions in `docs/measurement.md`; ops that may compute
    but have no formula are listed in `uncounted_ops`. Modules with a `prepare_kernels()`
    method (quantized layers that repack their weights on first use) are prepared first, so
    the count is that of every later forward.

    Args:
        model: Any `nn.Module`.
        example_inputs: A tensor, a tuple of positional arguments, or a mapping of keyword
            arguments for `model`'s forward.

    Returns:
        The totals and their breakdowns by module (inclusive), op and compute dtype.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> count = count_flops(model, torch.zeros(2, 8))
        >>> count.macs, count.flops, count.flops_by_module["0"]
        (384, 840, 544)
    """
    if isinstance(example_inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = dict(example_inputs)
    else:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        kwargs = {}
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is not None:
                owners.setdefault(id(param), name)
    tally = _Tally(owner_module=owners)
    # One-time work (a quantized layer packing its weight for its kernel) is not per-forward.
    prepare_kernels(model)
    with _eval_mode(model), torch.no_grad(), _module_stack(model, tally), _CountingMode(tally):
        model(*args, **kwargs)
    by_module = _inclusive(model, tally.flops_by_module)
    macs_by_module = _inclusive(model, tally.macs_by_module)
    return FlopCount(
        flops=tally.flops_by_module.get("", 0),
        macs=tally.macs_by_module.get("", 0),
        flops_by_module=by_module,
        macs_by_module=macs_by_module,
        flops_by_op=dict(tally.flops_by_op),
        flops_by_dtype=dict(tally.flops_by_dtype),
        macs_by_dtype=dict(tally.macs_by_dtype),
        uncounted_ops=tuple(sorted(tally.uncounted)),
    )
