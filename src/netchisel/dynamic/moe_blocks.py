"""Finding the feed-forward blocks a model's MoE stage may convert: Linear - activation - Linear.

A block qualifies when its children, without Dropout/Identity, are exactly two Linears (or
Hugging Face Conv1D, GPT-2's Linear stored transposed, read as the Linear it is) and a
parameter-free activation, in any registration order, and when its eval-mode output really is
`fc_out(act(fc_in(x)))` on a random input for one order of the two Linears (the structure
alone cannot tell a residual or gated block from a plain one, nor which Linear runs first).
`names` are module names (each must be such a block) or shell-style globs (`blocks.*.mlp`: the
blocks among the modules they match, at least one); "auto" takes every qualifying block.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from netchisel.core.conv1d import is_conv1d, linear_from_conv1d
from netchisel.core.errors import ConfigError
from netchisel.core.state import seeded

_PASSIVE = (nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class FeedForward:
    """A feed-forward block found in a model: its name, its two Linears, its activation and
    the dropout probability on its output (0 when it has none)."""

    name: str
    fc_in: nn.Linear
    act: nn.Module
    fc_out: nn.Linear
    dropout: float

    @property
    def hidden(self) -> int:
        """Its hidden width."""
        return self.fc_in.out_features


def _as_linear(module: nn.Module) -> nn.Linear | None:
    """`module` as a Linear: itself, a copy of a Hugging Face Conv1D (GPT-2), or None."""
    if isinstance(module, nn.Linear):
        return module
    return linear_from_conv1d(module) if is_conv1d(module) else None


def _parts(module: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Linear, float] | str:
    """The block's parts, or why it is not a Linear-activation-Linear block.

    The children are taken in any order (transformers registers GPT-J's, GPT-NeoX's or T5's
    two Linears before the activation): the forward probe decides which Linear comes first.
    """
    children = list(module.children())
    drops = [c for c in children if isinstance(c, nn.Dropout)]
    core = [c for c in children if not isinstance(c, _PASSIVE)]
    kinds = [type(c).__name__ for c in core]
    if len(core) != 3:
        return f"its children are {kinds or 'none'}"
    as_linear = [_as_linear(c) for c in core]
    linears = [lin for lin in as_linear if lin is not None]
    acts = [c for c, lin in zip(core, as_linear, strict=True) if lin is None]
    if len(linears) != 2 or len(acts) != 1:
        return f"its children are {kinds or 'none'}"
    act = acts[0]
    if any(True for _ in act.parameters()):
        return f"its middle child {type(act).__name__} has parameters"
    orders = [(a, b) for a, b in (linears, linears[::-1]) if a.out_features == b.in_features]
    if not orders:
        first, second = linears
        return f"its Linears do not chain ({first.out_features} -> {second.in_features})"
    if len(drops) > 1:
        return "it has more than one Dropout"
    whys = []
    for fc_in, fc_out in orders:
        why = _probe(module, fc_in, act, fc_out)
        if why is None:
            return fc_in, act, fc_out, float(drops[0].p) if drops else 0.0
        whys.append(why)
    return whys[0]  # why the registration order failed


def _probe(module: nn.Module, fc_in: nn.Linear, act: nn.Module, fc_out: nn.Linear) -> str | None:
    """None when `module`'s eval output on a random input is fc_out(act(fc_in(x))), else why."""
    x = seeded_input(fc_in.in_features, fc_in.weight)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            got = module(x)
            want = fc_out(act(fc_in(x)))
    except Exception as e:  # any failure means "not this kind of block"
        return f"calling it on a ({x.shape[0]}, {x.shape[1]}) input failed ({type(e).__name__})"
    finally:
        module.train(was_training)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return "its output is not fc_out(act(fc_in(x)))"
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return "its output is not fc_out(act(fc_in(x)))"
    return None


def seeded_input(width: int, like: torch.Tensor) -> torch.Tensor:
    """A fixed random (5, width) input on `like`'s device and dtype (the block check's probe)."""
    with seeded(0):
        return torch.randn(5, width).to(like.device, like.dtype)


def find_feed_forwards(model: nn.Module, names: tuple[str, ...], where: str) -> list[FeedForward]:
    """The blocks `names` select, in model order; one line naming the first that is not one.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 16), nn.GELU(),
        ...                     nn.Linear(16, 8)), nn.Linear(8, 2))
        >>> [f.name for f in find_feed_forwards(net, ("auto",), "dynamic.moe")]
        ['1']
        >>> find_feed_forwards(net, ("0",), "dynamic.moe")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: dynamic.moe: module '0' (Linear) is not a ...
    """
    modules = dict(model.named_modules())
    if not names:
        raise ConfigError(f"{where}: modules is empty: name the feed-forward blocks, or 'auto'")
    if tuple(names) == ("auto",):
        found: list[FeedForward] = []
        for name, module in modules.items():
            if name and not any(name.startswith(f.name + ".") for f in found):
                parts = _parts(module)
                if not isinstance(parts, str):
                    found.append(FeedForward(name, *parts))
        if not found:
            raise ConfigError(
                f"{where}: modules: auto found no Linear-activation-Linear block in the model; "
                "name the blocks to convert"
            )
        return found
    chosen: dict[str, FeedForward] = {}
    for pattern in names:
        if not any(c in pattern for c in "*?["):  # a plain name must be a block itself
            if pattern not in modules or not pattern:
                raise ConfigError(
                    f"{where}: modules: {pattern!r} names no module of the model "
                    f"(top-level: {', '.join(n for n, _ in model.named_children())})"
                )
            parts = _parts(modules[pattern])
            if isinstance(parts, str):
                raise ConfigError(
                    f"{where}: module {pattern!r} ({type(modules[pattern]).__name__}) is not a "
                    f"feed-forward block (Linear - activation - Linear): {parts}"
                )
            chosen[pattern] = FeedForward(pattern, *parts)
            continue
        hits = 0
        for name in (n for n in modules if n and fnmatch.fnmatchcase(n, pattern)):
            found_parts = _parts(modules[name])
            if not isinstance(found_parts, str):  # a glob keeps the blocks among its matches
                chosen[name] = FeedForward(name, *found_parts)
                hits += 1
        if not hits:
            raise ConfigError(
                f"{where}: modules: {pattern!r} matches no Linear-activation-Linear block "
                "of the model"
            )
    return [chosen[n] for n in modules if n in chosen]  # model order


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` is.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> replace_module(net, "0", nn.Identity())
        >>> type(net[0]).__name__
        'Identity'
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
