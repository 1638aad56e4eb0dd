"""The straight-through estimator and LSQ: exact forwards, the gradients of the papers."""

from __future__ import annotations

import pytest
import torch

from netchisel.quantize.primitives import QuantSpec, choose_qparams, dequantize, quantize
from netchisel.quantize.ste import lsq_fake_quantize, lsq_grad_scale, ste_fake_quantize


def test_ste_gradient_is_identity_inside_the_range_and_zero_outside() -> None:
    spec = QuantSpec(bits=3)  # integers -4..3, scale 0.25: range [-1.0, 0.75]
    x = torch.tensor([[-1.3, -1.0, -0.6, 0.0, 0.1, 0.75, 0.8, 2.0]], requires_grad=True)
    scale, zero = torch.tensor([[0.25]]), torch.tensor([[0.0]])
    y = ste_fake_quantize(x, scale, zero, spec)
    upstream = torch.arange(1.0, 9.0).reshape(1, 8)
    (grad,) = torch.autograd.grad(y, x, upstream)
    inside = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    assert torch.equal(grad, upstream * inside)  # exact: no s * (1 / s) rounding
    assert torch.equal(y.detach(), dequantize(quantize(x, scale, zero, spec), scale, zero, spec))


def test_ste_forward_equals_primitives_with_zero_points_and_groups() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 32)
    spec = QuantSpec(bits=2, symmetric=False, granularity="group", group_size=8)
    scale, zero = choose_qparams(w, spec, "mse")
    expected = dequantize(quantize(w, scale, zero, spec), scale, zero, spec)
    assert torch.equal(ste_fake_quantize(w, scale, zero, spec), expected)
    assert torch.equal(lsq_fake_quantize(w, scale, zero, spec, 1.0), expected)


def test_lsq_step_gradient_matches_the_formula_on_a_hand_example() -> None:
    # x / s = 0.6, -3.4, 10 with 3-bit signed integers -4..3: the last one is clipped.
    spec = QuantSpec(bits=3)
    x = torch.tensor([[0.3, -1.7, 5.0]], requires_grad=True)
    step = torch.tensor([[0.5]], requires_grad=True)
    g = lsq_grad_scale(3, spec)
    assert g == pytest.approx(1 / 3)  # 1 / sqrt(N * Qp) = 1 / sqrt(3 * 3)
    y = lsq_fake_quantize(x, step, torch.zeros(1, 1), spec, g)
    assert y.tolist() == [[0.5, -1.5, 1.5]]
    grad_x, grad_step = torch.autograd.grad(y, (x, step), torch.tensor([[1.0, 2.0, 3.0]]))
    # d/ds: round(x/s) - x/s inside = 0.4 and 0.4; Qp = 3 above. (0.4 + 2 * 0.4 + 3 * 3) / 3
    assert float(grad_step) == pytest.approx(3.4, abs=1e-6)
    assert grad_x.tolist() == [[1.0, 2.0, 0.0]]
