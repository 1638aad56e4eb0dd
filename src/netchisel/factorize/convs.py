"""What every conv rewrite (`factorize.tucker`, `factorize.cp`, `factorize.separable`) shares.

- `ConvRewriteConfig`: the fields they all have (which convs, BatchNorm re-estimation);
- `skip_reason`: the convs none of them rewrites (grouped, depthwise, 1x1);
- `conv_geometry`: what the replacement's kxk conv keeps (stride, padding, dilation, ...);
- `relative_error`: the weight error each layer's record reports;
- `rewrite_convs_`: the loop: build every replacement before swapping any in (so an error
  leaves the model as it was), swap, re-estimate BatchNorms, record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.modules import select_modules
from netchisel.factorize.batchnorm import swap_and_recalibrate_
from netchisel.factorize.svd import record_totals

Rewrite = Callable[[str, nn.Conv2d], "tuple[nn.Module, dict[str, Any]] | str"]
"""One layer's rewrite: (replacement, its record entry), or the reason it is skipped."""


@dataclass(frozen=True)
class ConvRewriteConfig(StageConfig):
    """The fields every conv rewrite has.

    - `layers` / `exclude`: regexes over module names (full match);
    - `recalibrate_bn`: train samples to re-estimate every BatchNorm's statistics with after
      the rewrite (0: off; needs a task), see `factorize/batchnorm.py`.

    Example:
        >>> ConvRewriteConfig(exclude=("conv1",)).recalibrate_bn
        0
    """

    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    recalibrate_bn: int = 0


def skip_reason(conv: nn.Conv2d) -> str | None:
    """Why a conv is not rewritten (grouped, depthwise, 1x1), or None.

    Example:
        >>> skip_reason(nn.Conv2d(8, 8, 3, groups=8))
        'depthwise conv (groups=8): only groups=1 convs are rewritten'
    """
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} conv (groups={conv.groups}): only groups=1 convs are rewritten"
    if conv.kernel_size == (1, 1):
        return "1x1 conv: nothing to gain from a kxk core"
    return None


def conv_geometry(conv: nn.Conv2d) -> dict[str, Any]:
    """The kxk conv's kernel, stride, padding, dilation and padding mode, as Conv2d kwargs.

    Example:
        >>> conv_geometry(nn.Conv2d(3, 8, 3, stride=2))["stride"]
        (2, 2)
    """
    return {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "padding_mode": conv.padding_mode,
    }


def relative_error(approx: Tensor, weight: Tensor) -> float:
    """||approx - W|| / ||W|| (Frobenius, float64).

    Example:
        >>> import torch
        >>> relative_error(torch.zeros(2, 2), torch.ones(2, 2))
        1.0
    """
    w = weight.detach().double()
    return float((approx.detach().double() - w).norm() / w.norm().clamp_min(1e-30))


def params_of(module: nn.Module) -> int:
    """Number of parameters (weights and biases) of a module."""
    return sum(p.numel() for p in module.parameters())


def rewrite_convs_(
    model: nn.Module, config: ConvRewriteConfig, ctx: Context, stage: str, rewrite: Rewrite
) -> nn.Module:
    """Apply `rewrite` to every chosen, rewritable Conv2d of `model`, in place.

    Records each rewritten layer's entry plus its parameters before and after, the skipped
    layers and why (`skip_reason`, or the reason `rewrite` returned), the totals and the
    BatchNorm samples used.
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        other = [
            f"{n} ({type(m).__name__})"
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv3d))
        ]
        also = f"; its {', '.join(other[:6])} are not supported" if other else ""
        raise ConfigError(f"{stage}: the model has no nn.Conv2d layer to rewrite{also}")
    chosen = select_modules(model, (nn.Conv2d,), config.layers, config.exclude)
    if not chosen:
        raise ConfigError(f"{stage}: the model has no nn.Conv2d layer to rewrite")
    task = ctx.require_task(stage) if config.recalibrate_bn else None
    replacements: dict[str, nn.Module] = {}
    done: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, conv in chosen.items():
        assert isinstance(conv, nn.Conv2d)
        outcome = skip_reason(conv) or rewrite(name, conv)
        if isinstance(outcome, str):
            skipped[name] = outcome
            continue
        new, entry = outcome
        replacements[name] = new
        done[name] = {**entry, "params_before": params_of(conv), "params_after": params_of(new)}
    swap_and_recalibrate_(model, replacements, task, config.recalibrate_bn)
    record_totals(ctx, done, skipped)
    ctx.record(recalibrated_bn_samples=config.recalibrate_bn if replacements else 0)
    return model
