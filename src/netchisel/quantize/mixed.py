"""`quantize.mixed`: per-layer bit widths chosen from measured sensitivity under a size budget.

Each Linear layer is quantized alone (round to nearest, every other layer in float) at each
candidate width, and the task's loss on calibration batches is measured. Then, from every layer
at the widest candidate, the layer whose next narrower width costs the least loss per byte
saved is narrowed, until the average bits per weight meet the budget (a greedy solution of
the knapsack, as in HAQ/HAWQ-style allocation). The chosen widths are applied by `quantize.rtn`,
so layers at 8 and 4 bits run integer kernels and others are stored packed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from netchisel.core.config import check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.task import Task
from netchisel.quantize.formats import padded_weight
from netchisel.quantize.linears import chosen_linears
from netchisel.quantize.primitives import fake_quantize
from netchisel.quantize.rtn import RTNConfig, WeightQuantConfig, quantize_rtn


@dataclass(frozen=True)
class MixedPrecisionConfig(WeightQuantConfig):
    """Bit widths per layer from `candidates`, averaging at most `average_bits` per weight.

    The weight format fields (group_size, symmetric, scale_method, layers, exclude) are those
    of `quantize.rtn`; `bits` is unused (the search picks them). `average_bits` counts the
    integer bits of the weights, not the scales.

    Example:
        >>> MixedPrecisionConfig(candidates=(8, 4), average_bits=5.0).candidates
        (8, 4)
    """

    NAME: ClassVar[str] = "quantize.mixed"

    candidates: tuple[int, ...] = (8, 4, 3, 2)
    average_bits: float = 4.0
    calibration_samples: int = 64

    def validate(self) -> None:
        super().validate()
        if not self.candidates:
            raise ConfigError(f"{STAGE}: candidates is empty")
        for bits in self.candidates:
            if not 1 <= bits <= 8:
                raise ConfigError(f"{STAGE}: candidate bits={bits} is outside 1-8")
        if not min(self.candidates) <= self.average_bits:
            raise ConfigError(
                f"{STAGE}: average_bits={self.average_bits} is below the narrowest candidate "
                f"({min(self.candidates)} bits)"
            )
        check_calibration_samples(STAGE, self.calibration_samples)


STAGE = MixedPrecisionConfig.NAME


@register(MixedPrecisionConfig)
def quantize_mixed(model: nn.Module, config: MixedPrecisionConfig, ctx: Context) -> nn.Module:
    """Measure each layer's sensitivity, choose widths under the budget, apply them with RTN."""
    task = ctx.require_task(STAGE)
    linears = chosen_linears(model, config.layers, config.exclude, STAGE)
    widths = sorted(set(config.candidates), reverse=True)
    loss = layer_sensitivity(model, task, linears, widths, config, config.calibration_samples)
    sizes = {name: linear.weight.numel() for name, linear in linears.items()}
    chosen = allocate(loss, sizes, widths, config.average_bits)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(WeightQuantConfig)}
    rtn = RTNConfig(**{**fields, "per_layer_bits": {re.escape(n): b for n, b in chosen.items()}})
    quantize_rtn(model, rtn, ctx)
    baseline = loss.pop("")[0]
    ctx.record(
        sensitivity={
            "metric": "loss",
            "split": "train (calibration)",
            "x_label": "bits of one layer's weights (that layer alone quantized)",
            "sweep": "one layer at a time quantized (round to nearest) to each width",
            "ratios": widths,
            "curves": {n: loss[n] for n in linears},
            "sizes": sizes,
            "baseline": baseline,
            "chosen": chosen,
        },
        average_bits=sum(chosen[n] * sizes[n] for n in chosen) / sum(sizes.values()),
    )
    return model


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    task: Task,
    linears: dict[str, nn.Linear],
    widths: list[int],
    config: WeightQuantConfig,
    samples: int = 64,
) -> dict[str, list[float]]:
    """Calibration loss with one layer at a time fake-quantized to each width.

    The key "" holds the unquantized loss (one value). Weights are restored exactly.
    """
    batches = task.calibration_batches(samples, split="train")
    was_training = model.training
    model.eval()

    def task_loss() -> float:
        return sum(float(task.loss_fn(model, b)) for b in batches) / len(batches)

    try:
        out: dict[str, list[float]] = {"": [task_loss()]}
        for name, linear in linears.items():
            original = linear.weight.detach().clone()
            curve = []
            for bits in widths:
                spec = dataclasses.replace(config, bits=bits, per_layer_bits={}).spec_for(name)
                padded = padded_weight(linear, spec, name)  # as quantize.rtn pads it
                fake = fake_quantize(padded, spec, config.scale_method)  # type: ignore[arg-type]
                linear.weight.copy_(fake[:, : original.shape[1]])
                curve.append(task_loss())
            linear.weight.copy_(original)
            out[name] = curve
    finally:
        model.train(was_training)
    return out


def allocate(
    loss: dict[str, list[float]], sizes: dict[str, int], widths: list[int], average_bits: float
) -> dict[str, int]:
    """Greedy: narrow the layer with the least loss increase per bit saved, until on budget.

    `loss[layer][i]` is the loss with that layer at `widths[i]` (widths in decreasing order).

    Example:
        >>> allocate({"a": [1.0, 1.1], "b": [1.0, 3.0]}, {"a": 10, "b": 10}, [8, 4], 6.0)
        {'a': 4, 'b': 8}
    """
    level = {name: 0 for name in sizes}
    total = sum(sizes.values())
    budget = average_bits * total
    used = widths[0] * total
    while used > budget + 1e-9:
        best: tuple[float, str] | None = None
        for name, i in level.items():
            if i + 1 >= len(widths):
                continue
            saved = (widths[i] - widths[i + 1]) * sizes[name]
            cost = max(loss[name][i + 1] - loss[name][i], 0.0)
            if best is None or cost / saved < best[0]:
                best = (cost / saved, name)
        if best is None:  # unreachable: validate checks the narrowest candidate
            raise ConfigError(f"{STAGE}: average_bits={average_bits} cannot be met")
        name = best[1]
        used -= (widths[level[name]] - widths[level[name] + 1]) * sizes[name]
        level[name] += 1
    return {name: widths[i] for name, i in level.items()}
