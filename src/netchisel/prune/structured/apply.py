"""The `prune.structured` stage: find and score the units, plan, cut, record.

It only orchestrates (as Torch-Pruning's pruners do): units come from `units.py`, what each
keeps from `plan.py`, the cut from `surgery.py`. The result is an ordinary, smaller
`nn.Module`, so MACs and latency really drop and the artifact stores it as `patch` (and
`replace`) edits with no pickle.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.conv1d import is_conv1d
from netchisel.core.errors import ConfigError, ModelError, NetChiselError, first_line
from netchisel.core.masks import masks_of
from netchisel.core.registry import register
from netchisel.measure.flops import count_flops
from netchisel.prune.structured.config import STAGE, StructuredConfig
from netchisel.prune.structured.graph import no_kv_cache, output_shapes, run_eval
from netchisel.prune.structured.plan import Plan, choose_plan, search_ratio
from netchisel.prune.structured.surgery import BreakingUnits, cut
from netchisel.prune.structured.units import Unit, score_units


def _example_inputs(model: nn.Module, config: StructuredConfig, ctx: Context) -> tuple[Tensor, ...]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if ctx.task is not None:
        return tuple(t.to(device) for t in ctx.task.example_inputs(batch_size=1))
    if config.input_shape is not None:
        return (torch.zeros(config.input_shape, device=device),)
    raise ConfigError(
        f"{STAGE}: needs example inputs to trace the model: give the stage a task, or set "
        "input_shape (e.g. [1, 3, 32, 32])"
    )


def _widths(model: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif is_conv1d(m):
            out[name] = int(m.nf)
    return out


@register(StructuredConfig)
def prune_structured(model: nn.Module, config: StructuredConfig, ctx: Context) -> nn.Module:
    """Remove the least important channels, heads or blocks, so the model really shrinks.

    Scores every unit (on a copy), chooses what to keep (at `ratio`, or at the smallest ratio
    that meets `target_macs_ratio`), lets Torch-Pruning cut the coupled tensors and checks the
    model still runs the example inputs to the same output shapes; if anything fails, `model`
    is as it was. A unit whose cut alone breaks the forward pass (the model uses its width
    where the graph cannot see) is left alone and recorded in `skipped` with why; only when no
    unit is left is that an error naming one of them. Hugging Face models run with
    `use_cache=False` meanwhile. Its layers stay the same objects, narrowed (a removed block
    becomes a new `nn.Identity`). Records MACs before/after (one example, exact), the ratio,
    channels kept per layer, heads kept per attention module, blocks removed and groups left
    alone.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        >>> ctx = Context(task=None, quiet=True)
        >>> _ = prune_structured(net, StructuredConfig(ratio=0.5, input_shape=(1, 3, 8, 8)), ctx)
        >>> net[0].out_channels, net[5].in_features, ctx.records["macs_after"]
        (4, 4, 3896)
    """
    with no_kv_cache(model):
        try:
            return _prune(model, config, ctx)
        except NetChiselError:
            raise
        except Exception as e:  # a library failing on an unusual model: one line, model intact
            raise ModelError(
                f"{STAGE}: pruning {type(model).__name__} failed ({type(e).__name__}: "
                f"{first_line(e)}); exclude the layers involved, or prune it with "
                "prune.unstructured"
            ) from e


def _cut_dropping(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[Unit],
    ratio: float,
    config: StructuredConfig,
    expected: list[tuple[int, ...]],
    skipped: dict[str, str],
    *,
    in_place: bool,
) -> list[Unit]:
    """Cut (the model or a copy) at `ratio`, leaving out the units whose cut breaks the
    forward pass (recorded in `skipped`); the units that remain."""
    blocks = config.granularity == "blocks"
    while True:
        plan = choose_plan(units, ratio, config)
        try:
            cut(model, inputs, units, plan, blocks, expected, in_place=in_place)
            return units
        except BreakingUnits as e:
            left = [u for u in units if u.name not in e.broken]
            if not left:
                raise
            skipped.update(e.broken)
            units = left


def _prune(model: nn.Module, config: StructuredConfig, ctx: Context) -> nn.Module:
    if masks_of(model):
        raise ConfigError(
            f"{STAGE}: the model carries masks of {len(masks_of(model))} tensors from an "
            "earlier stage; run structured pruning before unstructured pruning"
        )
    inputs = _example_inputs(model, config, ctx)
    try:
        expected = output_shapes(run_eval(model, inputs))
    except Exception as e:
        shapes = [list(t.shape) for t in inputs]
        raise ConfigError(
            f"{STAGE}: the model does not run on the example inputs of shape {shapes} "
            f"({type(e).__name__}: {first_line(e)}); fix the task or input_shape"
        ) from e
    base = count_flops(model, inputs).macs
    units, skipped = score_units(model, inputs, config, ctx)
    if not units:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:4])
        raise ConfigError(
            f"{STAGE}: nothing to prune among the chosen layers ({reasons or 'none found'})"
        )
    blocks = config.granularity == "blocks"

    def macs_of(plan: Plan) -> int:
        candidate = cut(model, inputs, units, plan, blocks, expected, in_place=False)
        return count_flops(candidate, inputs).macs

    ratio, measured = config.ratio, 0
    if config.target_macs_ratio is not None:
        # the units that break the model are found once, at a middle ratio, before the search
        units = _cut_dropping(model, inputs, units, 0.5, config, expected, skipped, in_place=False)
        ratio, measured = search_ratio(units, config, macs_of, base, ctx)
    before_w, params_before = _widths(model), sum(p.numel() for p in model.parameters())
    units = _cut_dropping(model, inputs, units, ratio, config, expected, skipped, in_place=True)
    plan = choose_plan(units, ratio, config)
    after = count_flops(model, inputs).macs
    after_w = _widths(model)
    record: dict[str, Any] = {
        "granularity": config.granularity,
        "ratio": ratio,
        "macs_before": base,
        "macs_after": after,
        "macs_ratio": after / base if base else 1.0,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "channels": {
            n: [w, after_w[n]] for n, w in before_w.items() if n in after_w and after_w[n] != w
        },
        "skipped": skipped,
        "search_measurements": measured,
    }
    if config.granularity == "heads":
        record["heads"] = {
            u.name: [len(u.scores) * per, int(plan[u.name].sum()) * per]
            for u in units
            for per in [u.layout.per_unit if u.layout is not None else 1]
        }
    if blocks:
        record["removed_blocks"] = [u.name for u in units if not bool(plan[u.name].all())]
    ctx.record(**record)
    return model
