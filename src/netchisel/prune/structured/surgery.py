"""Surgery: cut a model to a plan, with Torch-Pruning slicing every coupled tensor.

The result must run the example inputs to the original output shapes. The stage cuts the
model itself inside the one transaction guard (`core.state.restored_on_error`), so a failure
leaves it as it was; the MAC search cuts copies to measure candidates. Either way a failure
is tried unit by unit to name the one that breaks the forward pass.
"""

from __future__ import annotations

import contextlib
import copy
from typing import NoReturn

import torch
from torch import Tensor, nn

from netchisel.core.errors import ModelError
from netchisel.core.modules import replace_module
from netchisel.core.state import restored_on_error
from netchisel.prune.structured.config import STAGE
from netchisel.prune.structured.graph import dependency_graph, output_shapes, run_eval, traceable
from netchisel.prune.structured.plan import Plan
from netchisel.prune.structured.units import Unit


def _apply_plan(
    model: nn.Module, inputs: tuple[Tensor, ...], units: list[Unit], plan: Plan, blocks: bool
) -> None:
    """Prune `model` in place to `plan` (no checks: `cut` checks)."""
    if blocks:
        for unit in units:
            if not bool(plan[unit.name].all()):
                replace_module(model, unit.name, nn.Identity())
        return
    with traceable(model):
        dg = dependency_graph(model, inputs)
        for unit in units:
            keep = plan[unit.name]
            if bool(keep.all()):
                continue
            dropped = (~keep).nonzero().flatten().tolist()
            idxs = [h * unit.head_dim + j for h in dropped for j in range(unit.head_dim)]
            root = model.get_submodule(unit.root)
            prune_out = dg.get_pruner_of_module(root).prune_out_channels
            dg.get_pruning_group(root, prune_out, idxs).prune()
            if unit.head_attr is not None:
                attention = model.get_submodule(unit.name)
                setattr(attention, unit.head_attr, int(keep.sum()))
                if isinstance(vars(attention).get("all_head_size"), int):  # Hugging Face's
                    setattr(attention, "all_head_size", int(keep.sum()) * unit.head_dim)  # noqa: B010


def cut(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
    *,
    in_place: bool,
) -> nn.Module:
    """`model` pruned to `plan`: the model itself (`in_place`) or a copy (`model` untouched).

    The result must run the inputs to the `expected` output shapes; if it does not, a model
    cut in place is as it was (`restored_on_error`) and the error names the unit that breaks
    the forward pass.
    """
    target = model if in_place else copy.deepcopy(model)
    guard = restored_on_error(model) if in_place else contextlib.nullcontext()
    try:
        with guard:
            _apply_plan(target, inputs, units, plan, blocks)
            got = output_shapes(run_eval(target, inputs))
            if got != expected:
                raise ModelError(f"output shapes {got} differ from the original {expected}")
    except Exception as e:
        _blame(model, inputs, units, plan, blocks, expected, e)
    return target


def _blame(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
    error: Exception,
) -> NoReturn:
    """Raise the error naming the unit that, pruned alone (on a copy of the unpruned `model`),
    breaks the forward pass; `error` itself when it already names the stage (tracing)."""
    if isinstance(error, ModelError) and str(error).startswith(STAGE):
        raise error
    for unit in units:
        if bool(plan[unit.name].all()):
            continue
        alone = {
            u.name: plan[u.name] if u is unit else torch.ones_like(plan[u.name]) for u in units
        }
        trial = copy.deepcopy(model)
        try:
            _apply_plan(trial, inputs, units, alone, blocks)
            if output_shapes(run_eval(trial, inputs)) == expected:
                continue
        except Exception as e:
            error = e
        what = "removing block" if blocks else "pruning the group of"
        raise ModelError(
            f"{STAGE}: {what} {unit.name} ({', '.join(unit.members)}) breaks the model's forward "
            f"pass ({type(error).__name__}: {error}); the model uses its width where the "
            f"dependency graph cannot see (a fixed reshape or size attribute): exclude it, "
            f"e.g. exclude=[{unit.members[-1]!r}]"
        ) from error
    raise ModelError(
        f"{STAGE}: the pruned model no longer runs ({type(error).__name__}: {error}); "
        "exclude the layers involved or lower the ratio"
    ) from error
