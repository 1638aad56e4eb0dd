"""Second-order DARTS: the finite-difference product against autograd, the power iteration
against the full Hessian's spectrum."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netchisel.search.nas.darts_hessian import (
    dominant_eigenvalue,
    exact_hvp,
    finite_difference_hvp,
    gradients,
)
from netchisel.search.nas.darts_ops import SearchNet

OPS = ("none", "sep3", "conv3", "max3", "skip")


def tiny(dtype: torch.dtype, nodes: int = 2) -> tuple[SearchNet, Tensor, Tensor]:
    torch.manual_seed(0)
    net = SearchNet(OPS, nodes=nodes, width=4, reductions=1, num_classes=3, dims=1).to(dtype)
    with torch.no_grad():  # alphas away from uniform, so every term of the product matters
        for alpha in net.arch_parameters():
            alpha.normal_()
    return net, torch.randn(16, 1, 12, dtype=dtype), torch.randint(0, 3, (16,))


def relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True))
    den = sum(float(y.pow(2).sum()) for y in b)
    return (num / den) ** 0.5


def test_finite_difference_matches_autograd_on_a_tiny_cell() -> None:
    net, x, y = tiny(torch.float64)
    weights, alphas = net.weight_parameters(), net.arch_parameters()

    def loss_at() -> Tensor:
        return nn.functional.cross_entropy(net(x), y)

    # the vector DARTS uses: a gradient in weight space
    vector = [g.detach() for g in gradients(loss_at(), weights)]
    before = [w.detach().clone() for w in weights]
    exact = exact_hvp(loss_at(), weights, alphas, vector)
    assert sum(float(h.abs().sum()) for h in exact) > 1e-2  # not a trivial zero product
    errors = {r: relative_error(finite_difference_hvp(loss_at, weights, alphas, vector, r), exact)
              for r in (1e-5, 1e-6)}  # fmt: skip
    restored = max(
        float((w.detach() - b).abs().max()) for w, b in zip(weights, before, strict=True)
    )
    assert restored < 1e-12
    # Central difference, O(r^2), while no ReLU or max-pool switches inside the step: on this
    # cell that holds below r = 1e-5 (at DARTS' r = 0.01 the step crosses kinks and the relative
    # error is about 1: see docs/nas_darts.md).
    assert errors[1e-5] < 1e-7
    assert errors[1e-6] < 1e-8


def test_power_iteration_finds_the_dominant_eigenvalue() -> None:
    net, x, y = tiny(torch.float64, nodes=1)  # 2 x 10 alphas: a 20 x 20 Hessian
    alphas = net.arch_parameters()
    shapes = [a.shape for a in alphas]
    flat0 = torch.cat([a.detach().flatten() for a in alphas])

    def loss_of(flat: Tensor) -> Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        normal, reduce = (p.view(s) for p, s in zip(parts, shapes, strict=True))
        saved = (net.alpha_normal, net.alpha_reduce)
        try:  # swap the parameters for tensors the Hessian can differentiate through
            del net.alpha_normal, net.alpha_reduce
            net.alpha_normal, net.alpha_reduce = normal, reduce  # type: ignore[assignment]
            return nn.functional.cross_entropy(net(x), y)
        finally:
            del net.alpha_normal, net.alpha_reduce
            net.alpha_normal, net.alpha_reduce = saved

    hessian = torch.autograd.functional.hessian(loss_of, flat0)
    spectrum = torch.linalg.eigvalsh(hessian)
    truth = float(spectrum[spectrum.abs().argmax()])
    found = dominant_eigenvalue(
        nn.functional.cross_entropy(net(x), y), alphas, iterations=100, seed=0
    )
    assert abs(found - truth) <= 1e-3 * abs(truth)
    assert abs(truth) > 1e-2  # a real curvature, here of negative sign (random alphas)
