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

from netchisel.core.errors import ModelError, first_line
from netchisel.core.modules import replace_module
from netchisel.core.state import restored_on_error
from netchisel.prune.structured.attention import cut_heads
from netchisel.prune.structured.config import STAGE
from netchisel.prune.structured.graph import (
    dependency_graph,
    guarded_mapping,
    output_shapes,
    run_eval,
    traceable,
)
from netchisel.prune.structured.hf_config import sync_head_counts
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
    for unit in units:
        if unit.layout is not None and not bool(plan[unit.name].all()):
            for name, layout in ((unit.name, unit.layout), *unit.tied):
                cut_heads(model, name, layout, plan[unit.name])
    sync_head_counts(model)
    graph_units = [u for u in units if u.layout is None and not bool(plan[u.name].all())]
    if not graph_units:
        return
    with traceable(model), guarded_mapping():
        dg = dependency_graph(model, inputs)
        for unit in graph_units:
            keep = plan[unit.name]
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


def _trial(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
    subset: list[Unit],
) -> Exception | None:
    """What goes wrong when only `subset` is pruned (on a copy), or None if nothing does."""
    alone = {u.name: plan[u.name] if u in subset else torch.ones_like(plan[u.name]) for u in units}
    trial = copy.deepcopy(model)
    try:
        _apply_plan(trial, inputs, units, alone, blocks)
        got = output_shapes(run_eval(trial, inputs))
    except Exception as e:
        return e
    if got != expected:
        return ModelError(f"output shapes {got} differ from the original {expected}")
    return None


def breaking_units(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
) -> dict[str, str]:
    """The units that, pruned to `plan` on their own, break the forward pass or change the
    output shapes (the model uses their width where the dependency graph cannot see), with
    why; found by halving, so k of n units cost about 2k log2(n) trial cuts on copies."""
    found: dict[str, str] = {}

    def search(subset: list[Unit], known: Exception | None = None) -> None:
        error = (
            known
            if known is not None
            else _trial(model, inputs, units, plan, blocks, expected, subset)
        )
        if error is None:
            return
        if len(subset) == 1:
            found[subset[0].name] = (
                f"pruning it breaks the forward pass ({type(error).__name__}: "
                f"{first_line(error)}): the model uses its width where the dependency graph "
                "cannot see (a fixed reshape or size attribute)"
            )
            return
        half = len(subset) // 2
        search(subset[:half])
        search(subset[half:])

    search([u for u in units if not bool(plan[u.name].all())])
    return found


def _blame(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
    error: Exception,
) -> NoReturn:
    """Raise the error naming a unit that, pruned alone (on a copy of the unpruned `model`),
    breaks the forward pass; `error` itself when it already names the stage (tracing)."""
    if isinstance(error, ModelError) and str(error).startswith(STAGE):
        raise error
    broken = breaking_units(model, inputs, units, plan, blocks, expected)
    unit = next((u for u in units if u.name in broken), None)
    if unit is not None:
        what = "removing block" if blocks else "pruning the group of"
        # exclude matches layers for channels, attention modules for heads, blocks by name
        hint = unit.members[-1] if _is_channels(unit, blocks) else unit.name
        raise BreakingUnits(
            f"{STAGE}: {what} {unit.name} ({', '.join(unit.members)}) "
            f"{broken[unit.name].replace('pruning it ', '')}: "
            f"exclude it, e.g. exclude=[{hint!r}]",
            broken,
        ) from error
    raise ModelError(
        f"{STAGE}: the pruned model no longer runs ({type(error).__name__}: "
        f"{first_line(error)}); exclude the layers involved or lower the ratio"
    ) from error


def _is_channels(unit: Unit, blocks: bool) -> bool:
    return not blocks and unit.head_attr is None and unit.layout is None


class BreakingUnits(ModelError):
    """A cut failed because of these units (name -> why); the stage may retry without them."""

    def __init__(self, message: str, broken: dict[str, str]) -> None:
        super().__init__(message)
        self.broken = broken
