"""The order a model calls its layers in, and the transformer blocks it runs one after another.

A layer-by-layer solver needs both before it changes anything: layers are solved in call
order (consecutive layers reading one tensor, such as q, k and v, form a group that shares one
calibration pass), and for a transformer the blocks can run one at a time over cached inputs
instead of the whole model per group. Both are read from one traced forward with hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError


@contextmanager
def hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Remove the given hooks on exit, whatever happens inside.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> with hooks([net.register_forward_hook(lambda m, a, o: None)]):
        ...     len(net._forward_hooks)
        1
        >>> len(net._forward_hooks)
        0
    """
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def call_groups(
    model: nn.Module, layers: Mapping[str, nn.Module], example: tuple[Tensor, ...], stage: str
) -> list[list[str]]:
    """Layers in the order of their first call; consecutive layers reading one tensor group.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> call_groups(net, {"1": net[1], "0": net[0]}, (torch.zeros(1, 2),), "demo")
        [['0'], ['1']]
    """
    return trace_calls(model, layers, example, stage)[0]


def trace_calls(
    model: nn.Module, layers: Mapping[str, nn.Module], example: tuple[Tensor, ...], stage: str
) -> tuple[list[list[str]], dict[str, int]]:
    """`call_groups`, and how many times each layer is called in one forward."""
    seen: list[tuple[str, bool]] = []  # first calls: name, reads the tensor the one before read
    calls: dict[str, int] = {}
    # Only the latest first call's input is held (to compare identity with the next): holding
    # every layer's input would keep the whole forward's activations (0.17 GiB on a 24-layer
    # 200 M-parameter Llama, more than two layers' calibration working set).
    last: list[Tensor] = []

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                seen.append((name, bool(last) and args[0] is last[0]))
                last[:] = [args[0]]

        return hook

    with (
        torch.no_grad(),
        hooks([m.register_forward_pre_hook(record(n)) for n, m in layers.items()]),
    ):
        model(*example)
    missing = [n for n in layers if all(n != s for s, _ in seen)]
    if missing:
        raise ConfigError(f"{stage}: layer {missing[0]} is never called by the model: exclude it")
    groups: list[list[str]] = []
    last.clear()
    for name, same_input in seen:
        if same_input:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups, calls


def find_blocks(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    blocks: str | None,
    example: tuple[Tensor, ...],
    stage: str,
) -> list[nn.Module] | None:
    """The blocks to run one at a time, or None to run whole-model passes.

    `blocks` names an `nn.ModuleList` or `nn.Sequential`; None finds the ModuleList holding the
    most chosen layers (when its blocks form a chain); "" means whole-model passes.

    Example:
        >>> net = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)]))
        >>> find_blocks(net, {"0.0": net[0][0]}, "", (torch.zeros(1, 2),), "demo") is None
        True
    """
    if blocks == "":
        return None
    if blocks is not None:
        try:
            found = model.get_submodule(blocks)
        except AttributeError:
            raise ConfigError(f"{stage}.blocks: the model has no module {blocks!r}") from None
        if not isinstance(found, (nn.ModuleList, nn.Sequential)):
            raise ConfigError(
                f"{stage}.blocks: {blocks!r} is a {type(found).__name__}, not a "
                "ModuleList or Sequential of blocks"
            )
        chain = list(found)
        if not _is_chain(model, chain, example):
            raise ConfigError(
                f"{stage}.blocks: the blocks of {blocks!r} are not called one after "
                "the other, each on the previous one's output: use blocks: '' (whole model)"
            )
        return chain
    owned = {id(m) for m in layers.values()}
    best: list[nn.Module] = []
    best_count = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            count = sum(1 for child in module for sub in child.modules() if id(sub) in owned)
            if count > best_count:
                best, best_count = list(module), count
    if best_count == 0 or not _is_chain(model, best, example):
        return None
    return best


def _is_chain(model: nn.Module, blocks: list[nn.Module], example: tuple[Tensor, ...]) -> bool:
    """Whether the blocks run once each, in order, each on the previous block's output."""
    calls: list[tuple[int, bool]] = []  # block index, reads the previous call's output
    previous: list[Any] = []  # only the latest output is held, not every block's activations

    def record(index: int) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            chained = bool(previous) and hidden_of(args, kwargs) is previous[0]
            calls.append((index, chained))
            previous[:] = [first_output(out)]

        return hook

    handles = [b.register_forward_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with torch.no_grad(), hooks(handles):
        model(*example)
    previous.clear()
    if [i for i, _ in calls] != list(range(len(blocks))):
        return False
    return all(chained for _, chained in calls[1:])


def hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The hidden state a block is called with (first argument, or Hugging Face's keyword)."""
    return args[0] if args else kwargs.get("hidden_states")


def first_output(out: Any) -> Any:
    """A block's hidden-state output: Hugging Face blocks return a tuple that starts with it."""
    return out[0] if isinstance(out, (tuple, list)) else out
