"""Moving a per-input-channel scale from a layer group's inputs into the op that produces them.

AWQ and SmoothQuant multiply the weights of the Linear layers that read one tensor x by a
per-input-channel factor s (W -> W diag(s)) and need x -> x / s so the float function is
unchanged. That division is free when it can be folded into the op that produced x:

- a LayerNorm (weight and bias divided by s) or an RMSNorm (weight divided by s) whose output
  is exactly x (the q/k/v projections after `ln_1`, an MLP's first layer after `ln_2`); torch's
  own classes, or any leaf module named like one (`LlamaRMSNorm`, `Qwen2RMSNorm`,
  `T5LayerNorm`: model libraries write their own) with a 1-D `weight` (`is_norm`);
- a Linear whose output channels reach x one to one through channel-wise linear (or positively
  homogeneous) ops: v_proj before o_proj (attention mixes tokens, not channels), a Linear
  before a ReLU. Its rows and bias are divided by s.

Which op that is, is found from one traced call (the op whose output tensor *is* the group's
input, else the last Linear or norm called before the group with the right width), and then
*checked* on real calibration data: a random positive scale is folded and the model's output
must stay the same (to 1e-3 of its magnitude); the model is then put back exactly. A candidate
that fails (a GELU in between, a LayerNorm whose output also feeds a residual, as in post-LN
BERT) is not used: the caller keeps the division as an `InputScale` module (one elementwise
multiply at run time) or gives up the scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from netchisel.calib import hooks

NORMS = (nn.LayerNorm, nn.RMSNorm)
CHECK_SAMPLES = 2
"""Calibration samples a fold is checked on (the model's output must not change)."""
FOLD_TOLERANCE = 1e-3
"""Largest change of the model's output, relative to its largest magnitude, a fold may make."""


class InputScale(nn.Module):
    """`module(x * scale)`: a per-input-channel scale that could not be folded elsewhere.

    Example:
        >>> layer = InputScale(nn.Identity(), 2)
        >>> layer.scale.copy_(torch.tensor([2.0, 0.5]))
        tensor([2.0000, 0.5000])
        >>> layer(torch.ones(1, 2))
        tensor([[2.0000, 0.5000]])
    """

    scale: Tensor

    def __init__(self, module: nn.Module, features: int) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("scale", torch.ones(features))

    @classmethod
    def around(cls, module: nn.Module, scale: Tensor | None) -> nn.Module:
        """`module` itself when `scale` is None, else `module` behind an InputScale of `scale`."""
        if scale is None:
            return module
        wrapper = cls(module, scale.numel()).to(scale.device)
        wrapper.scale.copy_(scale)
        return wrapper

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.module(x * self.scale.to(x.dtype))
        return out


def divide_outputs(producer: nn.Module, s: Tensor) -> None:
    """Divide the producer's output channels by `s` (a norm's affine, or a Linear's rows).

    Example:
        >>> ln = nn.LayerNorm(2)
        >>> divide_outputs(ln, torch.tensor([2.0, 4.0]))
        >>> ln.weight.tolist(), ln.bias.tolist()
        ([0.5, 0.25], [0.0, 0.0])
    """
    with torch.no_grad():
        weight = getattr(producer, "weight", None)
        bias = getattr(producer, "bias", None)
        if isinstance(weight, Tensor):
            shape = (-1, 1) if isinstance(producer, nn.Linear) else (-1,)
            weight.div_(s.to(weight.dtype).reshape(shape))
        if isinstance(bias, Tensor):
            bias.div_(s.to(bias.dtype))


def multiply_inputs(linear: nn.Linear, s: Tensor) -> None:
    """Multiply the Linear's input columns by `s` (W -> W diag(s))."""
    with torch.no_grad():
        linear.weight.mul_(s.to(linear.weight.dtype)[None, :])


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm or RMSNorm: torch's, or a leaf module whose class name ends in "Norm" and
    that has a 1-D `weight`. A look-alike whose weight does not scale its output (Gemma's
    `1 + weight`) is caught by the check every fold gets on real data.

    Example:
        >>> class LlamaRMSNorm(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.ones(4))
        >>> is_norm(LlamaRMSNorm()), is_norm(nn.LayerNorm(4)), is_norm(nn.Linear(4, 4))
        (True, True, False)
    """
    if isinstance(module, NORMS):
        return True
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("Norm")
        and isinstance(weight, Tensor)
        and weight.dim() == 1
        and next(module.children(), None) is None
    )


def can_fold(producer: nn.Module, width: int) -> bool:
    """Whether the op has per-output-channel parameters to divide (affine norm or Linear)."""
    if isinstance(producer, nn.Linear):
        return producer.out_features == width
    if is_norm(producer):
        weight = getattr(producer, "weight", None)
        return isinstance(weight, Tensor) and weight.shape == (width,)
    return False


def fold_targets(
    model: nn.Module,
    groups: list[list[str]],
    layers: dict[str, nn.Linear],
    check: tuple[Tensor, ...],
    allowed: Callable[[str, str], bool] | None = None,
) -> dict[str, str | None]:
    """For each group (keyed by its first layer), the module a scale folds into, or None.

    `check` are model inputs to test candidates on (a few calibration samples);
    `allowed(group_first_layer, producer_name)` can veto a candidate. The model is returned
    exactly as it was.

    Example:
        >>> net = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
        >>> groups = [["1"], ["3"]]
        >>> fold_targets(net, groups, {"1": net[1], "3": net[3]}, (torch.randn(8, 4),))
        {'1': '0', '3': None}
    """
    candidates = _candidates(model, groups, layers, check)
    names = {id(m): n for n, m in model.named_modules()}
    with torch.no_grad():
        before = _outputs(model(*check))  # the model is put back exactly after every try
    out: dict[str, str | None] = {}
    for group in groups:
        first = group[0]
        producer = candidates.get(first)
        name = None if producer is None else names[id(producer)]
        ok = producer is not None and name is not None and (allowed is None or allowed(first, name))
        if ok and producer is not None:
            ok = _fold_keeps_function(model, producer, [layers[n] for n in group], check, before)
        out[first] = name if ok else None
    return out


def _candidates(
    model: nn.Module,
    groups: list[list[str]],
    layers: dict[str, nn.Linear],
    check: tuple[Tensor, ...],
) -> dict[str, nn.Module]:
    """One traced call: the op each group's input came from (or the last plausible one)."""
    calls: list[tuple[nn.Module, Any]] = []  # (module, output) in call order
    reads: dict[str, tuple[int, Tensor]] = {}  # group's first layer -> (calls so far, input)
    firsts = {g[0] for g in groups}

    def on_output(module: nn.Module, args: Any, out: Any) -> None:
        calls.append((module, out))

    def on_input(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            reads.setdefault(name, (len(calls), args[0]))

        return hook

    producers = [m for m in model.modules() if isinstance(m, nn.Linear) or is_norm(m)]
    handles = [m.register_forward_hook(on_output) for m in producers]
    handles += [layers[n].register_forward_pre_hook(on_input(n)) for n in firsts]
    with torch.no_grad(), hooks(handles):
        model(*check)
    found: dict[str, nn.Module] = {}
    for first, (before, x) in reads.items():
        width = x.shape[-1]
        direct = [m for m, out in calls[:before] if out is x]
        if direct:
            if can_fold(direct[-1], width):
                found[first] = direct[-1]
            continue
        earlier = [m for m, _ in calls[:before] if can_fold(m, width)]
        if earlier:
            found[first] = earlier[-1]
    return found


def _fold_keeps_function(
    model: nn.Module,
    producer: nn.Module,
    consumers: list[nn.Linear],
    check: tuple[Tensor, ...],
    before: list[Tensor],
) -> bool:
    """Fold a random positive scale, compare the model's output, and put everything back."""
    width = consumers[0].in_features
    g = torch.Generator().manual_seed(0)
    device = consumers[0].weight.device
    s = torch.exp(torch.empty(width).uniform_(-1.0, 1.0, generator=g)).to(device)  # 0.37 - 2.7
    touched = [t for m in (producer, *consumers) for t in m.parameters(recurse=False)]
    saved = [t.detach().clone() for t in touched]
    try:
        with torch.no_grad():
            divide_outputs(producer, s)
            for layer in consumers:
                multiply_inputs(layer, s)
            after = _outputs(model(*check))
    finally:
        with torch.no_grad():
            for t, v in zip(touched, saved, strict=True):
                t.copy_(v)
    if len(before) != len(after):
        return False
    for a, b in zip(before, after, strict=True):
        scale = float(a.abs().max()) if a.numel() else 0.0
        if a.shape != b.shape or float((a - b).abs().max()) > FOLD_TOLERANCE * max(scale, 1e-6):
            return False
    return True


def _outputs(out: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(out)
    return [t.float() for t in leaves if isinstance(t, Tensor) and t.is_floating_point()]
