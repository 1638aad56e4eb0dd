"""`factorize.separable`: a kxk Conv2d becomes a depthwise kxk conv and a pointwise 1x1 conv.

The depthwise-separable factorisation of MobileNet (Howard et al. 2017) and Xception
(Chollet 2017), applied to a trained layer: W[o, c] (a kxk filter) is replaced by
P[o, c] * D[c], one kxk filter per input channel scaled per output channel. Initialisation:
for each input channel c, the matrix M_c = W[:, c] reshaped to (out, kh*kw) is replaced by its
best rank-1 approximation s1 u1 v1^T (its SVD, Eckart-Young); D[c] = sqrt(s1) v1 and
P[:, c] = sqrt(s1) u1. That minimises the Frobenius error of the weight over all
depthwise + pointwise pairs (the channels separate), so the rewritten model starts close to
the original and recovery training starts from there. The relative weight error is recorded.

With `batchnorm: true`, a BatchNorm2d sits between the two convs, initialised to the identity
(running variance 1 - eps), so the initial output is unchanged by it. Grouped, depthwise
and 1x1 convs are skipped, and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.registry import register
from netchisel.factorize.convs import (
    ConvRewriteConfig,
    conv_geometry,
    params_of,
    relative_error,
    rewrite_convs_,
)
from netchisel.factorize.rank import check_recalibration


@dataclass(frozen=True)
class SeparableConfig(ConvRewriteConfig):
    """Replace kxk Conv2d layers by depthwise kxk + pointwise 1x1 convs.

    - `batchnorm`: put an identity-initialised BatchNorm2d between the two convs.
    - `layers`, `exclude`, `recalibrate_bn`: as for every conv rewrite (`ConvRewriteConfig`).

    Example:
        >>> SeparableConfig(exclude=("conv1",)).batchnorm
        False
    """

    NAME: ClassVar[str] = "factorize.separable"

    batchnorm: bool = False

    def validate(self) -> None:
        check_recalibration(SeparableConfig.NAME, self.recalibrate_bn)


def separable_factors(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(depthwise (in, 1, kh, kw), pointwise (out, in, 1, 1)): the least-squares fit of W.

    Example:
        >>> d = torch.randn(3, 1, 3, 3)
        >>> p = torch.randn(5, 3, 1, 1)
        >>> dw, pw = separable_factors(p * d.transpose(0, 1))  # exactly separable
        >>> bool(torch.allclose(pw * dw.transpose(0, 1), p * d.transpose(0, 1), atol=1e-5))
        True
    """
    c_out, c_in, kh, kw = weight.shape
    per_channel = weight.detach().double().transpose(0, 1).reshape(c_in, c_out, kh * kw)
    u, s, vh = torch.linalg.svd(per_channel, full_matrices=False)
    root = s[:, 0].sqrt()
    depthwise = (root[:, None] * vh[:, 0, :]).reshape(c_in, 1, kh, kw)
    pointwise = (root[:, None] * u[:, :, 0]).T.reshape(c_out, c_in, 1, 1)
    return depthwise.to(weight.dtype), pointwise.to(weight.dtype)


def separable_conv(
    conv: nn.Conv2d, depthwise: Tensor, pointwise: Tensor, batchnorm: bool
) -> nn.Sequential:
    """`Sequential(depthwise kxk, [BatchNorm2d], pointwise 1x1)` holding the factors."""
    c_in = conv.in_channels
    dw = nn.Conv2d(c_in, c_in, groups=c_in, bias=False, **conv_geometry(conv))
    pw = nn.Conv2d(c_in, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        dw.weight.copy_(depthwise)
        pw.weight.copy_(pointwise)
        if conv.bias is not None and pw.bias is not None:
            pw.bias.copy_(conv.bias)
    if not batchnorm:
        return nn.Sequential(dw, pw)
    bn = nn.BatchNorm2d(c_in)
    with torch.no_grad():  # identity in eval mode: (x - 0) / sqrt(1 - eps + eps) * 1 + 0
        bn.running_var.fill_(1.0 - bn.eps)  # type: ignore[union-attr]
    return nn.Sequential(dw, bn, pw)


def separable_params(conv: nn.Conv2d, batchnorm: bool = False) -> int:
    """Parameters of the replacement (BatchNorm's affine weight and bias included).

    Example:
        >>> separable_params(nn.Conv2d(16, 32, 3, bias=False))
        656
    """
    kh, kw = conv.kernel_size
    c_in, c_out = conv.in_channels, conv.out_channels
    bias = c_out if conv.bias is not None else 0
    return c_in * kh * kw + c_in * c_out + bias + (2 * c_in if batchnorm else 0)


@register(SeparableConfig)
def factorize_separable(model: nn.Module, config: SeparableConfig, ctx: Context) -> nn.Module:
    """Replace each chosen kxk Conv2d by depthwise + pointwise convs fitted to its weight.

    Every replacement is built before any is swapped in, so an error leaves the model
    unchanged. Records each layer's relative weight error and parameters, and the skips.
    """

    def rewrite(name: str, conv: nn.Conv2d) -> tuple[nn.Module, dict[str, Any]] | str:
        before, after = params_of(conv), separable_params(conv, config.batchnorm)
        if after >= before:
            return f"would not reduce parameters ({after:,} >= {before:,})"
        depthwise, pointwise = separable_factors(conv.weight)
        approx = pointwise.double() * depthwise.double().transpose(0, 1)
        return separable_conv(conv, depthwise, pointwise, config.batchnorm), {
            "shape": list(conv.weight.shape),
            "weight_relative_error": relative_error(approx, conv.weight),
        }

    return rewrite_convs_(model, config, ctx, SeparableConfig.NAME, rewrite)
