"""`run_layerwise`: solve a model's Linear layers one group at a time, in call order.

Calibration methods for language models (GPTQ, SparseGPT, AWQ) change one layer at a time so
that each layer is solved on the outputs of the layers before it *as they already are after
the change*, not on the original model's. This is the one engine that does that for any
`nn.Module`; the algorithms are `solve` functions over it, as gpt-fast's GPTQ runner takes its
quantize/dequantize functions as arguments.

- Layers are visited in the order the model calls them. Consecutive layers that read the same
  input tensor (q, k and v projections) form a group that shares one calibration pass.
- For a transformer the model's blocks (the `nn.ModuleList` that holds the chosen layers) run
  one at a time over cached block inputs, as the SparseGPT and GPTQ papers do: a layer costs
  one pass through its own block, not through the whole model. Only one block's inputs are
  held at a time (one entry per calibration batch). Layers outside the blocks (a classifier,
  an LM head) are visited last with passes through the whole model.
- `solve` gets, per layer of a group, what it read (`LayerInputs`: X^T X, token count, |x|
  sums and maxima), and may change the layer's weights (or the ops before it) before the
  next group is measured. Non-finite inputs are refused before `solve` sees them.
- `sequential=False` measures every layer in one pass of the unchanged model and then calls
  `solve` group by group (SmoothQuant: its scales are a function of the original
  activations).

Rollback is the caller's: run this and the module swap after it inside
`core.state.restored_on_error` (with `spill=None`, so a large model's rollback copy waits on
disk, not in memory). Memory: the model plus one block's calibration inputs and one group's
statistics and solver temporaries; glibc is told to give freed tensors back to the system
(`core.heap`), else its heap fragments between the results each layer keeps.

Written here because no well-kept library runs this over any `nn.Module`: the papers' code
and llm-compressor's pipelines are tied to Hugging Face classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.calib.inputs import (
    Inputs,
    LayerInputs,
    accumulate,
    calibration_inputs,
    collect_inputs,
)
from netchisel.calib.trace import find_blocks, first_output, hooks, trace_calls
from netchisel.core.context import Context
from netchisel.core.errors import ModelError
from netchisel.core.heap import unmap_large_allocations
from netchisel.core.task import Task

Solve = Callable[[dict[str, LayerInputs]], None]
"""Called once per group of layers reading one tensor, with each layer's inputs, in order."""
Cached = list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of a block's calls


@dataclass(frozen=True)
class Layerwise:
    """How a stage calibrates layer by layer (the fields its config has).

    - `stage`: the stage's name, for errors and the progress bar.
    - `samples`: calibration samples of the task's train split (for text: windows).
    - `blocks`: the `nn.ModuleList` of transformer blocks run one at a time; None finds the
      ModuleList holding the most chosen layers; "" runs every pass through the whole model.
    - `sequential`: False measures all layers in one pass of the unchanged model.
    - `gram`: whether `solve` needs X^T X (it costs in^2 per layer).

    Example:
        >>> Layerwise("quantize.gptq", 128).sequential
        True
    """

    stage: str
    samples: int
    blocks: str | None = None
    sequential: bool = True
    gram: bool = True


@dataclass(frozen=True)
class Calibration:
    """What the calibration data showed before any layer changed.

    - `inputs`: the model inputs of the calibration batches.
    - `groups`: the chosen layers in call order, grouped by the tensor they read.
    - `blocks`: the blocks run one at a time (None: whole-model passes).
    """

    inputs: list[tuple[Tensor, ...]]
    groups: list[list[str]]
    blocks: list[nn.Module] | None

    @property
    def samples(self) -> int:
        """How many calibration samples there are (rows of the first input, summed)."""
        return sum(len(x[0]) for x in self.inputs)

    def example(self, samples: int) -> tuple[Tensor, ...]:
        """The first `samples` samples of the first batch (to trace or check the model on)."""
        return tuple(t[:samples] for t in self.inputs[0])


def run_layerwise(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    task: Task,
    solve: Solve,
    how: Layerwise,
    ctx: Context,
    prepare: Callable[[Calibration], None] | None = None,
) -> Calibration:
    """Call `solve` for every group of `layers` in call order, earlier groups already solved.

    `prepare`, when given, runs once after the model was traced and before the first group
    (AWQ and SmoothQuant find where their scales fold there). Everything runs under no_grad
    with the model in eval mode; its mode is put back at the end.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
        >>> task = classification_task({"train": data})
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> seen = []
        >>> _ = run_layerwise(net, {"2": net[2], "0": net[0]}, task,
        ...                   lambda group: seen.append(list(group)),
        ...                   Layerwise("demo", 8), Context(task, quiet=True))
        >>> seen
        [['0'], ['2']]
    """
    unmap_large_allocations()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = calibration_inputs(task, how.samples, device, how.stage)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            example = tuple(t[:1] for t in inputs[0])  # tracing the call order needs one sample
            groups, calls = trace_calls(model, layers, example, how.stage)
            blocks = None
            if how.sequential:
                blocks = find_blocks(model, layers, how.blocks, example, how.stage)
            calibration = Calibration(inputs, groups, blocks)
            if prepare is not None:
                prepare(calibration)
            with ctx.progress(how.stage, len(layers)) as advance:

                def checked(group: dict[str, LayerInputs]) -> None:
                    for name, seen in group.items():
                        if not seen.finite():
                            raise ModelError(
                                f"{how.stage}: layer {name}: the layer's calibration inputs "
                                "are not finite (inf or NaN)"
                            )
                    solve(group)
                    advance(len(group))

                if how.sequential:
                    # A pass can stop at its group's last layer when every layer runs once per
                    # forward: what comes after it cannot change the group's inputs.
                    early = all(count == 1 for count in calls.values())
                    _sequentially(model, layers, calibration, checked, how, early)
                else:
                    stats = collect_inputs(model, layers, inputs, with_gram=how.gram)
                    for group in groups:
                        checked({name: stats[name] for name in group})
    finally:
        model.train(was_training)
    return calibration


def _sequentially(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    calibration: Calibration,
    solve: Solve,
    how: Layerwise,
    early: bool,
) -> None:
    blocks, order = calibration.blocks, calibration.groups
    in_block: dict[str, int] = {}
    if blocks is not None:
        index_of = {id(sub): i for i, block in enumerate(blocks) for sub in block.modules()}
        in_block = {n: index_of[id(m)] for n, m in layers.items() if id(m) in index_of}
        cached = block_inputs(model, blocks[0], calibration.inputs)
        for index, block in enumerate(blocks):
            for group in ([n for n in g if in_block.get(n) == index] for g in order):
                if not group:
                    continue

                def run_block(block: nn.Module = block, cached: Cached = cached) -> None:
                    for args, kwargs in cached:
                        with suppress(_Stop):
                            block(*args, **kwargs)

                _solve_group(layers, group, run_block, solve, how, early)
            # The next block reads this block's output with its already-solved layers.
            cached = [with_hidden(args, kwargs, block(*args, **kwargs)) for args, kwargs in cached]
    for group in ([n for n in g if n not in in_block] for g in order):
        if group:

            def run_model() -> None:
                for x in calibration.inputs:
                    with suppress(_Stop):
                        model(*x)

            _solve_group(layers, group, run_model, solve, how, early)


def _solve_group(
    layers: Mapping[str, nn.Module],
    group: list[str],
    run: Callable[[], None],
    solve: Solve,
    how: Layerwise,
    early: bool,
) -> None:
    stats: dict[str, LayerInputs] = {}
    handles = [accumulate(layers[n], n, stats, how.gram) for n in group]
    if early:
        handles.append(layers[group[-1]].register_forward_pre_hook(_stop))
    with hooks(handles):
        run()
    for name in group:
        if name not in stats:
            raise ModelError(f"{how.stage}: layer {name} was not called on calibration data")
    solve({name: stats[name] for name in group})


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (its input is all we need)."""


def _stop(module: nn.Module, args: tuple[Any, ...]) -> None:
    raise _Stop


def block_inputs(model: nn.Module, first: nn.Module, inputs: Inputs) -> Cached:
    """What the first block is called with, per calibration batch (the model stops there).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> [args[0].shape for args, _ in block_inputs(net, net[1], [(torch.ones(3, 2),)])]
        [torch.Size([3, 2])]
    """
    cached: Cached = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cached.append((args, kwargs))
        raise _Stop

    with hooks([first.register_forward_pre_hook(hook, with_kwargs=True)]):
        for x in inputs:
            with suppress(_Stop):
                model(*x)
    return cached


def with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call of the next block: this block's output in place of its hidden state."""
    if args:
        return (first_output(out), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": first_output(out)}
