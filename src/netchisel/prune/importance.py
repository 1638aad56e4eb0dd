"""Importance criteria: a score per weight element, higher meaning more important.

A criterion is a plain function `(weight, stats) -> scores` of the weight's shape, so it is
independent of granularity (elements, N:M groups, channels, heads: their scores are sums of
element scores) and of schedule (one-shot, iterative, gradual). Criteria that need data say so
in `NEEDS`, and `collect_stats` measures it through the Task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.task import Task


@dataclass
class LayerStats:
    """What one layer saw on data: Taylor saliency and input-feature energy."""

    taylor: Tensor | None = None  # sum over batches of |w * dL/dw|, weight-shaped
    input_sq: Tensor | None = None  # per input feature (Linear) or channel (Conv): sum of x^2
    samples: int = 0


Criterion = Callable[[Tensor, LayerStats], Tensor]


def l1(weight: Tensor, stats: LayerStats) -> Tensor:
    """|w|: magnitude pruning (Han et al. 2015)."""
    return weight.detach().abs()


def l2(weight: Tensor, stats: LayerStats) -> Tensor:
    """w^2: summed over a group it ranks groups by their L2 norm."""
    return weight.detach().pow(2)


def taylor(weight: Tensor, stats: LayerStats) -> Tensor:
    """|w * dL/dw| accumulated over batches: first-order Taylor (Molchanov et al. 2019)."""
    if stats.taylor is None:
        raise ConfigError("the taylor criterion needs gradients: give the stage a task with data")
    return stats.taylor


def random(weight: Tensor, stats: LayerStats) -> Tensor:
    """Uniform random scores (seeded by the caller): the control every criterion must beat."""
    return torch.rand(weight.shape, device=weight.device)


def wanda(weight: Tensor, stats: LayerStats) -> Tensor:
    """|W_ij| * ||X_j||: weight times the norm of its input feature (Sun et al. 2023)."""
    if stats.input_sq is None:
        raise ConfigError("the wanda criterion needs calibration activations: give it a task")
    norm = stats.input_sq.sqrt()
    out_channels, per_group = weight.shape[0], weight.shape[1]
    groups = norm.numel() // per_group
    # A grouped conv's output channel c reads input channels of group c // (out / groups) only.
    norm = norm.reshape(groups, 1, per_group).expand(groups, out_channels // groups, per_group)
    shape = [out_channels, per_group] + [1] * (weight.dim() - 2)
    return weight.detach().abs() * norm.reshape(shape)


CRITERIA: dict[str, Criterion] = {
    "l1": l1,
    "l2": l2,
    "taylor": taylor,
    "random": random,
    "wanda": wanda,
}
NEEDS: dict[str, str] = {"taylor": "gradients", "wanda": "activations"}


def get_criterion(name: str) -> Criterion:
    """The criterion called `name`, or a ConfigError listing them."""
    if name not in CRITERIA:
        raise ConfigError(f"unknown importance {name!r} (known: {', '.join(CRITERIA)})")
    return CRITERIA[name]


def collect_stats(
    model: nn.Module,
    layers: dict[str, nn.Module],
    task: Task | None,
    need: str | None,
    samples: int = 128,
) -> dict[str, LayerStats]:
    """Measure what a criterion needs on `samples` training samples of the task.

    `need` is None (nothing), "gradients" (Taylor: forward and backward with the task's loss)
    or "activations" (Wanda: forward hooks summing x^2 per input feature). The model's
    weights and gradients are left as they were.

    Example:
        >>> stats = collect_stats(nn.Linear(2, 2), {"": nn.Linear(2, 2)}, None, None)
        >>> stats[""].samples
        0
    """
    stats = {name: LayerStats() for name in layers}
    if need is None:
        return stats
    if task is None:
        raise ConfigError(f"this importance criterion needs {need}: give the stage a task")
    batches = task.calibration_batches(samples)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    saved = {n: p.grad for n, p in model.named_parameters()}
    model.eval()
    handles = []
    try:
        if need == "activations":
            for name, layer in layers.items():
                handles.append(layer.register_forward_pre_hook(_input_energy(stats[name])))
            with torch.no_grad():
                for batch in batches:
                    model(*task.inputs_of(tuple(t.to(device) for t in batch)))
        else:
            for batch in batches:
                model.zero_grad(set_to_none=True)
                task.loss(model, tuple(t.to(device) for t in batch)).backward()
                for name, layer in layers.items():
                    weight = layer.get_parameter("weight")
                    if weight.grad is not None:
                        term = (weight.detach() * weight.grad).abs()
                        prev = stats[name].taylor
                        stats[name].taylor = term if prev is None else prev + term
    finally:
        for handle in handles:
            handle.remove()
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was_training)
    total = sum(len(b[0]) for b in batches)
    for s in stats.values():
        s.samples = total
    return stats


def _input_energy(stats: LayerStats) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach().float()
        # Input features are the last dim of a Linear's input and dim 1 (channels) of a Conv's.
        feature = 1 if isinstance(module, nn.modules.conv._ConvNd) else x.dim() - 1
        dims = [d for d in range(x.dim()) if d != feature]
        energy = x.pow(2).sum(dim=dims)
        stats.input_sq = energy if stats.input_sq is None else stats.input_sq + energy

    return hook
