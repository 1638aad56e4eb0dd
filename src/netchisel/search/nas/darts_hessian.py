"""Second-order pieces of DARTS: the finite-difference Hessian-vector product of the unrolled
architecture gradient, its exact autograd counterpart, and the dominant Hessian eigenvalue.

Second-order DARTS (Liu et al. 2019, eq. 7-8) needs grad_alpha grad_w L_train(w, alpha) . v;
it approximates it by a central difference, (grad_alpha L_train(w+) - grad_alpha
L_train(w-)) / (2 eps) with w+- = w +- eps v and eps = 0.01 / ||v||, which costs two gradient
passes instead of a double backward through the network. The exact product is kept to check it.

Collapse tracking (Zela et al. ICLR 2020): the dominant eigenvalue of the validation loss's
Hessian with respect to alpha grows as DARTS heads for a sharp, skip-heavy solution; power
iteration on exact Hessian-vector products (double backward through alpha only) measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

LossAt = Callable[[], Tensor]
"""A closure: the loss at the parameters' current values (rebuilds the graph each call)."""


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def _norm(vectors: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(_dot(vectors, vectors))


def gradients(
    loss: Tensor, params: Sequence[nn.Parameter], create_graph: bool = False, retain: bool = False
) -> list[Tensor]:
    """d loss / d params, zeros for params the loss does not use.

    Example:
        >>> a, b = nn.Parameter(torch.tensor(2.0)), nn.Parameter(torch.tensor(1.0))
        >>> [float(g) for g in gradients(a * a, [a, b])]
        [4.0, 0.0]
    """
    grads = torch.autograd.grad(
        loss,
        list(params),
        create_graph=create_graph,
        retain_graph=retain or create_graph,
        allow_unused=True,
        materialize_grads=True,
    )
    return list(grads)


def finite_difference_hvp(
    loss_at: LossAt,
    weights: Sequence[nn.Parameter],
    alphas: Sequence[nn.Parameter],
    vector: Sequence[Tensor],
    r: float = 0.01,
) -> list[Tensor]:
    """grad_alpha grad_w L . v by a central difference with eps = r / ||v|| (DARTS eq. 8).

    The weights are moved in place and restored (to within float rounding) before returning.

    Example:
        >>> w, a = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
        >>> loss = lambda: (a * w * w).sum()  # grad_a grad_w L . v = 2 w . v
        >>> [round(float(h), 3) for h in finite_difference_hvp(loss, [w], [a], [torch.ones(2)])[0]]
        [6.0]
    """
    eps = r / float(_norm(vector))
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.add_(v, alpha=eps)
    plus = gradients(loss_at(), alphas)
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.sub_(v, alpha=2 * eps)
    minus = gradients(loss_at(), alphas)
    with torch.no_grad():
        for w, v in zip(weights, vector, strict=True):
            w.add_(v, alpha=eps)
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus, strict=True)]


def exact_hvp(
    loss: Tensor,
    weights: Sequence[nn.Parameter],
    alphas: Sequence[nn.Parameter],
    vector: Sequence[Tensor],
) -> list[Tensor]:
    """grad_alpha (grad_w L . v) by double backward: the product `finite_difference_hvp`
    approximates (and, with weights = alphas, a Hessian-vector product of alpha alone).

    Example:
        >>> w, a = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
        >>> exact_hvp((a * w * w).sum(), [w], [a], [torch.ones(2)])[0].tolist()
        [6.0]
    """
    grads = gradients(loss, weights, create_graph=True)
    return gradients(_dot(grads, vector), alphas)


def dominant_eigenvalue(
    loss: Tensor, alphas: Sequence[nn.Parameter], iterations: int = 20, seed: int = 0
) -> float:
    """The dominant eigenvalue of the Hessian of `loss` w.r.t. `alphas` (power iteration).

    Returns the Rayleigh quotient v.Hv of the last iterate (largest magnitude; its sign kept).

    Example:
        >>> a = nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> loss = 3 * a[0] ** 2 + 0.5 * a[1] ** 2  # Hessian diag(6, 1)
        >>> round(dominant_eigenvalue(loss, [a], iterations=30), 4)
        6.0
    """
    grads = gradients(loss, alphas, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(a.shape, generator=generator) for a in alphas]
    value = 0.0
    for _ in range(iterations):
        norm = _norm(v)
        v = [x / norm for x in v]
        dot = _dot(grads, v)
        # The first-order graph is kept for the next product.
        hv = gradients(dot, alphas, retain=True) if dot.requires_grad else [0 * x for x in v]
        value = float(_dot(hv, v))
        if float(_norm(hv)) == 0.0:
            return 0.0
        v = hv
    return value
