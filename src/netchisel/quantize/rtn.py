"""Round-to-nearest weight quantization (`quantize.rtn`), and the weight format it shares with
the weight-only algorithms that choose the integers more carefully (GPTQ, AWQ, QAT, mixed).

The chosen Linear layers become the modules of `formats/` (a real int8 or int4 kernel where
one exists, packed otherwise), so the saved artifact holds the packed integers and the loaded
model runs the integer kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.quantize.formats import kernel_qparams, padded_weight, quantized_linear
from netchisel.quantize.linears import swap_linears
from netchisel.quantize.primitives import DEFAULT_GROUP_SIZE, SCALE_METHODS, QuantSpec, quantize


@dataclass(frozen=True)
class WeightQuantConfig(StageConfig):
    """The weight format shared by the weight-only algorithms (RTN, GPTQ, AWQ).

    - `bits`: 1-8. 8 (per channel, symmetric) and 4 (groups of 32-256) run integer kernels;
      other widths are stored packed at their real size and computed in float.
    - `group_size`: inputs per scale below 8 bits (None: `DEFAULT_GROUP_SIZE`, 128); 8-bit
      layers always have one scale per output channel, the layout of the int8 kernel.
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
        return QuantSpec(bits, symmetric, "group", self.group_size or DEFAULT_GROUP_SIZE)


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
