"""Zero-cost proxies: score an untrained network on one minibatch, in milliseconds.

A proxy is a number computed at initialisation that is meant to rank architectures the way
their trained accuracy would, so many candidates can be screened before any is trained.
Independent studies (Ning et al. 2021, "Evaluating Efficient Performance Estimators of Neural
Architectures"; White et al. 2022, "A Deeper Look at Zero-Cost Proxies") found that none beats
the parameter count reliably, so `params` and `flops` are here as baselines and
`bench/nas_zero_cost.py` measures every proxy against them on the 288-architecture table.

Written by hand: no maintained library computes these on any `nn.Module` (the reference code of
each paper is tied to its own search space). Every proxy runs on a deep copy of the model under
a forked, seeded RNG, so `proxy_score` never changes the model (weights, batch-norm statistics,
gradients, train/eval mode) or the global RNG, and the same seed gives the same score.
Higher is better for every proxy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from netchisel.core.errors import ConfigError
from netchisel.measure.flops import count_flops
from netchisel.measure.size import count_params

LossFn = Callable[[Tensor, Tensor], Tensor]
ProxyFn = Callable[[nn.Module, Tensor, Tensor, LossFn], float]
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
"""The modules whose on/off pattern `naswot` reads (functional relus are invisible to it)."""
ZEN_MIXUP = 0.01  # Zen-NAS's perturbation scale alpha (Lin et al. 2021, Algorithm 1)
JACOB_EPS = 1e-5  # Mellor et al. 2020 (v1): k added to the correlation eigenvalues


def proxy_score(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    proxy: str,
    *,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> float:
    """Score `model` (untrained) with one zero-cost proxy on one minibatch; higher is better.

    The model is not changed (the proxy runs on a copy) and the global RNG is left as it was;
    `seed` seeds what is random inside a proxy (Zen-NAS's Gaussian inputs, dropout).

    Args:
        model: any module taking `inputs` (1-D or 2-D convolutions, MLPs, ...).
        inputs, targets: one minibatch; `targets` feed `loss_fn` (cross-entropy by default)
            for the gradient proxies.
        proxy: a name in `PROXIES`.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(-1.0), net[1].weight.fill_(2.0)
        >>> round(math.exp(proxy_score(net, torch.zeros(4, 2), torch.zeros(4), "synflow")), 6)
        24.0
        >>> proxy_score(net, torch.zeros(4, 2), torch.zeros(4), "params")
        9.0
    """
    fn = PROXIES.get(proxy)
    if fn is None:
        raise ConfigError(f"unknown proxy {proxy!r} (known: {', '.join(PROXIES)})")
    if inputs.shape[0] != targets.shape[0]:
        raise ConfigError(
            f"proxy {proxy}: {inputs.shape[0]} inputs but {targets.shape[0]} targets; "
            "pass one target per input"
        )
    work = copy.deepcopy(model)
    for param in work.parameters():
        param.grad = None
    device = next((p.device for p in work.parameters()), inputs.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(fn(work, inputs.to(device), targets.to(device), loss_fn or F.cross_entropy))


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the pruning-at-init proxies sum over: weights of rank >= 2 (conv, linear,
    embedding), as Abdelfattah et al. 2021 sum over conv and linear layers; biases and norms
    left out."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    if not weights:
        raise ConfigError("the model has no weight of rank >= 2 (conv or linear) to score")
    return weights


def _loss_grads(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn
) -> list[nn.Parameter]:
    """The weights (`_weights`), with the gradient of one training-mode loss on the batch."""
    weights = _weights(model)
    model.train()  # batch statistics, as a first training step would see them
    model.zero_grad(set_to_none=True)
    loss_fn(model(inputs), targets).backward()
    return weights


def synflow(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """log of sum |w * dR/dw|, R the summed output of the |weights| network on an all-ones
    input, in float64 with batch norm removed (Tanaka et al. 2020; Abdelfattah et al. 2021)."""
    _remove_batchnorm(model)
    model.double().eval()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad(set_to_none=True)
    ones = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    model(ones).sum().backward()
    total = sum(
        float((w.detach() * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None
    )
    return math.log(total) if total > 0 else -math.inf


def _remove_batchnorm(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(module, name, nn.Identity())


def grad_norm(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """Sum over weight tensors of the L2 norm of the loss gradient (Abdelfattah et al. 2021)."""
    weights = _loss_grads(model, inputs, targets, loss_fn)
    return sum(float(w.grad.norm()) for w in weights if w.grad is not None)


def snip(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """Sum of |w * dL/dw| over the weights: SNIP's connection sensitivity (Lee et al. 2019)."""
    weights = _loss_grads(model, inputs, targets, loss_fn)
    return sum(float((w.detach() * w.grad).abs().sum()) for w in weights if w.grad is not None)


def naswot(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """log|K| of the Hamming-similarity kernel of the samples' binary ReLU codes, model in
    train mode (Mellor et al. 2021): K[i, j] = units on which samples i and j agree."""
    n = inputs.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def record(module: nn.Module, args: object, out: Tensor) -> None:
        code = (out.detach() > 0).reshape(n, -1).to(torch.float64).cpu()
        kernel.add_(code @ code.T + (1 - code) @ (1 - code).T)

    handles = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, ACTIVATIONS)
    ]
    if not handles:
        raise ConfigError(
            "naswot reads nn.ReLU/ReLU6/LeakyReLU modules and the model has none "
            "(functional relus are invisible): use another proxy"
        )
    model.train()
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


def jacob_cov(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """-sum(log(v + k) + 1/(v + k)) over the eigenvalues v of the correlation matrix of the
    per-sample input Jacobians (of the summed output), k = 1e-5 (Mellor et al. 2020, v1)."""
    if inputs.shape[0] < 2:
        raise ConfigError(
            f"proxy jacob_cov correlates the samples' Jacobians: it needs a batch of at least 2, "
            f"got {inputs.shape[0]}"
        )
    model.train()
    x = inputs.detach().clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None
    jacobian = x.grad.reshape(x.shape[0], -1).to(torch.float64)
    # a sample whose Jacobian is constant has no correlation: count it as uncorrelated (0)
    corr = torch.nan_to_num(torch.corrcoef(jacobian), nan=0.0)
    values = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(values + JACOB_EPS) + 1 / (values + JACOB_EPS)).sum())


def zen(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """Zen-score (Lin et al. 2021): log E|f(x) - f(x + 0.01 e)| of the pre-pooling features,
    x and e Gaussian, weights re-drawn from N(0, 1), plus sum over batch norms of
    log sqrt(mean batch variance) (the BN-variance correction)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    x = torch.randn_like(inputs, dtype=torch.float32)
    noisy = x + ZEN_MIXUP * torch.randn_like(x)
    model.train()
    log_sigma: list[float] = []

    def bn_std(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        dims = [d for d in range(args[0].dim()) if d != 1]
        log_sigma.append(0.5 * math.log(float(args[0].var(dim=dims, unbiased=False).mean())))

    # the BN statistics are those of the clean batch (Zen-NAS reads them after that forward)
    handles = [
        m.register_forward_pre_hook(bn_std) for m in model.modules() if isinstance(m, _BatchNorm)
    ]
    try:
        with torch.no_grad():
            clean = _pre_pool_features(model, x)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        perturbed = _pre_pool_features(model, noisy)
    delta = (clean - perturbed).abs().reshape(clean.shape[0], -1).sum(dim=1).mean()
    return math.log(float(delta)) + sum(log_sigma)


def _pre_pool_features(model: nn.Module, x: Tensor) -> Tensor:
    """The input of the last global pooling (`nn.AdaptiveAvgPool{1,2,3}d`) the forward runs,
    else the input of the last `nn.Linear` (the classifier's features)."""
    seen: dict[str, Tensor] = {}

    def keep(kind: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            seen[kind] = args[0]

        return hook

    pools = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    handles = [
        m.register_forward_pre_hook(keep("pool" if isinstance(m, pools) else "linear"))
        for m in model.modules()
        if isinstance(m, (*pools, nn.Linear))
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    features = seen.get("pool", seen.get("linear"))
    if features is None:
        raise ConfigError(
            "zen needs the features before global pooling: the model runs no "
            "nn.AdaptiveAvgPool or nn.Linear layer; use another proxy"
        )
    return features


def params(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """The parameter count (`netchisel.measure`; tied parameters once): a baseline."""
    return float(count_params(model)[0])


def flops(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> float:
    """Exact FLOPs of one sample's forward (`netchisel.measure.count_flops`): a baseline."""
    return float(count_flops(model, inputs[:1]).flops)


PROXIES: dict[str, ProxyFn] = {
    "synflow": synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
    "snip": snip,
    "jacob_cov": jacob_cov,
    "zen": zen,
    "params": params,
    "flops": flops,
}
"""Proxy name -> function(model, inputs, targets, loss_fn) -> score. The functions change the
model they are given; call them through `proxy_score`, which passes a copy."""
