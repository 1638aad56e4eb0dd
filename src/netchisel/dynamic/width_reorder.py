"""Reordering a slimmable chain's channels so the narrow widths keep the important ones.

`reorder_channels_` sorts each hidden layer's output channels by importance (the |scale| of the
BatchNorm after it, Liu et al. 2017 "Network Slimming", else the L1 norm of the channel's
weights), and the next layer's inputs to match; the full-width function is unchanged. It needs
a chain of `nn.Sequential`s: in a residual network an add couples the channels of every block
of a stage, which would have to be permuted together (not built; such models train their
widths from the channels' given order).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.width_slim import PER_CHANNEL, STAGE, SlimPlan, is_depthwise


def chain_steps(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The leaves of a chain of nested `nn.Sequential`s in the order they run (None: `model`
    is not such a chain).

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Conv1d(1, 2, 3)), nn.Flatten())
        >>> [path for path, _ in chain_steps(net)]
        ['0.0', '1']
    """
    if not isinstance(model, nn.Sequential):
        return None
    found: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module._modules.items():
            if child is None:
                continue
            if isinstance(child, nn.Sequential):
                walk(child, f"{prefix}{name}.")
            else:
                found.append((f"{prefix}{name}", child))

    walk(model, "")
    return found


def why_not_reorderable(model: nn.Module, plan: SlimPlan) -> str | None:
    """Why `reorder_channels_` cannot run on `model` (None: it can): only a chain of
    `nn.Sequential`s of the plan's layers (no depthwise conv), per-channel ops and Flatten,
    where each layer reads only the one before it.

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Softmax(-1), nn.Linear(3, 1))
        >>> why_not_reorderable(net, plan_width(net, [0.5, 1.0], torch.zeros(1, 2)))
        '1 (Softmax) mixes channels'
    """
    leaves = chain_steps(model)
    if leaves is None:
        return f"the model ({type(model).__name__}) is not a chain of nn.Sequential"
    steps = []
    for path, module in leaves:
        if path in plan.steps:
            if is_depthwise(module):
                return f"{path} is a depthwise conv"
            steps.append(path)
        elif isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                return f"{path} flattens dims {module.start_dim}..{module.end_dim}, not 1..-1"
        elif not isinstance(module, PER_CHANNEL):
            return f"{path} ({type(module).__name__}) mixes channels"
    if steps != plan.steps:
        return "the forward does not run its layers in the chain's order"
    return None


def _importance(weight: Tensor, norm: nn.Module | None) -> Tensor:
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.weight is not None:
        return norm.weight.detach().abs()
    return weight.detach().abs().flatten(1).sum(1)


def reorder_channels_(model: nn.Module, plan: SlimPlan) -> list[list[int]]:
    """Sort each hidden layer's output channels by importance, most important first, and
    permute what reads them to match (in place); returns each hidden layer's order. Only a
    chain (`why_not_reorderable` says why not, in one line).

    The full-width function is unchanged (up to float rounding of the reordered sums).

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0], [3, 0], [2, 0]]))
        >>> p = plan_width(net, [0.5, 1.0], torch.zeros(1, 2))
        >>> reorder_channels_(net, p)
        [[1, 2, 0]]
    """
    why = why_not_reorderable(model, plan)
    if why is not None:
        raise ConfigError(f"{STAGE}: cannot reorder channels: {why}; set reorder: false")
    modules = dict(model.named_modules())
    orders: list[list[int]] = []
    with torch.no_grad():
        for a, b in itertools.pairwise(plan.weights):
            layer = modules[plan.steps[a]]
            between = [modules[plan.steps[j]] for j in range(a + 1, b)]  # BatchNorms
            norm = between[0] if between else None
            order = torch.argsort(_importance(layer.weight, norm), descending=True, stable=True)
            orders.append(order.tolist())
            layer.weight.copy_(layer.weight[order])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[order])
            for m in between:
                for t in (m.weight, m.bias, m.running_mean, m.running_var):
                    if t is not None:
                        t.copy_(t[order])
            nxt = modules[plan.steps[b]]
            # A Flatten between them spreads each channel over `spatial` consecutive inputs.
            spatial = plan.channels_in[b][-1] // len(order)
            columns = (order[:, None] * spatial + torch.arange(spatial)).flatten()
            nxt.weight.copy_(nxt.weight[:, columns])
    return orders
