"""`quantize.binary`: binary and ternary weights, trained with latent float weights.

- binary (BinaryConnect, Courbariaux et al. 2015, with XNOR-Net's scale, Rastegari et al.
  2016): `w_b = alpha * sign(w)`, one `alpha = mean |w|` per output channel;
- ternary (TWN, Li & Liu 2016): `w_t = alpha * sign(w)` where `|w| > delta`, else 0, with
  `delta = 0.7 * mean |w|` and `alpha` the mean of the `|w|` above `delta`, per output channel.

The forward pass uses the binary/ternary weights; the backward pass hands their gradient
straight through to the latent float weights (zero where `|w| > 1`, as BinaryConnect), which
the optimizer updates (`core.train.fit`); the scales are recomputed from the latent weights
every step. After training the layers store their codes packed: a binary weight is 1 bit
(its sign) and a ternary weight 2 bits (the values 0, 1, 2 for -alpha, 0, +alpha), plus one
float scale (and a constant zero point) per channel, as `PackedLinear` / `PackedConv1d/2d`. They
are computed in float (simulated: no xnor/popcount kernel here, no speed-up claimed). The first
and last layers stay float by default, as in the papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.train import TrainConfig, check_training, train_settings
from netchisel.quantize.fake import FakeQuantized
from netchisel.quantize.formats import quantized_layer
from netchisel.quantize.primitives import QuantSpec, dequantize
from netchisel.quantize.qat import SIMULATED_NOTE, chosen_layers, train_and_convert_

Kind = Literal["binary", "ternary"]
BINARY_SPEC = QuantSpec(bits=1, symmetric=False, granularity="channel")
TERNARY_SPEC = QuantSpec(bits=2, symmetric=False, granularity="channel")
LATENT_CLIP = 1.0  # BinaryConnect: no gradient reaches a latent weight beyond +-1


def binary_codes(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(q, scale, zero)` with `w_b = (q - zero) * scale = alpha * sign(w)` per output channel.

    `q` is 1 for `w >= 0` and 0 below (uint8, `w`'s shape), `scale = 2 * alpha` and
    `zero = 0.5`, so `primitives.dequantize` gives exactly `+alpha` / `-alpha`.

    Example:
        >>> q, scale, zero = binary_codes(torch.tensor([[0.5, -1.5], [2.0, 0.0]]))
        >>> dequantize(q, scale, zero, BINARY_SPEC).tolist()
        [[1.0, -1.0], [1.0, 1.0]]
    """
    rows = w.detach().float().reshape(w.shape[0], -1)
    alpha = rows.abs().mean(1, keepdim=True)
    q = (rows >= 0).to(torch.uint8).reshape(w.shape)
    return q, 2 * alpha, torch.full_like(alpha, 0.5)


def ternary_codes(w: Tensor, threshold: float = 0.7) -> tuple[Tensor, Tensor, Tensor]:
    """`(q, scale, zero)` of TWN's ternary weights: `q` in {0, 1, 2}, `zero = 1`, `scale = alpha`.

    Per output channel, weights with `|w| <= threshold * mean |w|` become 0, the others
    `alpha * sign(w)` with `alpha` the mean of their magnitudes.

    Example:
        >>> q, scale, zero = ternary_codes(torch.tensor([[0.1, -2.0, 3.0, 0.3]]))
        >>> dequantize(q, scale, zero, TERNARY_SPEC).tolist()  # delta = 0.7 * 1.35
        [[0.0, -2.5, 2.5, 0.0]]
    """
    rows = w.detach().float().reshape(w.shape[0], -1)
    magnitude = rows.abs()
    delta = threshold * magnitude.mean(1, keepdim=True)
    keep = magnitude > delta
    alpha = (magnitude * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
    q = (1 + torch.sign(rows) * keep).to(torch.uint8).reshape(w.shape)
    return q, alpha, torch.ones_like(alpha)


class _SignSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(w.abs() <= LATENT_CLIP)
        return target

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grads[0] * inside.to(grads[0].dtype), None


class SignFakeQuant(nn.Module):
    """Binary or ternary weights in the forward pass, straight-through gradients backward.

    Example:
        >>> w = torch.tensor([[0.5, -0.25]], requires_grad=True)
        >>> out = SignFakeQuant("binary")(w)
        >>> out.tolist(), torch.autograd.grad(out.sum(), w)[0].tolist()
        ([[0.375, -0.375]], [[1.0, 1.0]])
    """

    def __init__(self, kind: Kind = "binary", threshold: float = 0.7) -> None:
        super().__init__()
        self.kind = kind
        self.threshold = threshold

    @property
    def spec(self) -> QuantSpec:
        return BINARY_SPEC if self.kind == "binary" else TERNARY_SPEC

    def integers(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(q, scale, zero)` of the current latent weight: what the converted layer stores."""
        if self.kind == "binary":
            return binary_codes(weight)
        return ternary_codes(weight, self.threshold)

    def forward(self, weight: Tensor) -> Tensor:
        q, scale, zero = self.integers(weight)
        target = dequantize(q, scale, zero, self.spec).to(weight.dtype)
        out: Tensor = _SignSte.apply(weight, target)  # type: ignore[no-untyped-call]
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


@dataclass(frozen=True)
class BinaryConfig(TrainConfig):
    """Train binary or ternary weights for `steps` steps, then store them as packed codes.

    - `kind`: "binary" (1 bit per weight) or "ternary" (2 bits per weight).
    - `threshold`: TWN's delta factor (ternary only): weights with `|w| <= threshold * mean|w|`
      of their output channel become 0.
    - `steps`: training steps with the straight-through estimator; 0 binarizes the weights as
      they are (no training: the post-training baseline).
    - `keep_first_last`: keep the model's first and last Linear/Conv layers in float.
    - `layers` / `exclude`: regexes over Linear, Conv1d, Conv2d names (default: all of them).
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: the training run.

    Example:
        >>> BinaryConfig(kind="ternary").spec().bits
        2
    """

    NAME: ClassVar[str] = "quantize.binary"

    kind: Kind = "binary"
    threshold: float = 0.7
    steps: int = 300
    keep_first_last: bool = True
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        stage = "quantize.binary"
        if self.kind not in ("binary", "ternary"):
            raise ConfigError(f"{stage}: kind {self.kind!r} is not 'binary' or 'ternary'")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{stage}: threshold {self.threshold} is not in (0, 1)")
        if self.steps < 0:
            raise ConfigError(f"{stage}: steps must be >= 0, got {self.steps}")
        check_training(stage, self.lr, self.batch_size)

    def spec(self) -> QuantSpec:
        return BINARY_SPEC if self.kind == "binary" else TERNARY_SPEC


def binary_layers(model: nn.Module, config: BinaryConfig) -> dict[str, nn.Module]:
    """The layers `quantize.binary` changes: the chosen ones but the first and last (by default)."""
    stage = "quantize.binary"
    chosen = chosen_layers(model, stage, config.layers, config.exclude)
    if config.keep_first_last:
        every = list(chosen_layers(model, stage, None, ()))
        chosen = {n: m for n, m in chosen.items() if n not in (every[0], every[-1])}
        if not chosen:
            raise ConfigError(
                f"{stage}: only the first and last layers ({every[0]}, {every[-1]}) were "
                "chosen and they stay float; set keep_first_last: false"
            )
    return chosen


def _convert(name: str, wrapper: FakeQuantized) -> nn.Module:
    weight_quant = wrapper.weight_quant
    if not isinstance(weight_quant, SignFakeQuant):
        raise TypeError(f"layer {name}: not a binary/ternary wrapper")
    layer = wrapper.original
    q, scale, zero = weight_quant.integers(layer.weight)
    return quantized_layer(layer, weight_quant.spec, q, scale, zero)


@register(BinaryConfig)
def quantize_binary(model: nn.Module, config: BinaryConfig, ctx: Context) -> nn.Module:
    """Train binary/ternary weights with a straight-through estimator, then pack their codes."""
    layers = binary_layers(model, config)
    every = chosen_layers(model, "quantize.binary", None, ())
    settings = train_settings(config, config.steps) if config.steps else None
    new, losses = train_and_convert_(
        model,
        layers,
        lambda name, layer: FakeQuantized(layer, SignFakeQuant(config.kind, config.threshold)),
        _convert,
        settings,
        "quantize.binary",
        ctx,
    )
    float_layers = sorted(set(every) - set(new))
    ctx.record(
        quantized_layers=len(new),
        kind=config.kind,
        bits_per_weight=config.spec().bits,
        train_steps=len(losses),
        float_layers=float_layers,
        simulated_layers=sorted(new),
        note=(
            f"{config.kind} codes {SIMULATED_NOTE} (no xnor/popcount kernel); "
            f"float layers: {', '.join(float_layers) or 'none'}"
        ),
        **({"final_train_loss": losses[-1]} if losses else {}),
    )
    return model
