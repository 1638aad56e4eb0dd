"""From PT2E's converted graph back to modules, for `quantize.static_int8`: which layer each
int8 conv/linear call belongs to, whether it can be swapped (and why not), and the int8 layer
built from the call's int8 weight and scales.

Layers are named from each node's `nn_module_stack` (the innermost module), or, for a call
that reads another module's `.weight` (Swin's attention calls `F.linear(x, self.qkv.weight)`),
from that weight (`weight_owners`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from netchisel.core.errors import ModelError
from netchisel.quantize.formats.static_int8 import (
    ACT_DTYPE,
    ACT_MAX,
    ACT_MAX_REDUCED,
    ACT_MIN,
    W_DTYPE,
    W_MAX,
    W_MIN,
    StaticInt8Conv1d,
    StaticInt8Conv2d,
    StaticInt8Linear,
    StaticInt8Weight,
)

_STAGE = "quantize.static_int8"  # the stage's NAME, for messages


def split_repeated_calls(gm: fx.GraphModule) -> None:
    """Name each call of a module called more than once apart, as `name@k` (`_module_of` strips
    the suffix again).

    torchao's x86 quantizer finds its fused patterns (conv-add-relu ...) in partitions by
    innermost module name, and raises "Input partition has more than one output node" when
    one module makes two: torchvision's ResNet blocks call one `nn.ReLU` twice (three times in
    a Bottleneck). torch.export already numbers the calls in `nn_module_stack`'s keys
    (`...relu@1`); this copies that number into the name the partitions read.
    """
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (name, cls) = list(stack.items())[-1]
        _, at, call = str(key).rpartition("@")
        if at and call.isdigit():
            # A fresh dict: nodes may share one, and each must be renamed once.
            node.meta["nn_module_stack"] = {**stack, key: (f"{name}@{call}", cls)}


@dataclass
class SwapPlan:
    """The int8 layers and the Identity for each folded BatchNorm, by module name."""

    layers: dict[str, nn.Module]
    identities: dict[str, nn.Module]
    skipped: list[str]


WEIGHTED = {
    torch.ops.aten.conv1d.default: nn.Conv1d,
    torch.ops.aten.conv2d.default: nn.Conv2d,
    torch.ops.aten.linear.default: nn.Linear,
}


@dataclass(frozen=True)
class GraphFacts:
    """Of the exported float graph: how often each layer is called, which BatchNorm reads
    each Conv2d/Linear output (PT2E folds that BatchNorm into the layer's weights), and the
    layer of each conv/linear call that reads another module's weight (`weight_owners`)."""

    calls: dict[str, int]
    bn_after: dict[str, str]
    owners: dict[str, str] = field(default_factory=dict)

    def layer_of(self, node: fx.Node) -> str | None:
        """The layer whose weight a conv/linear node computes with (its module otherwise)."""
        return self.owners.get(node.name) or _module_of(node)


def graph_facts(exported: fx.GraphModule) -> GraphFacts:
    facts = GraphFacts({}, {}, weight_owners(exported))
    for node in exported.graph.nodes:
        name = facts.layer_of(node)
        if name is None or node.op != "call_function":
            continue
        if node.target in WEIGHTED or _is_batch_norm(node):
            facts.calls[name] = facts.calls.get(name, 0) + 1
        source = node.args[0] if node.args else None
        if _is_batch_norm(node) and isinstance(source, fx.Node) and source.target in WEIGHTED:
            layer = facts.layer_of(source)
            if layer is not None:
                facts.bn_after[layer] = name
    return facts


def weight_owners(exported: fx.GraphModule) -> dict[str, str]:
    """Node name -> layer, for each conv/linear call that reads a layer's `.weight` outside
    that layer's forward: torchvision's Swin calls `F.linear(x, self.qkv.weight, ...)` from the
    attention module, so the call's module is the attention and the layer is `qkv`. Such a
    layer is still quantized: its int8 replacement's `weight` routes `F.linear` to its kernel
    (`formats/weight_view.py`)."""
    owners = {}
    for node in exported.graph.nodes:
        if node.op != "call_function" or node.target not in WEIGHTED:
            continue
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            owner, dot, attr = str(weight.target).rpartition(".")
            if dot and attr == "weight" and owner != _module_of(node):
                owners[node.name] = owner
    return owners


def plan_swaps(
    model: nn.Module, converted: fx.GraphModule, facts: GraphFacts, chosen: set[str]
) -> SwapPlan:
    """Read the int8 weights and scales of each chosen layer from PT2E's converted graph."""
    remaining = {_module_of(node) for node in converted.graph.nodes}
    plan = SwapPlan({}, {}, [])
    for node in converted.graph.nodes:
        name = facts.layer_of(node)
        if node.op != "call_function" or node.target not in WEIGHTED or name not in chosen:
            continue
        bn = facts.bn_after.get(name)
        folded = bn is not None and bn not in remaining
        shared_bn = folded and facts.calls.get(bn or "", 0) != 1
        why = _unsupported(model, node, name, facts.calls, shared_bn)
        if why:
            plan.skipped.append(f"{name}: {why}")
            continue
        plan.layers[name] = _int8_layer(converted, node)
        if folded and bn is not None:
            plan.identities[bn] = nn.Identity()
    missing = sorted(chosen - set(plan.layers) - {s.split(":")[0] for s in plan.skipped})
    ops = _ops_by_module(converted)
    plan.skipped += [f"{n}: {_not_in_graph(ops.get(n, set()))}" for n in missing]
    return plan


def _ops_by_module(gm: fx.GraphModule) -> dict[str, set[str]]:
    ops: dict[str, set[str]] = {}
    for node in gm.graph.nodes:
        name = _module_of(node)
        if name is not None and node.op == "call_function":
            ops.setdefault(name, set()).add(str(node.target))
    return ops


def _not_in_graph(ops: set[str]) -> str:
    """Why a layer with no conv1d/conv2d/linear call in the calibrated graph stays float."""
    if not ops:
        return (
            "its output is never used, so torch.export drops it as dead code and it gets no "
            "calibrated input (remove the layer or use its output)"
        )
    hint = (
        " (padding='same' with an even kernel: give a numeric padding)"
        if any(o.endswith(".padding") for o in ops)
        else ""
    )
    return (
        f"runs as {', '.join(sorted(ops))}; the int8 layers replace aten conv1d, conv2d and "
        f"linear calls only{hint}"
    )


def _unsupported(
    model: nn.Module, node: fx.Node, name: str, calls: dict[str, int], shared_bn: bool
) -> str | None:
    module = model.get_submodule(name)
    if not isinstance(module, WEIGHTED[node.target]):  # type: ignore[index]
        return f"a {type(module).__name__} calls {node.target}"
    if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention never calls it: it passes out_proj.weight to its fused "
            "function, where an int8 layer would run in float (exclude it to silence this)"
        )
    mode = getattr(module, "padding_mode", "zeros")
    if mode != "zeros":
        return (
            f"padding_mode {mode!r}: the int8 conv pads with zeros only (pad with F.pad before "
            "a padding=0 conv to quantize it)"
        )
    if calls.get(name, 0) != 1:
        return "called more than once (its inputs would need several scales)"
    if shared_bn:
        return "its BatchNorm is called more than once and cannot be folded away"
    x, w = node.args[0], node.args[1]
    if not (_is_op(x, "dequantize_per_tensor") and _is_op(w, "dequantize_per_channel")):
        return "the calibrated graph left its input or weight in float (not a float tensor?)"
    assert isinstance(x, fx.Node) and isinstance(w, fx.Node)
    ranges = {(ACT_MIN, top, ACT_DTYPE) for top in (ACT_MAX, ACT_MAX_REDUCED)}
    if tuple(x.args[3:6]) not in ranges or not isinstance(x.args[1], float):
        return f"activation format {x.args[3:6]} is not uint8 0-255 (or 0-127) per tensor"
    if tuple(w.args[3:7]) != (0, W_MIN, W_MAX, W_DTYPE):
        return f"weight format {w.args[3:7]} is not int8 per output channel"
    weight = module.weight
    assert isinstance(weight, Tensor)
    if tuple(_fetch(node.graph.owning_module, w.args[0]).shape) != tuple(weight.shape):
        return "the calibrated weight's shape differs from the layer's"
    return None


def _int8_layer(gm: Any, node: fx.Node) -> nn.Module:
    x, w = node.args[0], node.args[1]
    assert isinstance(x, fx.Node) and isinstance(w, fx.Node)
    q, scale = _fetch(gm, w.args[0]), _fetch(gm, w.args[1])
    bias_node = node.args[2] if len(node.args) > 2 else None
    bias = _fetch(gm, bias_node) if bias_node is not None else None
    x_scale, x_zero = float(x.args[1]), int(x.args[2])  # type: ignore[arg-type]
    layer: StaticInt8Weight
    if node.target == torch.ops.aten.conv2d.default:
        defaults: tuple[Any, ...] = ([1, 1], [0, 0], [1, 1], 1)
        given: tuple[Any, ...] = tuple(node.args[3:])
        stride, padding, dilation, groups = (*given, *defaults[len(given) :])
        layer = StaticInt8Conv2d(
            q,
            bias,
            x_scale,
            x_zero,
            stride,
            padding,
            dilation,
            groups,
        )
    elif node.target == torch.ops.aten.conv1d.default:
        defaults_1d: tuple[Any, ...] = ([1], [0], [1], 1)
        given_1d: tuple[Any, ...] = tuple(node.args[3:])
        stride, padding, dilation, groups = (*given_1d, *defaults_1d[len(given_1d) :])
        layer = StaticInt8Conv1d.from_conv1d_args(
            q, bias, x_scale, x_zero, stride, padding, dilation, groups
        )
        q = q.unsqueeze(2)
    else:
        layer = StaticInt8Linear(q, bias, x_scale, x_zero)
    layer.set_input_quant_max(int(x.args[4]))  # type: ignore[arg-type]
    layer.load_int8(q, scale)
    return layer


def _fetch(gm: Any, node: Any) -> Tensor:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise ModelError(f"{_STAGE}: expected a constant in the calibrated graph, got {node}")
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj.detach().clone()  # type: ignore[no-any-return]


def _module_of(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") if isinstance(node, fx.Node) else None
    if not stack:
        return None
    return str(list(stack.values())[-1][0]).partition("@")[0]  # see split_repeated_calls


def _is_batch_norm(node: fx.Node) -> bool:
    return node.op == "call_function" and "batch_norm" in str(node.target)


def _is_op(node: Any, name: str) -> bool:
    return isinstance(node, fx.Node) and str(node.target).startswith(f"quantized_decomposed.{name}")
