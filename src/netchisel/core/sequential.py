"""Layer-sequential calibration: hand each Linear layer's input statistics to a solver.

Calibration methods for language models (SparseGPT, GPTQ, AWQ) change one layer at a time so
that each layer is solved on the outputs of the layers before it *as they already are after
the change*, not on the original model's. `run_sequentially` does that for any `nn.Module`:

- Layers are visited in the order the model calls them. Consecutive layers that read the same
  input tensor (q, k and v projections) form a group that shares one calibration pass.
- For a transformer the model's blocks (the `nn.ModuleList` that holds the chosen layers) run
  one at a time over cached block inputs, as the SparseGPT and GPTQ papers do: a layer costs
  one pass through its own block, not through the whole model. Layers outside the blocks (a
  classifier, an LM head) are visited last with passes through the whole model.
- The solver of a group gets, per layer, the Gram matrix X^T X of its inputs (one row per
  token), the token count and per-feature sums of |x| and maxima of |x|, and may change the
  layer's weights (or the ops before it) before the next group is measured.

Shared by `prune.sparsegpt`, `quantize.gptq` and `quantize.awq`. Written here because no
well-kept library runs this over any `nn.Module`: the papers' code and llm-compressor's
pipelines are tied to Hugging Face model classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task

Inputs = Sequence[tuple[Tensor, ...]]
Cached = list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of a block's calls


@dataclass
class LayerInputs:
    """What a layer read during one calibration pass (all float32, on the layer's device).

    - `gram`: X^T X, (in, in), summed over tokens (None when not asked for).
    - `tokens`: how many rows X has (tokens, or samples for a 2-D input).
    - `abs_sum` / `abs_max`: per input feature, the sum and the maximum of |x|.
    """

    gram: Tensor | None
    tokens: int
    abs_sum: Tensor
    abs_max: Tensor

    @property
    def abs_mean(self) -> Tensor:
        """Mean |x| per input feature (AWQ's activation magnitude)."""
        return self.abs_sum / max(self.tokens, 1)

    def add(self, x: Tensor, with_gram: bool) -> None:
        """Accumulate a batch `x` of shape (rows, in)."""
        if with_gram:
            gram = x.T @ x
            self.gram = gram if self.gram is None else self.gram + gram
        self.tokens += len(x)
        magnitude = x.abs()
        self.abs_sum += magnitude.sum(0)
        self.abs_max = torch.maximum(self.abs_max, magnitude.amax(0))


GroupSolver = Callable[[dict[str, LayerInputs]], None]
"""Called once per group of layers reading one tensor, with each layer's inputs, in order."""


def calibration_inputs(
    task: Task, samples: int, device: torch.device, stage: str
) -> list[tuple[Tensor, ...]]:
    """The model inputs of the task's first `samples` shuffled train samples, in batches.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.zeros(10, 4), torch.zeros(10))
        >>> task = classification_task({"train": data})
        >>> [x[0].shape[0] for x in calibration_inputs(task, 6, torch.device("cpu"), "demo")]
        [6]
    """
    empty = ConfigError(
        f"{stage}: task {task.name!r} gave no calibration samples (its train split is "
        "empty): give the task training data"
    )
    train = task.splits.get("train")
    if train is not None and hasattr(train, "__len__") and len(train) == 0:
        raise empty  # checked first: a shuffled loader over nothing is torch's ValueError
    batches = task.calibration_batches(samples)
    inputs = [task.inputs_of(tuple(t.to(device) for t in batch)) for batch in batches]
    if not inputs or sum(len(x[0]) for x in inputs) == 0:
        raise empty
    return inputs


def collect_inputs(
    model: nn.Module, layers: dict[str, nn.Module], inputs: Inputs, with_gram: bool = False
) -> dict[str, LayerInputs]:
    """Input statistics of every layer from full passes of the unchanged model.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> stats = collect_inputs(net, {"0": net[0]}, [(torch.tensor([[1.0, -3.0]]),)])
        >>> stats["0"].abs_max.tolist(), stats["0"].tokens
        ([1.0, 3.0], 1)
    """
    stats: dict[str, LayerInputs] = {}
    with torch.no_grad(), hooks([_accumulate(m, n, stats, with_gram) for n, m in layers.items()]):
        for x in inputs:
            model(*x)
    missing = [n for n in layers if n not in stats]
    if missing:
        raise ModelError(f"layer {missing[0]} was not called on calibration data: exclude it")
    return stats


def run_sequentially(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    inputs: Inputs,
    blocks: str | None,
    solve: GroupSolver,
    stage: str,
) -> None:
    """Call `solve` for every group of layers in call order, earlier groups already solved.

    `blocks` names the `nn.ModuleList` of transformer blocks; None finds the ModuleList holding
    the most chosen layers; "" runs every pass through the whole model. Run under no_grad.
    """
    example = tuple(t[:1] for t in inputs[0])  # tracing the call order needs one sample
    order, calls = _trace(model, layers, example, stage)
    # A pass can stop at its group's last layer when every layer runs once per forward: what
    # comes after it cannot change the group's inputs (a layer called twice would).
    early = all(count == 1 for count in calls.values())
    found = find_blocks(model, layers, blocks, example, stage)
    in_block: dict[str, int] = {}
    if found is not None:
        index_of = {id(sub): i for i, block in enumerate(found) for sub in block.modules()}
        in_block = {n: index_of[id(m)] for n, m in layers.items() if id(m) in index_of}
        cached = _block_inputs(model, found[0], inputs)
        for index, block in enumerate(found):
            for group in ([n for n in g if in_block.get(n) == index] for g in order):
                if not group:
                    continue

                def run_block(block: nn.Module = block, cached: Cached = cached) -> None:
                    for args, kwargs in cached:
                        with suppress(_Stop):
                            block(*args, **kwargs)

                _solve_group(layers, group, run_block, solve, stage, early)
            # The next block reads this block's output with its already-solved layers.
            cached = [_with_hidden(args, kwargs, block(*args, **kwargs)) for args, kwargs in cached]
    for group in ([n for n in g if n not in in_block] for g in order):
        if group:

            def run_model() -> None:
                for x in inputs:
                    with suppress(_Stop):
                        model(*x)

            _solve_group(layers, group, run_model, solve, stage, early)


def _accumulate(
    module: nn.Module, name: str, stats: dict[str, LayerInputs], with_gram: bool
) -> torch.utils.hooks.RemovableHandle:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # one row per token
        if name not in stats:
            zeros = torch.zeros(x.shape[1], device=x.device)
            stats[name] = LayerInputs(None, 0, zeros, zeros.clone())
        stats[name].add(x, with_gram)

    return module.register_forward_pre_hook(hook)


def _solve_group(
    layers: dict[str, nn.Linear],
    group: list[str],
    run: Callable[[], None],
    solve: GroupSolver,
    stage: str,
    early: bool,
) -> None:
    stats: dict[str, LayerInputs] = {}
    handles = [_accumulate(layers[n], n, stats, True) for n in group]
    if early:
        handles.append(layers[group[-1]].register_forward_pre_hook(_stop))
    with hooks(handles):
        run()
    for name in group:
        if name not in stats:
            raise ModelError(f"{stage}: layer {name} was not called on calibration data")
    solve({name: stats[name] for name in group})


def call_groups(
    model: nn.Module, layers: dict[str, nn.Linear], example: tuple[Tensor, ...], stage: str
) -> list[list[str]]:
    """Layers in the order of their first call; consecutive layers reading one tensor group.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> call_groups(net, {"1": net[1], "0": net[0]}, (torch.zeros(1, 2),), "demo")
        [['0'], ['1']]
    """
    return _trace(model, layers, example, stage)[0]


def _trace(
    model: nn.Module, layers: dict[str, nn.Linear], example: tuple[Tensor, ...], stage: str
) -> tuple[list[list[str]], dict[str, int]]:
    """`call_groups`, and how many times each layer is called in one forward."""
    seen: list[tuple[str, Tensor]] = []
    calls: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                seen.append((name, args[0]))

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
    for i, (name, x) in enumerate(seen):
        if i and x is seen[i - 1][1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups, calls


def find_blocks(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    blocks: str | None,
    example: tuple[Tensor, ...],
    stage: str,
) -> list[nn.Module] | None:
    """The blocks to run one at a time, or None to run whole-model passes."""
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
    calls: list[tuple[int, Any, Any]] = []

    def record(index: int) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            calls.append((index, _hidden_of(args, kwargs), _first(out)))

        return hook

    handles = [b.register_forward_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with torch.no_grad(), hooks(handles):
        model(*example)
    if [i for i, _, _ in calls] != list(range(len(blocks))):
        return False
    return all(calls[i][1] is calls[i - 1][2] for i in range(1, len(calls)))


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (its input is all we need)."""


def _stop(module: nn.Module, args: tuple[Any, ...]) -> None:
    raise _Stop


def _block_inputs(model: nn.Module, first: nn.Module, inputs: Inputs) -> Cached:
    """What the first block is called with, per calibration batch (the model stops there)."""
    cached: Cached = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cached.append((args, kwargs))
        raise _Stop

    with hooks([first.register_forward_pre_hook(hook, with_kwargs=True)]):
        for x in inputs:
            with suppress(_Stop):
                model(*x)
    return cached


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


def _first(out: Any) -> Any:
    # Hugging Face blocks return a tuple whose first element is the hidden state.
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call of the next block: this block's output in place of its hidden state."""
    if args:
        return (_first(out), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": _first(out)}


@contextmanager
def hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Remove the given hooks on exit, whatever happens inside."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
