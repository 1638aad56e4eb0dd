"""Dynamic int8 (`quantize.dynamic_int8`): int8 weights, and activations quantized to int8 at
run time, so no calibration is needed; the layers become `DynamicInt8Linear`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.registry import register
from netchisel.quantize.formats.dynamic_int8 import (
    ActivationGranularity,
    DynamicInt8Linear,
    WeightGranularity,
)
from netchisel.quantize.linears import swap_linears
from netchisel.quantize.primitives import ScaleMethod


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
