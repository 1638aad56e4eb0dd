"""Fake quantization with the gradients training needs: the straight-through estimator and LSQ.

Rounding has a zero gradient almost everywhere, so quantization-aware training replaces it in
the backward pass:

- `ste_fake_quantize`: the clipped straight-through estimator (Bengio et al. 2013): the
  gradient passes unchanged to every value whose `x / scale + zero` lies inside the integer
  range `[qmin, qmax]` and is zero outside it (those values are clipped, so a small change
  does not move the output). Scales and zero points are constants here.
- `lsq_fake_quantize`: LSQ (Esser et al. 2020, "Learned Step Size Quantization", eq. 3): the
  same gradient for the values, and a gradient for the step size `s` itself,
  `round(x / s) - x / s` inside the range and `qmin - zero` / `qmax - zero` below / above it,
  multiplied by the gradient scale `g = 1 / sqrt(N * Qp)` (section 2.2) and summed over the
  `N` values that share the step.

Both forwards are exactly `primitives.dequantize(primitives.quantize(x))`: the same integers
and the same float operations, so a trained model converts to stored integers without drift.
The backward passes are written as `torch.autograd.Function`s (not the detach trick) so the
straight-through gradient is exactly 1 inside the range, with no `s * (1 / s)` rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from netchisel.quantize.primitives import QuantSpec, grouped


def lsq_grad_scale(numel: int, spec: QuantSpec) -> float:
    """LSQ's gradient scale `1 / sqrt(N * Qp)` for a step shared by `numel` values.

    `Qp` is the largest integer level (`spec.qmax`): 2^(b-1) - 1 signed, 2^b - 1 unsigned.

    Example:
        >>> lsq_grad_scale(9, QuantSpec(bits=3))  # 1 / sqrt(9 * 3)
        0.19245008972987526
    """
    return 1.0 / math.sqrt(numel * spec.qmax)


def _integers(g: Tensor, s: Tensor, z: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor, Tensor]:
    """The clamped integers (as floats), `x / s` and the mask of values inside the range."""
    ratio = g / s
    unclamped = torch.round(ratio) + z
    q = unclamped.clamp(spec.qmin, spec.qmax)
    shifted = ratio + z
    inside = (shifted >= spec.qmin) & (shifted <= spec.qmax)
    return q, ratio, inside


class _SteFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
        g = grouped(x, spec)
        s, z = scale.unsqueeze(-1).to(g.dtype), zero.unsqueeze(-1).to(g.dtype)
        q, _, inside = _integers(g, s, z, spec)
        ctx.save_for_backward(inside)
        ctx.shape = x.shape
        return ((q - z) * s).reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        grad = grads[0]
        return grad * inside.reshape(ctx.shape).to(grad.dtype), None, None, None


class _LsqFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, step: Tensor, zero: Tensor, spec: QuantSpec, grad_scale: float
    ) -> Tensor:
        g = grouped(x, spec)
        s, z = step.unsqueeze(-1).to(g.dtype), zero.unsqueeze(-1).to(g.dtype)
        q, ratio, inside = _integers(g, s, z, spec)
        # d(out)/d(step): (q - z) - x/s inside the range, (q - z) = qmin - z or qmax - z outside.
        dstep = (q - z) - torch.where(inside, ratio, torch.zeros_like(ratio))
        ctx.save_for_backward(inside, dstep)
        ctx.shape = x.shape
        ctx.grad_scale = grad_scale
        return ((q - z) * s).reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        inside, dstep = ctx.saved_tensors
        grad = grads[0]
        grad_x = grad * inside.reshape(ctx.shape).to(grad.dtype)
        grad_step = (grad.reshape(dstep.shape) * dstep).sum(-1) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def ste_fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """`dequantize(quantize(x))` with the clipped straight-through gradient.

    `scale` and `zero` are `[rows, groups]` as `primitives.choose_qparams` returns them; they
    get no gradient.

    Example:
        >>> x = torch.tensor([[0.2, 0.9, -3.0]], requires_grad=True)
        >>> spec = QuantSpec(bits=3)  # integers -4..3
        >>> y = ste_fake_quantize(x, torch.tensor([[0.25]]), torch.tensor([[0.0]]), spec)
        >>> y.tolist(), torch.autograd.grad(y.sum(), x)[0].tolist()
        ([[0.25, 0.75, -1.0]], [[1.0, 0.0, 0.0]])
    """
    out: Tensor = _SteFakeQuant.apply(x, scale.detach(), zero.detach(), spec)  # type: ignore[no-untyped-call]
    return out


def lsq_fake_quantize(
    x: Tensor, step: Tensor, zero: Tensor, spec: QuantSpec, grad_scale: float
) -> Tensor:
    """`dequantize(quantize(x))` with a learned step: LSQ's gradients for `x` and `step`.

    `step` is `[rows, groups]` (one learned step per scale group); `zero` is a constant.

    Example:
        >>> x = torch.tensor([[0.3, -1.7, 5.0]])
        >>> step = torch.tensor([[0.5]], requires_grad=True)
        >>> spec = QuantSpec(bits=3)
        >>> y = lsq_fake_quantize(x, step, torch.zeros(1, 1), spec, lsq_grad_scale(3, spec))
        >>> y.tolist()
        [[0.5, -1.5, 1.5]]
    """
    out: Tensor = _LsqFakeQuant.apply(x, step, zero.detach(), spec, grad_scale)  # type: ignore[no-untyped-call]
    return out
