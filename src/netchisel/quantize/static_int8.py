"""Static int8 (`quantize.static_int8`): int8 weights and int8 activations whose scales are
calibrated on the task's data, for the convolutions and Linear layers of CNNs and MLPs on x86.

torchao's PT2E flow does the calibration: the model is traced with torch.export, the
`X86InductorQuantizer` annotates it with its default config (int8 weights, symmetric, one scale
per output channel; uint8 activations, one scale and zero point per tensor from a histogram
observer; each BatchNorm folded into the convolution before it), `annotate_missed_layers` adds
the convolutions that recipe leaves out (most Conv1d), the calibration batches run through the
observers and `convert_pt2e` produces the int8 weights and the scales.

The converted graph is generated code with no safe file format, so its numbers are put back into
the model instead (`static_int8_plan.py` reads them): each calibrated `nn.Conv2d` /
`nn.Conv1d` / `nn.Linear` becomes a `StaticInt8Conv2d` / `StaticInt8Conv1d` / `StaticInt8Linear`
(`formats/static_int8.py`: how they run, eager and compiled) holding the int8 weight, its
scales and its input's scale and zero point, and each folded BatchNorm becomes an
`nn.Identity`. The model keeps its classes and its forward, so it evaluates, profiles (per
module) and saves like any other; the artifact holds the int8 weights, and `netchisel.load`
rebuilds the layers from their buffers and attributes.

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
from dataclasses import dataclass
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
from netchisel.quantize.formats.static_int8 import full_int8_range
from netchisel.quantize.static_int8_plan import (
    WEIGHTED,
    GraphFacts,
    graph_facts,
    plan_swaps,
    split_repeated_calls,
    weight_owners,
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
    split_repeated_calls(exported)
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
        if node.op != "call_function" or node.target not in WEIGHTED:
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
