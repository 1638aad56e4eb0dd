"""Any model seen as a slimmable network: which channels each width keeps, per layer.

Slimmable networks (Yu et al. 2018, "Slimmable Neural Networks") run the same weights at
several widths: width `w` keeps the first `round(w * C)` output channels of every hidden
conv/linear layer (a contiguous prefix, so the kept weights are the slice
`weight[:c_out, :c_in]` and the compute really shrinks) and has its own BatchNorm statistics.
The last weight layer to run keeps all its outputs (the classes).

The plan is traced, not assumed: the model's own forward runs at each width with every
conv/linear/BatchNorm replaced by its sliced op (`installed`), and each layer reads as many
channels as reach it. So residual networks slim too: two layers whose outputs are added have
the same channel count, hence the same kept prefix, and the add stays aligned. A depthwise
conv keeps the channels it is given. What the trace then proves (`width_masking.check_prefixes`)
is that each width computes exactly the full model with the cut channels' weights zeroed:
a concatenation, a split or a channel shuffle moves channels out of the prefix and is
refused in one line, as is a layer whose weights are not conv/linear/BatchNorm (LayerNorm,
GroupNorm, a bare parameter) or a grouped conv.

Which channels come first is `width_reorder`'s business.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from netchisel.core.errors import ConfigError, ModelError, first_line

STAGE = "dynamic.width"

# Modules that act on each channel alone: a chain of them and the weight layers can be
# reordered (`width_reorder`).
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
KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d),
    "linear": (nn.Linear,),
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d),
}
"""The layers a plan slices, by kind."""
SUPPORTED = (
    "outputs of Conv1d/Conv2d (groups 1 or depthwise) and Linear layers cut to prefixes that "
    "every later module reads as prefixes (residual adds do; concatenations, splits, channel "
    "shuffles, LayerNorm and attention heads do not)"
)


@dataclass(frozen=True)
class SlimPlan:
    """The sliced layers (dotted paths, in the order the forward runs them), their kinds
    ("conv", "linear", "norm") and, per layer and width, the channels it reads and writes:
    `channels_in[j][k]`, `channels_out[j][k]` (a Linear's are its last dim, else dim 1)."""

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


def is_depthwise(module: nn.Module) -> bool:
    """A conv with one group per channel (its outputs are its inputs' channels)."""
    groups = getattr(module, "groups", 1)
    return bool(
        groups > 1
        and groups == getattr(module, "in_channels", 0) == getattr(module, "out_channels", 0)
    )


def _refuse(path: str, module: nn.Module, why: str) -> ModelError:
    return ModelError(
        f"{STAGE}: cannot slim {path or '<root>'} ({type(module).__name__}): {why}; "
        f"supported: {SUPPORTED}"
    )


def sliced_layers(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The conv/linear/BatchNorm layers of `model` by path, with their kinds (other modules,
    with parameters or not, run as they are: a cut that reaches one must leave it working).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.LayerNorm(4))
        >>> {path: kind for path, (_, kind) in sliced_layers(net).items()}
        {'0': 'linear'}
    """
    found: dict[str, tuple[nn.Module, str]] = {}
    for path, module in model.named_modules():
        kind = next((k for k, types in KINDS.items() if type(module) in types), None)
        if kind is None:
            continue
        if kind == "conv" and getattr(module, "groups", 1) != 1:
            if not is_depthwise(module):
                raise _refuse(
                    path,
                    module,
                    f"groups={getattr(module, 'groups', 1)} ties its "
                    "channels to its inputs' (only groups 1 or depthwise)",
                )
            if getattr(module, "padding_mode", "zeros") != "zeros":
                raise _refuse(path, module, "a depthwise conv with non-zero padding")
        if kind == "norm" and not (
            getattr(module, "affine", False) and getattr(module, "track_running_stats", False)
        ):
            raise _refuse(path, module, "a BatchNorm without affine or running statistics")
        found[path] = (module, kind)
    return found


@contextlib.contextmanager
def installed(forwards: list[tuple[nn.Module, Callable[[Tensor], Tensor]]]) -> Iterator[None]:
    """Run each module as its given function (an instance `forward`) inside the block: the
    model's own forward then calls the sliced ops; taken away afterwards, whatever happens.
    Not thread-safe: one width runs at a time per model.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with installed([(layer, lambda x: x * 0)]):
        ...     layer(torch.ones(1, 2)).tolist()
        [[0.0, 0.0]]
    """
    try:
        for module, fn in forwards:
            module.__dict__["forward"] = fn
        yield
    finally:
        for module, _ in forwards:
            module.__dict__.pop("forward", None)


def tensor_of(module: nn.Module, name: str) -> Tensor:
    """A layer's parameter or buffer `name`, typed as the tensor it is."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return value


def slice_forward(module: nn.Module, kind: str, x: Tensor, c_in: int, c_out: int) -> Tensor:
    """A conv/linear layer on its first `c_out` outputs from its first `c_in` inputs: the
    sliced weights, so the work is that of the narrow layer (a depthwise conv: `c_out`
    groups of one channel).

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> slice_forward(layer, "linear", torch.zeros(2, 2), 2, 3).shape
        torch.Size([2, 3])
        >>> dw = nn.Conv1d(4, 4, 3, groups=4)
        >>> slice_forward(dw, "conv", torch.zeros(1, 2, 5), 2, 2).shape
        torch.Size([1, 2, 3])
    """
    bias = module.bias[:c_out] if isinstance(module.bias, Tensor) else None
    if kind == "linear":
        return nn.functional.linear(x, tensor_of(module, "weight")[:c_out, :c_in], bias)
    if is_depthwise(module):
        conv: Any = nn.functional.conv1d if x.dim() == 3 else nn.functional.conv2d
        weight = tensor_of(module, "weight")[:c_out]
        stride, padding, dilation = module.stride, module.padding, module.dilation
        return conv(x, weight, bias, stride, padding, dilation, c_out)  # type: ignore[no-any-return]
    weight = tensor_of(module, "weight")[:c_out, :c_in]
    return module._conv_forward(x, weight, bias)  # type: ignore[operator,no-any-return]


def output_tensors(out: Any) -> list[Tensor]:
    """The tensors of a model's output (a tensor, a tuple, a Hugging Face ModelOutput)."""
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]


def _call_order(model: nn.Module, layers: dict[str, tuple[nn.Module, str]], x: Tensor) -> list[str]:
    """The sliced layers in the order one forward of `x` runs them (each at most once)."""
    order: list[str] = []
    names = {id(module): path for path, (module, _) in layers.items()}
    handles = [
        module.register_forward_pre_hook(lambda m, _: order.append(names[id(m)]))
        for module, _ in layers.values()
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    for path in order:
        if order.count(path) > 1:
            module = layers[path][0]
            raise _refuse(path, module, "it runs more than once per forward (shared weights)")
    return order


def cuttable(model: nn.Module, example: Tensor) -> list[str]:
    """The conv/linear layers whose outputs a width may cut, in the order one forward of
    `example` runs them: all but the depthwise convs and the last layer (the classes).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> cuttable(net, torch.zeros(1, 2))
        ['0', '2']
    """
    layers = sliced_layers(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            order = _call_order(model, layers, example[:1])
    finally:
        for module, mode in modes:
            module.training = mode
    weights = [p for p in order if layers[p][1] != "norm"]
    return [p for p in weights[:-1] if not is_depthwise(layers[p][0])]


def plan_width(
    model: nn.Module, widths: list[float], example: Tensor, keep: frozenset[str] = frozenset()
) -> SlimPlan:
    """The slimmable plan of `model` for `widths` (ascending, last 1.0), traced by running the
    model's own forward on `example` at each width (eval mode, no grad, nothing changed). The
    conv/linear layers in `keep` keep all their outputs; a conv/linear layer that reads and
    writes all its channels at every width is left out of the plan (it runs as it is).

    Example:
        >>> net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(32, 3))
        >>> p = plan_width(net, [0.5, 1.0], torch.zeros(1, 1, 8))
        >>> p.steps, p.kinds, p.channels_out[0], p.channels_in[1], p.channels_out[1]
        (['0', '3'], ['conv', 'linear'], [2, 4], [16, 32], [3, 3])
    """
    layers = sliced_layers(model)
    x = example[:1]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            order = _call_order(model, layers, x)
            weights = [p for p in order if layers[p][1] != "norm"]
            if len(weights) < 2:
                raise ModelError(
                    f"{STAGE}: cannot slim a model with {len(weights)} conv/linear layer(s) "
                    "run: it needs a hidden layer (the last one keeps its outputs, the classes)"
                )
            full = [tuple(t.shape) for t in output_tensors(model(x))]
            head = weights[-1]
            counts = [_trace(model, layers, order, keep | {head}, w, x, full) for w in widths]
    finally:
        for module, mode in modes:
            module.training = mode
    whole = {p: full_channels(layers[p][0], layers[p][1]) for p in order}
    used = [p for p in order if layers[p][1] == "norm" or any(c[p] != whole[p] for c in counts)]
    return SlimPlan(
        used,
        [layers[p][1] for p in used],
        [[c[p][0] for c in counts] for p in used],
        [[c[p][1] for c in counts] for p in used],
    )


def full_channels(module: nn.Module, kind: str) -> tuple[int, int]:
    """A layer's input and output channels at full width (a BatchNorm's: its features)."""
    if kind == "norm":  # no weight needed: a loaded manifest may hold a non-affine one
        features = int(getattr(module, "num_features", 0))
        return features, features
    weight = tensor_of(module, "weight")
    if is_depthwise(module):
        return int(weight.shape[0]), int(weight.shape[0])
    return int(weight.shape[1]), int(weight.shape[0])


def _trace(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, str]],
    order: list[str],
    whole: frozenset[str],
    width: float,
    x: Tensor,
    full: list[tuple[int, ...]],
) -> dict[str, tuple[int, int]]:
    """Each layer's (channels in, channels out) when the model runs at `width`."""
    seen: dict[str, tuple[int, int]] = {}

    def step(path: str) -> Callable[[Tensor], Tensor]:
        module, kind = layers[path]

        def run(t: Tensor) -> Tensor:
            c_in = int(t.shape[-1] if kind == "linear" else t.shape[1])
            if kind == "norm":
                seen[path] = (c_in, c_in)
                mean, var, weight, bias = (
                    tensor_of(module, n)[:c_in]
                    for n in ("running_mean", "running_var", "weight", "bias")
                )
                eps = float(module.eps)  # type: ignore[arg-type]
                return nn.functional.batch_norm(t, mean, var, weight, bias, False, 0.0, eps)
            out = int(tensor_of(module, "weight").shape[0])
            c_out = c_in if is_depthwise(module) else out if path in whole else kept(width, out)
            seen[path] = (c_in, c_out)
            return slice_forward(module, kind, t, c_in, c_out)

        return run

    running: list[str] = []  # the modules entered and not yet left: the last one failed
    names = {id(m): (p or "<root>") for p, m in model.named_modules()}

    def enter(m: nn.Module, _: Any) -> None:
        running.append(names[id(m)])

    def leave(*_: Any) -> None:
        running.pop()

    hooks = [
        h
        for m in model.modules()
        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    try:
        with installed([(layers[p][0], step(p)) for p in order]):
            out = [tuple(t.shape) for t in output_tensors(model(x))]
    except Exception as e:
        where = running[-1] if running else "<root>"
        module = model.get_submodule("" if where == "<root>" else where)
        raise ModelError(
            f"{STAGE}: at width {width:g} {where} ({type(module).__name__}) fails on the cut "
            f"channels: {first_line(e)}; supported: {SUPPORTED}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    if set(seen) != set(order):
        missed = sorted(set(order) - set(seen))
        raise ModelError(
            f"{STAGE}: at width {width:g} the model skips {missed}: its path depends on the "
            f"channels; supported: {SUPPORTED}"
        )
    if out != full:
        raise ModelError(
            f"{STAGE}: at width {width:g} the model's outputs are {out}, not {full}: a path "
            f"reaches the output without passing a layer kept whole; supported: {SUPPORTED}"
        )
    return seen
