"""A conv/linear chain seen as a slimmable network: which channels each width keeps, per step.

Slimmable networks (Yu et al. 2018, "Slimmable Neural Networks") run the same weights at
several widths: width `w` keeps the first `round(w * C)` output channels of every hidden
conv/linear layer (a contiguous prefix, so the kept weights are the slice
`weight[:c_out, :c_in]` and the compute really shrinks) and has its own BatchNorm statistics.
The last weight layer keeps all its outputs (the classes).

What can be slimmed is a chain of nested `nn.Sequential`s (their forward is their children in
order, by definition) of Conv1d/Conv2d (groups 1), Linear on (N, features) inputs,
BatchNorm1d/2d, per-channel ops (activations, pooling, Dropout) and Flatten: the zoo's `cnn`,
`mnist1d_cnn` and `mlp`. Anything else is refused in one line naming the module. After a
Flatten of (N, C, *S) the first `c * prod(S)` features are exactly the first `c` channels
(channel-major order), so the Linear after it keeps a prefix of its inputs too.

`reorder_channels_` sorts each hidden layer's output channels by importance (the |scale| of the
BatchNorm after it, Liu et al. 2017 "Network Slimming", else the L1 norm of the channel's
weights), and the next layer's inputs to match, so the narrow widths start from the most
important channels; the full-width function is unchanged.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError, ModelError

STAGE = "dynamic.width"

# Modules that act on each channel alone (so on any prefix of channels): run as they are.
PER_CHANNEL = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Hardswish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
SUPPORTED = (
    "Conv1d/Conv2d (groups 1), Linear, BatchNorm1d/2d, activations, pooling, Dropout and "
    "Flatten in nested nn.Sequential chains"
)


@dataclass(frozen=True)
class SlimPlan:
    """The chain's steps (dotted paths, run in order), their kinds ("conv", "linear", "norm",
    "flatten", "pointwise") and, per step and width, the channels (dim 1) a step reads and
    writes: `channels_in[j][k]`, `channels_out[j][k]`."""

    steps: list[str]
    kinds: list[str]
    channels_in: list[list[int]]
    channels_out: list[list[int]]

    @property
    def weights(self) -> list[int]:
        """The indices of the conv/linear steps."""
        return [j for j, kind in enumerate(self.kinds) if kind in ("conv", "linear")]


def kept(width: float, channels: int) -> int:
    """The channels a width keeps: round(width * channels), at least 1 (halves round up).

    Example:
        >>> kept(0.25, 32), kept(0.5, 25), kept(0.01, 25)
        (8, 13, 1)
    """
    return max(1, math.floor(width * channels + 0.5))


def check_width(value: float, where: str) -> None:
    """A width is a fraction of each layer's channels, in (0, 1].

    Example:
        >>> check_width(1.5, "widths[2]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: dynamic.width: widths[2] = 1.5 is outside (0, 1]: ...
    """
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ConfigError(
            f"{STAGE}: {where} = {value} is outside (0, 1]: a width is the fraction of each "
            "hidden layer's channels kept, e.g. [0.25, 0.5, 1.0]"
        )


def chain_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaves of a chain of nested `nn.Sequential`s in the order they run.

    Example:
        >>> net = nn.Sequential(nn.Sequential(nn.Conv1d(1, 2, 3)), nn.Flatten())
        >>> [path for path, _ in chain_steps(net)]
        ['0.0', '1']
    """
    if not isinstance(model, nn.Sequential):
        raise ModelError(
            f"{STAGE}: cannot slim <root> ({type(model).__name__}): its forward is not a chain "
            f"of nn.Sequential; supported: {SUPPORTED}"
        )
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


def _kind(path: str, module: nn.Module, x: Tensor) -> str:
    def refuse(why: str) -> ModelError:
        return ModelError(
            f"{STAGE}: cannot slim {path} ({type(module).__name__}): {why}; supported: {SUPPORTED}"
        )

    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise refuse(f"groups={module.groups} ties its channels to its inputs'")
        return "conv"
    if isinstance(module, nn.Linear):
        if x.dim() != 2:
            raise refuse(f"its input is {tuple(x.shape)}: it mixes positions, not channels")
        return "linear"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not (module.affine and module.track_running_stats):
            raise refuse("a BatchNorm without affine or running statistics")
        return "norm"
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise refuse(f"flattens dims {module.start_dim}..{module.end_dim}, not 1..-1")
        return "flatten"
    if isinstance(module, PER_CHANNEL):
        return "pointwise"
    raise refuse("not a layer whose channels can be cut to a prefix")


def plan_width(model: nn.Module, widths: list[float], example: Tensor) -> SlimPlan:
    """The slimmable plan of `model` for `widths` (ascending, last 1.0), from one forward of
    `example` (it fixes the spatial size a Flatten multiplies the channels by).

    Example:
        >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(32, 3))
        >>> p = plan_width(net, [0.5, 1.0], torch.zeros(1, 1, 8))
        >>> p.kinds, p.channels_out[0], p.channels_in[3], p.channels_out[3]
        (['conv', 'pointwise', 'flatten', 'linear'], [2, 4], [16, 32], [3, 3])
    """
    steps = chain_steps(model)
    kinds: list[str] = []
    x = example[:1]
    shapes: list[tuple[int, ...]] = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for path, module in steps:
                kinds.append(_kind(path, module, x))
                shapes.append(tuple(x.shape))
                x = module(x)
    finally:
        model.train(was)
    weights = [j for j, kind in enumerate(kinds) if kind in ("conv", "linear")]
    if len(weights) < 2:
        raise ModelError(
            f"{STAGE}: cannot slim a model with {len(weights)} conv/linear layer(s): it needs a "
            "hidden layer (the last one keeps its outputs, the classes)"
        )
    k = len(widths)
    active = [shapes[0][1]] * k  # the input is never cut
    channels_in: list[list[int]] = []
    channels_out: list[list[int]] = []
    for j, ((_, module), kind) in enumerate(zip(steps, kinds, strict=True)):
        channels_in.append(list(active))
        if kind in ("conv", "linear"):
            out = int(tensor_of(module, "weight").shape[0])
            active = [kept(w, out) for w in widths] if j != weights[-1] else [out] * k
        elif kind == "flatten":
            spatial = math.prod(shapes[j][2:])
            active = [a * spatial for a in active]
        channels_out.append(list(active))
    return SlimPlan([p for p, _ in steps], kinds, channels_in, channels_out)


def tensor_of(module: nn.Module, name: str) -> Tensor:
    """A layer's parameter or buffer `name`, typed as the tensor it is."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return value


def _importance(weight: Tensor, norm: nn.Module | None) -> Tensor:
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.weight is not None:
        return norm.weight.detach().abs()
    return weight.detach().abs().flatten(1).sum(1)


def reorder_channels_(model: nn.Module, plan: SlimPlan) -> list[list[int]]:
    """Sort each hidden layer's output channels by importance, most important first, and
    permute what reads them to match (in place); returns each hidden layer's order.

    The full-width function is unchanged (up to float rounding of the reordered sums).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0], [3, 0], [2, 0]]))
        >>> p = plan_width(net, [1.0], torch.zeros(1, 2))
        >>> reorder_channels_(net, p)
        [[1, 2, 0]]
    """
    modules = dict(model.named_modules())
    layers = plan.weights
    orders: list[list[int]] = []
    with torch.no_grad():
        for a, b in itertools.pairwise(layers):
            layer = modules[plan.steps[a]]
            between = [modules[plan.steps[j]] for j in range(a + 1, b)]
            norm = next(
                (m for m in between if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))), None
            )
            order = torch.argsort(_importance(layer.weight, norm), descending=True, stable=True)
            orders.append(order.tolist())
            layer.weight.copy_(layer.weight[order])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[order])
            for m in between:
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    for t in (m.weight, m.bias, m.running_mean, m.running_var):
                        if t is not None:
                            t.copy_(t[order])
            nxt = modules[plan.steps[b]]
            # A Flatten between them spreads each channel over `spatial` consecutive inputs.
            spatial = plan.channels_in[b][-1] // len(order)
            columns = (order[:, None] * spatial + torch.arange(spatial)).flatten()
            nxt.weight.copy_(nxt.weight[:, columns])
    return orders


def slice_forward(module: nn.Module, kind: str, x: Tensor, c_in: int, c_out: int) -> Tensor:
    """A conv/linear step on its first `c_out` outputs from its first `c_in` inputs: the
    sliced weights, so the work is that of the narrow layer.

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> slice_forward(layer, "linear", torch.zeros(2, 2), 2, 3).shape
        torch.Size([2, 3])
    """
    weight = tensor_of(module, "weight")[:c_out, :c_in]
    bias = module.bias[:c_out] if isinstance(module.bias, Tensor) else None
    if kind == "linear":
        return nn.functional.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)  # type: ignore[operator,no-any-return]
