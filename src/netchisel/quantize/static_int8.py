"""Static int8 (`quantize.static_int8`): int8 weights and int8 activations whose scales are
calibrated on the task's data, for the convolutions and Linear layers of CNNs and MLPs on x86.

torchao's PT2E flow does the calibration: the model is traced with torch.export, the
`X86InductorQuantizer` annotates it with its default config (int8 weights, symmetric, one scale
per output channel; uint8 activations, one scale and zero point per tensor from a histogram
observer; each BatchNorm folded into the convolution before it), `annotate_missed_layers` adds
the convolutions that recipe leaves out (most Conv1d), the calibration batches run through the
observers and `convert_pt2e` produces the int8 weights and the scales.

The converted graph is generated code with no safe file format, so its numbers are put back into
the model instead: each calibrated `nn.Conv2d` / `nn.Conv1d` / `nn.Linear` becomes a
`StaticInt8Conv2d` / `StaticInt8Conv1d` / `StaticInt8Linear` (`formats/static_int8.py`: how they
run, eager and compiled) holding the int8 weight, its scales and its input's scale and zero point,
and each folded BatchNorm becomes an `nn.Identity`. The model keeps its classes and its forward, so
it evaluates, profiles (per module) and saves like any other; the artifact holds the int8 weights,
and `netchisel.load` rebuilds the layers from their buffers and attributes.

Activations are quantized at the input of every int8 layer only; what PT2E also quantizes
between layers (a residual add's inputs, a pooled tensor) stays in float here, which is at least
as accurate as the PT2E graph.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, fx, nn

from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError, first_line
from netchisel.core.logs import TORCHAO_IMPORT_LOGGERS, quiet_loggers
from netchisel.core.masks import forget_masks
from netchisel.core.modules import replace_module, select_modules
from netchisel.core.registry import register
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
    full_int8_range,
)

# -- the stage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticInt8Config(StageConfig):
    """Calibrate int8 activations on `calibration_samples` samples of `calibration_split`.

    `layers` / `exclude` are regexes over Conv1d/Conv2d/Linear layer names (all by default); layers
    the quantizer leaves out (or that are called more than once) stay in float and are named in
    the report.

    Example:
        >>> StaticInt8Config.from_dict({"calibration_samples": 256}).calibration_split
        'train'
    """

    NAME: ClassVar[str] = "quantize.static_int8"

    calibration_samples: int = 512
    calibration_split: str = "train"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_calibration_samples(STAGE, self.calibration_samples)


STAGE = StaticInt8Config.NAME


@register(StaticInt8Config)
def quantize_static_int8(model: nn.Module, config: StaticInt8Config, ctx: Context) -> nn.Module:
    """Calibrate with PT2E on the task's data, then swap in the int8 layers (all or nothing)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        raise ConfigError(
            f"{STAGE}: the int8 kernels are x86 (oneDNN) only, not {platform.machine()}"
        )
    if any(t.device.type != "cpu" for t in model.parameters()):
        raise ConfigError(f"{STAGE}: static int8 runs on the CPU: move the model to 'cpu' first")
    task = ctx.require_task(STAGE)
    batches = task.calibration_batches(config.calibration_samples, config.calibration_split)
    inputs = [tuple(t.cpu() for t in task.inputs_of(b)) for b in batches]
    inputs = [i for i in inputs if i and len(i[0])]
    if not inputs:
        raise ConfigError(
            f"{STAGE}: the task's {config.calibration_split!r} split gave no calibration samples; "
            "set calibration_split to a split that has data"
        )
    chosen = select_modules(model, (nn.Conv1d, nn.Conv2d, nn.Linear), config.layers, config.exclude)
    with ctx.progress(f"{STAGE}: calibrating", len(inputs)) as advance:
        converted, facts = calibrate_pt2e(model, inputs, advance)
    plan = plan_swaps(model, converted, facts, set(chosen))
    if not plan.layers:
        raise ConfigError(
            f"{STAGE}: no Conv1d, Conv2d or Linear layer could be quantized "
            f"({'; '.join(plan.skipped[:4]) or 'the model has none'})"
        )
    for name, module in {**plan.layers, **plan.identities}.items():
        replace_module(model, name, module)
    forget_masks(model, set(plan.layers) | set(plan.identities))
    ctx.record(
        quantized_layers=len(plan.layers),
        folded_batchnorms=len(plan.identities),
        float_layers=plan.skipped,
        calibration_samples=sum(len(i[0]) for i in inputs),
        note=(
            "int8 kernels (oneDNN) run in eager and, fused, under torch.compile with inductor "
            "freezing (latency backend 'compile', ~2-4x more than eager); torch.compile "
            "without freezing runs the dequantized pattern in float (slower than eager)"
        ),
    )
    return model


def calibrate_pt2e(
    model: nn.Module, inputs: Sequence[tuple[Tensor, ...]], advance: Any = None
) -> tuple[fx.GraphModule, GraphFacts]:
    """PT2E on a copy of `model`: export, prepare, run `inputs`, convert.

    Returns the converted graph and the facts of the exported graph before quantization that
    `plan_swaps` needs. `model` is not touched.
    """
    prepare_pt2e, convert_pt2e, quantizer = _torchao_pt2e()
    work = copy.deepcopy(model).eval()
    _numeric_padding_(work)
    exported = _export(work, inputs[0])
    facts = graph_facts(exported)
    # A BatchNorm that does not read a conv output (e.g. after a ReLU) stays in the graph, and
    # then torchao's convert exports ~100 QAT conv-bn patterns (~17 s on 2 cores, per call).
    # The copy calibrates with those as the same per-channel affine map; `model` keeps them.
    standalone = [
        n
        for n, m in work.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.running_mean is not None
        and m.running_var is not None
        and n not in facts.bn_after.values()
    ]
    if standalone:
        for name in standalone:
            replace_module(work, name, _ChannelAffine(work.get_submodule(name)))
        exported = _export(work, inputs[0])
        # Node names may differ in the second export.
        facts = dataclasses.replace(facts, owners=weight_owners(exported))
    _split_repeated_calls(exported)
    try:
        prepared = prepare_pt2e(exported, quantizer)
    except ValueError as e:  # the x86 quantizer's check that a Conv2d runs as aten conv2d
        raise ModelError(
            f"{STAGE}: torchao's x86 quantizer rejected the model: {first_line(e)} (a Conv2d "
            "with padding='same' and an even kernel? give it a numeric padding)"
        ) from None
    with torch.no_grad():
        for batch in inputs:
            try:
                prepared(*batch)
            except Exception as e:
                raise ModelError(
                    f"{STAGE}: calibration failed on a batch of shape "
                    f"{list(batch[0].shape)}: {first_line(e)}"
                ) from None
            if advance is not None:
                advance(1)
    return convert_pt2e(prepared), facts


def _split_repeated_calls(gm: fx.GraphModule) -> None:
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


def _numeric_padding_(work: nn.Module) -> None:
    """Give each conv of the calibration copy with padding 'same' (odd kernel span) or 'valid'
    its numeric padding: export then calls aten conv1d/conv2d, which the quantizer annotates
    and the int8 layers run (a padding string makes it `conv2d.padding`)."""
    for m in work.modules():
        if not isinstance(m, nn.Conv1d | nn.Conv2d) or not isinstance(m.padding, str):
            continue
        spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        if m.padding == "valid":
            m.padding = (0,) * len(spans)
        elif all(s % 2 == 0 for s in spans):  # 'same' is symmetric (stride is 1 with 'same')
            m.padding = tuple(s // 2 for s in spans)


def _export(work: nn.Module, example: tuple[Tensor, ...]) -> fx.GraphModule:
    dynamic = tuple({0: torch.export.Dim.AUTO} if t.dim() else None for t in example)
    try:
        with torch.no_grad():
            return torch.export.export(work, example, dynamic_shapes=dynamic).module()
    except Exception as e:  # torch raises many types for untraceable code
        raise ModelError(f"{STAGE}: torch.export cannot trace the model: {first_line(e)}") from None


class _ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as `x * scale + shift` per channel (no batch_norm op)."""

    scale: Tensor
    shift: Tensor

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        assert bn.running_mean is not None and bn.running_var is not None
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


def _torchao_pt2e() -> tuple[Any, Any, Any]:
    try:
        with quiet_loggers(*TORCHAO_IMPORT_LOGGERS):
            x86 = importlib.import_module(
                "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"
            )
            pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
    except ImportError:
        raise ConfigError(f"{STAGE} needs torchao: pip install torchao") from None
    # Without VNNI the kernels' int16 sums saturate on 8-bit inputs (measured here on AVX2:
    # ~11% error on a conv whose input zero point is ~128): calibrate 7-bit inputs there.
    config = x86.get_default_x86_inductor_quantization_config(reduce_range=not full_int8_range())
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(config)
    annotate_x86 = quantizer.annotate

    def annotate(gm: fx.GraphModule) -> fx.GraphModule:
        annotate_x86(gm)
        annotate_missed_layers(gm, config, importlib.import_module(_QUANTIZER))
        return gm

    # An instance attribute, not a subclass: torchao is optional and imported only here.
    quantizer.annotate = annotate
    return pt2e.prepare_pt2e, pt2e.convert_pt2e, quantizer


_QUANTIZER = "torchao.quantization.pt2e.quantizer"


def annotate_missed_layers(gm: fx.GraphModule, config: Any, quantizer: Any) -> list[fx.Node]:
    """Annotate each conv1d/conv2d/linear the x86 quantizer left alone with its input and weight
    formats (`config`'s); returns those nodes. `quantizer` is torchao's quantizer module.

    The x86 recipe (torchao 0.18) is written for 2-D CNNs: it quantizes a conv2d alone or in a
    fused pattern, but a conv1d only when a ReLU follows it. A Conv1d followed by a BatchNorm
    (folded), an add, another conv (depthwise then pointwise) or nothing stays float there,
    though the oneDNN kernel runs it as a height-1 conv2d. Only the layer's inputs are annotated:
    each int8 layer here quantizes its own input, its output stays float.
    """
    added = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _WEIGHTED:
            continue
        annotation = node.meta.get("quantization_annotation")
        if annotation is not None and annotation._annotated:
            continue
        x, w = node.args[0], node.args[1]
        if not (_is_float(x) and _is_float(w)):
            continue
        assert isinstance(x, fx.Node) and isinstance(w, fx.Node)
        qspecs: dict[fx.Node, Any] = {
            x: quantizer.get_input_act_qspec(config),
            w: quantizer.get_weight_qspec(config),
        }
        bias = node.args[2] if len(node.args) > 2 else None
        if isinstance(bias, fx.Node):
            qspecs[bias] = quantizer.get_bias_qspec(config)
        node.meta["quantization_annotation"] = quantizer.QuantizationAnnotation(
            input_qspec_map=qspecs, _annotated=True
        )
        added.append(node)
    return added


def _is_float(node: Any) -> bool:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(value, Tensor) and value.dtype.is_floating_point


# -- from the converted graph back to modules -------------------------------------------------


@dataclass
class SwapPlan:
    """The int8 layers and the Identity for each folded BatchNorm, by module name."""

    layers: dict[str, nn.Module]
    identities: dict[str, nn.Module]
    skipped: list[str]


_WEIGHTED = {
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
        if node.target in _WEIGHTED or _is_batch_norm(node):
            facts.calls[name] = facts.calls.get(name, 0) + 1
        source = node.args[0] if node.args else None
        if _is_batch_norm(node) and isinstance(source, fx.Node) and source.target in _WEIGHTED:
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
        if node.op != "call_function" or node.target not in _WEIGHTED:
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
        if node.op != "call_function" or node.target not in _WEIGHTED or name not in chosen:
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
    if not isinstance(module, _WEIGHTED[node.target]):  # type: ignore[index]
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
        raise ModelError(f"{STAGE}: expected a constant in the calibrated graph, got {node}")
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj.detach().clone()  # type: ignore[no-any-return]


def _module_of(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") if isinstance(node, fx.Node) else None
    if not stack:
        return None
    return str(list(stack.values())[-1][0]).partition("@")[0]  # see _split_repeated_calls


def _is_batch_norm(node: fx.Node) -> bool:
    return node.op == "call_function" and "batch_norm" in str(node.target)


def _is_op(node: Any, name: str) -> bool:
    return isinstance(node, fx.Node) and str(node.target).startswith(f"quantized_decomposed.{name}")
