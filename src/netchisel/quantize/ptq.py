"""Round-to-nearest weight quantization (`quantize.rtn`) and dynamic int8 (`quantize.dynamic_int8`).

Both replace `nn.Linear` layers with the modules of `modules.py`, so the saved artifact holds
the packed integers and the loaded model runs the integer kernel when one exists. Every
replacement is computed before any is swapped in, so a failure leaves the model as it was.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import forget_masks
from netchisel.core.modules import replace_module, select_modules
from netchisel.core.registry import register
from netchisel.quantize.modules import (
    ActivationGranularity,
    DynamicInt8Linear,
    Int8Embedding,
    WeightGranularity,
    kernel_qparams,
    padded_weight,
    quantized_linear,
)
from netchisel.quantize.primitives import (
    SCALE_METHODS,
    QuantSpec,
    ScaleMethod,
    quantize,
)

# Layers that hold weights but have no weight-only kernel here; they are reported, not touched.
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class WeightQuantConfig(StageConfig):
    """The weight format shared by the weight-only algorithms (RTN, GPTQ, AWQ).

    - `bits`: 1-8. 8 (per channel, symmetric) and 4 (groups of 32-256) run integer kernels;
      other widths are stored packed at their real size and computed in float.
    - `group_size`: inputs per scale below 8 bits (None: 128); 8-bit layers always have one
      scale per output channel, the layout of the int8 kernel.
    - `symmetric`: None means symmetric at 8 bits, asymmetric (with a zero point) below.
    - `scale_method`: minmax, percentile or mse (see `primitives.choose_qparams`).
    - `layers` / `exclude`: regexes over Linear layer names; `per_layer_bits` overrides `bits`
      for layers whose name fully matches a regex (mixed precision).
    - `embeddings`: also store every `nn.Embedding` as int8 rows (`Int8Embedding`); in small
      language models and BERTs the token table is often most of the bytes.
    """

    bits: int = 8
    group_size: int | None = None
    symmetric: bool | None = None
    scale_method: str = "minmax"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_layer_bits: dict[str, int] = field(default_factory=dict)
    embeddings: bool = False

    def validate(self) -> None:
        stage = self.NAME
        for name, bits in [
            ("bits", self.bits),
            *((f"per_layer_bits[{k!r}]", b) for k, b in self.per_layer_bits.items()),
        ]:
            if not 1 <= bits <= 8:
                raise ConfigError(f"{stage}: {name}={bits} is outside 1-8")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"{stage}: group_size={self.group_size} must be >= 1")
        if self.scale_method not in SCALE_METHODS:
            raise ConfigError(
                f"{stage}: unknown scale_method {self.scale_method!r} ({', '.join(SCALE_METHODS)})"
            )
        if self.symmetric and min([self.bits, *self.per_layer_bits.values()]) < 2:
            raise ConfigError(f"{stage}: 1-bit weights need symmetric=false (or quantize.binary)")

    def spec_for(self, layer: str) -> QuantSpec:
        """The QuantSpec of one layer (its bits after `per_layer_bits`)."""
        bits = next(
            (b for pattern, b in self.per_layer_bits.items() if re.fullmatch(pattern, layer)),
            self.bits,
        )
        symmetric = bits == 8 if self.symmetric is None else self.symmetric
        if bits == 8:
            return QuantSpec(bits, symmetric, "channel")
        return QuantSpec(bits, symmetric, "group", self.group_size or 128)


@dataclass(frozen=True)
class RTNConfig(WeightQuantConfig):
    """Round each weight to the nearest level of its group's grid (no data needed).

    Example:
        >>> RTNConfig(bits=4).spec_for("fc").group_size
        128
    """

    NAME: ClassVar[str] = "quantize.rtn"


@register(RTNConfig)
def quantize_rtn(model: nn.Module, config: RTNConfig, ctx: Context) -> nn.Module:
    """Replace the chosen Linear layers by round-to-nearest quantized ones."""

    def make(name: str, linear: nn.Linear) -> nn.Module:
        spec = config.spec_for(name)
        weight = padded_weight(linear, spec, name)
        scale, zero = kernel_qparams(weight, spec, config.scale_method)  # type: ignore[arg-type]
        return quantized_linear(linear, spec, quantize(weight, scale, zero, spec), scale, zero)

    swap_linears(model, config, ctx, make)
    return model


def chosen_linears(
    model: nn.Module,
    layers: tuple[str, ...] | None,
    exclude: tuple[str, ...],
    stage: str,
    embeddings: bool = False,
) -> dict[str, nn.Linear]:
    """The Linear layers a quantization stage works on; warns once about layers it skips."""
    chosen = select_modules(model, (nn.Linear,), layers, exclude)
    if not chosen:
        raise ConfigError(f"{stage}: the model has no Linear layer to quantize")
    skip_types = CONVOLUTIONS if embeddings else (*CONVOLUTIONS, nn.Embedding)
    skipped = [
        f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, skip_types)
    ]
    if skipped:
        shown = ", ".join(skipped[:6]) + (
            f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        )
        warnings.warn(
            f"{stage}: no kernel for these layers, they stay in float: {shown} "
            "(quantize.static_int8 covers convolutions; embeddings: true stores tables as int8)",
            stacklevel=3,
        )
    return {n: m for n, m in chosen.items() if isinstance(m, nn.Linear)}


def swap_linears(
    model: nn.Module,
    config: WeightQuantConfig | DynamicInt8Config,
    ctx: Context,
    make: Callable[[str, nn.Linear], nn.Module],
) -> dict[str, nn.Module]:
    """Build every replacement first, then swap them in and record what changed."""
    stage = config.NAME
    embeddings = getattr(config, "embeddings", False)
    linears = chosen_linears(model, config.layers, config.exclude, stage, embeddings)
    new = {name: make(name, linear) for name, linear in linears.items()}
    if embeddings:
        tables = select_modules(model, (nn.Embedding,), None, ())
        new.update({n: Int8Embedding.from_float(m) for n, m in tables.items()})  # type: ignore[arg-type]
    for name, module in new.items():
        replace_module(model, name, module)
    # A pruned layer's zeros are now in its integers; its mask names a weight that is gone.
    forget_masks(model, set(new))
    simulated = sorted(n for n, m in new.items() if getattr(m, "simulated", False))
    ctx.record(
        quantized_layers=len(new),
        layer_bits={n: int(getattr(m, "bits", 8)) for n, m in new.items()},
        note=(
            f"{len(simulated)} layers have no integer kernel at their bit width: stored packed, "
            "computed in float, no speed-up"
            if simulated
            else "all quantized layers run integer kernels"
        ),
    )
    return new


@dataclass(frozen=True)
class DynamicInt8Config(StageConfig):
    """int8 weights, and activations quantized to int8 at run time (no calibration).

    - `activations`: `per_token` (a scale per input row, on `torch._int_mm`: the most exact)
      or `per_tensor` (one scale per call, on fbgemm's fused kernel on CPU: faster).
    - `weights`: `per_channel` (a scale per output row) or `per_tensor` (one scale: with
      per-tensor activations, fbgemm's fastest kernel, and the least exact).
      docs/quantization.md has the measured trade of each combination.
    - `scale_method`: how the weight scales are chosen (`primitives.choose_qparams`). `mse`
      clips the few largest weights when that lowers the error: with one scale per tensor,
      where one outlier sets the step for every weight, it matters most (it costs nothing
      at run time).
    - `layers`, `exclude` and `embeddings` are as in `WeightQuantConfig`.

    Example:
        >>> DynamicInt8Config(exclude=("head",)).exclude
        ('head',)
    """

    NAME: ClassVar[str] = "quantize.dynamic_int8"

    activations: ActivationGranularity = "per_token"
    weights: WeightGranularity = "per_channel"
    scale_method: ScaleMethod = "minmax"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    embeddings: bool = False


@register(DynamicInt8Config)
def quantize_dynamic_int8(model: nn.Module, config: DynamicInt8Config, ctx: Context) -> nn.Module:
    """Replace the chosen Linear layers by `DynamicInt8Linear` (int8 x int8 kernels)."""
    swap_linears(
        model,
        config,
        ctx,
        lambda name, linear: DynamicInt8Linear.from_float(
            linear, config.activations, config.weights, config.scale_method
        ),
    )
    return model
