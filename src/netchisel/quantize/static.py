"""Static int8 (`quantize.static_int8`): int8 weights and int8 activations whose scales are
calibrated on the task's data, for the convolutions and Linear layers of CNNs and MLPs on x86.

torchao's PT2E flow does the calibration: the model is traced with torch.export, the
`X86InductorQuantizer` annotates it with its default config (int8 weights, symmetric, one scale
per output channel; uint8 activations, one scale and zero point per tensor from a histogram
observer; each BatchNorm folded into the convolution before it), the calibration batches run
through the observers and `convert_pt2e` produces the int8 weights and the scales.

The converted graph is generated code with no safe file format, so its numbers are put back
into the model instead: each calibrated `nn.Conv2d` / `nn.Linear` becomes a `StaticInt8Conv2d`
/ `StaticInt8Linear` holding the int8 weight, its scales and its input's scale and zero point,
and each folded BatchNorm becomes an `nn.Identity`. The model keeps its classes and its forward,
so it evaluates, profiles (per module) and saves like any other; the artifact holds the int8
weights, and `netchisel.load` rebuilds the layers from their buffers and attributes.

How it runs:

- eager: each layer quantizes its input and calls oneDNN's int8 kernel
  (`onednn.qconv_pointwise`, `onednn.qlinear_pointwise`) on the weight packed once on first use;
- compiled (torch.compile, torch.export, ONNX export): each layer emits the reference pattern
  (quantize -> dequantize -> float op on the dequantized weight). Inductor with freezing
  (`torch._inductor.config.freezing = True`, inference mode) lowers it to the same int8 kernels
  fused with their neighbours (ReLU, the next layer's quantization); without freezing it runs the
  pattern in float, slower than eager. The `compile` latency backend compiles with freezing. The
  ONNX exporter turns the pattern into QuantizeLinear/DequantizeLinear (a QDQ int8 model).

Activations are quantized at the input of every int8 layer only; what PT2E also quantizes
between layers (a residual add's inputs, a pooled tensor) stays in float here, which is at least
as accurate as the PT2E graph.

Example:
    >>> conv = StaticInt8Conv2d.from_float(nn.Conv2d(3, 8, 3), input_scale=0.02)
    >>> conv.weight_int8.dtype, conv(torch.rand(1, 3, 8, 8)).shape
    (torch.int8, torch.Size([1, 8, 6, 6]))
"""

from __future__ import annotations

import copy
import importlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError, first_line
from netchisel.core.logs import TORCHAO_IMPORT_LOGGERS, quiet_loggers
from netchisel.core.masks import forget_masks
from netchisel.core.modules import replace_module, select_modules
from netchisel.core.registry import register

# The x86 (oneDNN) int8 formats: uint8 activations with a zero point, symmetric int8 weights.
ACT_MIN, ACT_MAX, ACT_DTYPE = 0, 255, torch.uint8
W_MIN, W_MAX, W_DTYPE = -128, 127, torch.int8
_CACHE = "_netchisel_kernel_cache"


def _decomposed_ops() -> Any:
    # Importing it registers the quantized_decomposed ops.
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


# -- the modules ------------------------------------------------------------------------------


class _StaticInt8(nn.Module):
    """Shared parts: the int8 weight and its scales, the input's qparams, the kernel cache."""

    weight_int8: Tensor
    weight_scale: Tensor
    input_scale: float
    input_zero_point: int

    def _setup(self, weight: Tensor, bias: Tensor | None, scale: float, zero_point: int) -> None:
        if not 0.0 < scale < float("inf"):
            raise ModelError(f"{type(self).__name__}: input scale must be > 0, got {scale}")
        if not ACT_MIN <= zero_point <= ACT_MAX:
            raise ModelError(f"{type(self).__name__}: input zero point {zero_point} is not 0-255")
        self.register_buffer("weight_int8", torch.zeros(weight.shape, dtype=W_DTYPE))
        self.register_buffer("weight_scale", torch.ones(weight.shape[0]))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.input_scale = float(scale)
        self.input_zero_point = int(zero_point)

    def load_int8(self, q: Tensor, scale: Tensor) -> None:
        """Take an int8 weight (this layer's shape) and its per-output-channel scales."""
        if q.dtype != W_DTYPE or q.shape != self.weight_int8.shape:
            raise ModelError(
                f"{type(self).__name__}: expected an int8 weight of shape "
                f"{list(self.weight_int8.shape)}, got {q.dtype} {list(q.shape)}"
            )
        with torch.no_grad():
            self.weight_int8.copy_(q)
            self.weight_scale.copy_(scale.reshape(-1).float())

    def dequantized_weight(self) -> Tensor:
        """The float weight the layer computes with: int8 times its channel's scale."""
        shape = [-1] + [1] * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.reshape(shape)

    def _reference_input(self, x: Tensor) -> Tensor:
        # quantize -> dequantize, the pattern inductor and the ONNX exporter recognise.
        qd = _decomposed_ops()
        s, z = self.input_scale, self.input_zero_point
        q = qd.quantize_per_tensor(x.float(), s, z, ACT_MIN, ACT_MAX, ACT_DTYPE)
        return qd.dequantize_per_tensor(q, s, z, ACT_MIN, ACT_MAX, ACT_DTYPE)  # type: ignore[no-any-return]

    def _reference_weight(self) -> Tensor:
        qd = _decomposed_ops()
        # Inductor lowers this without freezing only with a zero-point tensor (made from a
        # buffer so freezing folds it to a constant); ONNX export wants none (zero).
        zero = None if torch.compiler.is_exporting() else self.weight_scale.mul(0).long()
        return qd.dequantize_per_channel(  # type: ignore[no-any-return]
            self.weight_int8, self.weight_scale, zero, 0, W_MIN, W_MAX, W_DTYPE
        )

    def _quantized_input(self, x: Tensor) -> Tensor:
        qd = _decomposed_ops()
        return qd.quantize_per_tensor(  # type: ignore[no-any-return]
            x.float(), self.input_scale, self.input_zero_point, ACT_MIN, ACT_MAX, ACT_DTYPE
        )

    def _kernel(self) -> tuple[Tensor, Tensor]:
        """(oneDNN-packed weight, zero weight zero points), rebuilt when the weight changes."""
        w = self.weight_int8
        # Keyed by storage and version, so load_state_dict (copy or assign) invalidates it.
        version = 0 if w.is_inference() else w._version
        key = (w.data_ptr(), version, self.weight_scale.data_ptr(), self.input_scale)
        cache = self.__dict__.get(_CACHE)
        if cache is None or cache[0] != key:
            zeros = torch.zeros(w.shape[0], dtype=torch.int64)
            cache = (key, (self._pack(), zeros))
            self.__dict__[_CACHE] = cache
        return cache[1]

    def _pack(self) -> Tensor:
        raise NotImplementedError

    def prepare_kernels(self) -> None:
        """Pack the weight for oneDNN now (otherwise it is packed on the first eager call)."""
        with torch.no_grad():
            self._kernel()

    def _check_input(self, x: Tensor) -> None:
        if x.requires_grad:
            raise ModelError(
                f"{type(self).__name__} is for inference: call it under torch.no_grad() "
                "(a static int8 model cannot be trained; fine-tune before quantizing)"
            )
        if x.device.type != "cpu":
            raise ModelError(f"{type(self).__name__} runs on x86 CPUs only, got {x.device}")

    def __getstate__(self) -> dict[str, Any]:
        # The packed weight is an opaque oneDNN tensor: it cannot be copied or pickled.
        state = dict(self.__dict__)
        state.pop(_CACHE, None)
        return state

    def extra_repr(self) -> str:
        return (
            f"weight={list(self.weight_int8.shape)}, input_scale={self.input_scale:.4g}, "
            f"input_zero_point={self.input_zero_point}, bias={self.bias is not None}"
        )


class StaticInt8Conv2d(_StaticInt8):
    """A Conv2d with int8 weights (a scale per output channel) and a calibrated uint8 input.

    Example:
        >>> conv = StaticInt8Conv2d.from_float(nn.Conv2d(4, 8, 3, padding=1), input_scale=0.01)
        >>> conv(torch.rand(2, 4, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        input_scale: float,
        input_zero_point: int,
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ModelError(f"StaticInt8Conv2d needs a 4-d weight, got {list(weight.shape)}")
        self._setup(weight, bias, input_scale, input_zero_point)
        self.stride = tuple(int(v) for v in stride)
        self.padding = tuple(int(v) for v in padding)
        self.dilation = tuple(int(v) for v in dilation)
        self.groups = int(groups)

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, input_scale: float, input_zero_point: int = 0
    ) -> StaticInt8Conv2d:
        """Round `conv`'s weight to int8 per output channel; the input qparams are given."""
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ModelError("StaticInt8Conv2d.from_float needs numeric zero padding")
        layer = cls(
            conv.weight,
            conv.bias,
            input_scale,
            input_zero_point,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )
        layer.load_int8(*int8_per_channel(conv.weight))
        return layer

    def _pack(self) -> Tensor:
        return torch.ops.onednn.qconv_prepack(  # type: ignore[no-any-return]
            self.weight_int8,
            self.weight_scale,
            self.input_scale,
            self.input_zero_point,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
            None,
        )

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            y = F.conv2d(
                self._reference_input(x),
                self._reference_weight(),
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
            return y.to(x.dtype)
        self._check_input(x)
        batched = x if x.dim() == 4 else x.unsqueeze(0)
        packed, zeros = self._kernel()
        y = torch.ops.onednn.qconv_pointwise(
            self._quantized_input(batched),
            self.input_scale,
            self.input_zero_point,
            packed,
            self.weight_scale,
            zeros,
            self.bias,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        y = y if x.dim() == 4 else y.squeeze(0)
        return y.to(x.dtype)  # type: ignore[no-any-return]


class StaticInt8Linear(_StaticInt8):
    """A Linear with int8 weights (a scale per output row) and a calibrated uint8 input.

    Example:
        >>> layer = StaticInt8Linear.from_float(nn.Linear(16, 4), input_scale=0.01)
        >>> layer(torch.rand(3, 16)).shape
        torch.Size([3, 4])
    """

    in_features: int
    out_features: int

    def __init__(
        self, weight: Tensor, bias: Tensor | None, input_scale: float, input_zero_point: int
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ModelError(f"StaticInt8Linear needs a 2-d weight, got {list(weight.shape)}")
        self._setup(weight, bias, input_scale, input_zero_point)
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])

    @classmethod
    def from_float(
        cls, linear: nn.Linear, input_scale: float, input_zero_point: int = 0
    ) -> StaticInt8Linear:
        """Round `linear`'s weight to int8 per output row; the input qparams are given."""
        layer = cls(linear.weight, linear.bias, input_scale, input_zero_point)
        layer.load_int8(*int8_per_channel(linear.weight))
        return layer

    def _pack(self) -> Tensor:
        return torch.ops.onednn.qlinear_prepack(self.weight_int8, None)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            y = F.linear(self._reference_input(x), self._reference_weight(), self.bias)
            return y.to(x.dtype)
        self._check_input(x)
        packed, zeros = self._kernel()
        y = torch.ops.onednn.qlinear_pointwise(
            self._quantized_input(x.reshape(-1, self.in_features)),
            self.input_scale,
            self.input_zero_point,
            packed,
            self.weight_scale,
            zeros,
            self.bias,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # type: ignore[no-any-return]


STATIC_INT8_MODULES = (StaticInt8Conv2d, StaticInt8Linear)


def int8_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 of `weight` with one scale per output channel (round to nearest).

    Example:
        >>> q, s = int8_per_channel(torch.tensor([[0.5, -1.0], [2.0, 1.0]]))
        >>> q.tolist(), [round(v * 127, 3) for v in s.tolist()]
        ([[64, -127], [127, 64]], [1.0, 2.0])
    """
    from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize

    spec = QuantSpec(bits=8, symmetric=True, granularity="channel")
    scale, zero = choose_qparams(weight, spec)
    return quantize(weight, scale, zero, spec), scale.reshape(-1)


def has_static_int8(model: nn.Module) -> bool:
    """Whether any layer of `model` is a static int8 layer."""
    return any(isinstance(m, STATIC_INT8_MODULES) for m in model.modules())


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` whose static int8 layers are float Conv2d/Linear with the dequantized
    weights (BatchNorms stay folded): the float model the int8 one rounds activations of.

    Example:
        >>> net = nn.Sequential(StaticInt8Linear.from_float(nn.Linear(4, 2), input_scale=0.1))
        >>> type(float_twin(net)[0]).__name__
        'Linear'
    """
    twin = copy.deepcopy(model)
    for name, layer in list(twin.named_modules()):
        if not isinstance(layer, STATIC_INT8_MODULES):
            continue
        w = layer.dequantized_weight()
        new: nn.Conv2d | nn.Linear
        if isinstance(layer, StaticInt8Conv2d):
            new = nn.Conv2d(
                w.shape[1] * layer.groups,
                w.shape[0],
                _pair(w.shape[2:]),
                _pair(layer.stride),
                _pair(layer.padding),
                _pair(layer.dilation),
                layer.groups,
                bias=layer.bias is not None,
            )
        else:
            new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
        with torch.no_grad():
            new.weight.copy_(w)
            if new.bias is not None and layer.bias is not None:
                new.bias.copy_(layer.bias)
        replace_module(twin, name, new)
    return twin


def _pair(values: Sequence[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


# -- the stage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticInt8Config(StageConfig):
    """Calibrate int8 activations on `calibration_samples` samples of `calibration_split`.

    `layers` / `exclude` are regexes over Conv2d/Linear layer names (all by default); layers
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
    chosen = select_modules(model, (nn.Conv2d, nn.Linear), config.layers, config.exclude)
    with ctx.progress(f"{STAGE}: calibrating", len(inputs)) as advance:
        converted, facts = calibrate_pt2e(model, inputs, advance)
    plan = plan_swaps(model, converted, facts, set(chosen))
    if not plan.layers:
        raise ConfigError(
            f"{STAGE}: no Conv2d or Linear layer could be quantized "
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
    dynamic = tuple({0: torch.export.Dim.AUTO} if t.dim() else None for t in inputs[0])
    try:
        with torch.no_grad():
            exported = torch.export.export(work, inputs[0], dynamic_shapes=dynamic).module()
    except Exception as e:  # torch raises many types for untraceable code
        raise ModelError(f"{STAGE}: torch.export cannot trace the model: {first_line(e)}") from None
    facts = graph_facts(exported)
    prepared = prepare_pt2e(exported, quantizer)
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


def _torchao_pt2e() -> tuple[Any, Any, Any]:
    try:
        with quiet_loggers(*TORCHAO_IMPORT_LOGGERS):
            x86 = importlib.import_module(
                "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"
            )
            pt2e = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
    except ImportError:
        raise ConfigError(f"{STAGE} needs torchao: pip install torchao") from None
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    return pt2e.prepare_pt2e, pt2e.convert_pt2e, quantizer


# -- from the converted graph back to modules -------------------------------------------------


@dataclass
class SwapPlan:
    """The int8 layers and the Identity for each folded BatchNorm, by module name."""

    layers: dict[str, nn.Module]
    identities: dict[str, nn.Module]
    skipped: list[str]


_WEIGHTED = {torch.ops.aten.conv2d.default: nn.Conv2d, torch.ops.aten.linear.default: nn.Linear}


@dataclass(frozen=True)
class GraphFacts:
    """Of the exported float graph: how often each layer is called, and which BatchNorm reads
    each Conv2d/Linear output (PT2E folds that BatchNorm into the layer's weights)."""

    calls: dict[str, int]
    bn_after: dict[str, str]


def graph_facts(exported: fx.GraphModule) -> GraphFacts:
    calls: dict[str, int] = {}
    bn_after: dict[str, str] = {}
    for node in exported.graph.nodes:
        name = _module_of(node)
        if name is None or node.op != "call_function":
            continue
        if node.target in _WEIGHTED or _is_batch_norm(node):
            calls[name] = calls.get(name, 0) + 1
        source = node.args[0] if node.args else None
        if _is_batch_norm(node) and isinstance(source, fx.Node) and source.target in _WEIGHTED:
            layer = _module_of(source)
            if layer is not None:
                bn_after[layer] = name
    return GraphFacts(calls, bn_after)


def plan_swaps(
    model: nn.Module, converted: fx.GraphModule, facts: GraphFacts, chosen: set[str]
) -> SwapPlan:
    """Read the int8 weights and scales of each chosen layer from PT2E's converted graph."""
    remaining = {_module_of(node) for node in converted.graph.nodes}
    plan = SwapPlan({}, {}, [])
    for node in converted.graph.nodes:
        name = _module_of(node)
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
    plan.skipped += [f"{n}: not quantized by the x86 quantizer" for n in missing]
    return plan


def _unsupported(
    model: nn.Module, node: fx.Node, name: str, calls: dict[str, int], shared_bn: bool
) -> str | None:
    module = model.get_submodule(name)
    if not isinstance(module, _WEIGHTED[node.target]):  # type: ignore[index]
        return f"a {type(module).__name__} calls {node.target}"
    if calls.get(name, 0) != 1:
        return "called more than once (its inputs would need several scales)"
    if shared_bn:
        return "its BatchNorm is called more than once and cannot be folded away"
    x, w = node.args[0], node.args[1]
    if not (_is_op(x, "dequantize_per_tensor") and _is_op(w, "dequantize_per_channel")):
        return "no int8 input and weight in the calibrated graph"
    assert isinstance(x, fx.Node) and isinstance(w, fx.Node)
    if tuple(x.args[3:6]) != (ACT_MIN, ACT_MAX, ACT_DTYPE) or not isinstance(x.args[1], float):
        return f"activation format {x.args[3:6]} is not uint8 0-255 per tensor"
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
    layer: _StaticInt8
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
    else:
        layer = StaticInt8Linear(q, bias, x_scale, x_zero)
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
    return str(list(stack.values())[-1][0])


def _is_batch_norm(node: fx.Node) -> bool:
    return node.op == "call_function" and "batch_norm" in str(node.target)


def _is_op(node: Any, name: str) -> bool:
    return isinstance(node, fx.Node) and str(node.target).startswith(f"quantized_decomposed.{name}")
