"""`dynamic.width`: per-sample width, a slimmable network and a small gate choosing the width.

1. Plan (`width_plan.plan_slimmable`): every hidden conv/linear layer keeps the first
   `round(w * C)` of its C output channels at width w, traced through the model's own forward
   (residual networks included) and proved by `width_masking.check_prefixes`; where that
   fails (a transformer), the layers that can be cut are added one at a time (its FFN hidden
   units); one line naming what fails when none can. With `reorder` (default: where the
   model is a chain), each layer's channels are first sorted by importance so the narrow
   widths start from the most important ones (the full width is unchanged; `width_reorder`).
2. Train the widths together (`fit`, the one training loop), each with its own BatchNorm
   (switchable BatchNorm, Yu et al. 2018): `training: all` runs every width each step (the
   slimmable-network rule), `training: sandwich` the widest, the narrowest and
   `sandwich_random` others drawn at random (US-Nets' sandwich rule, Yu & Huang 2019). With
   `distill_from: original` (default) a frozen copy of the trained model handed in is the teacher:
   the widest, and with `distill` the others, learn its soft outputs (at `temperature`), so
   the full width stays near the model; with `distill_from: widest` (for a model trained from
   scratch) the widest learns the labels and, with `distill`, the others learn its soft
   outputs (in-place distillation), else the labels. Then every width's BatchNorm statistics
   are re-estimated on `calibrate_norms` training samples (US-Nets' post-training statistics).
3. Train the gate (`width_gate`) on the train split for `gate_steps`, its target per sample the
   narrowest width still sure of the label, with `cost_weight` pricing the MACs.
4. Calibrate the gate's bias on `split`: the least expected MACs within `max_drop` points of
   the static model's accuracy (or `gate_bias` as given).

The result is a `WidthModel` (the model handed in is its `backbone`, its weights trained in
place); any failure leaves the model handed in as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error, seeded
from netchisel.core.task import Batch, Task
from netchisel.core.train import TrainConfig, check_training, fit, frozen, train_settings
from netchisel.dynamic.confidence import soft_kl
from netchisel.dynamic.labelled import labelled, logits_of, split_accuracy
from netchisel.dynamic.thresholds import BUDGETS, RULES, Budget
from netchisel.dynamic.width_gate import (
    GateOutcome,
    calibrate_bias,
    gate_targets,
    make_gate,
    outcome,
)
from netchisel.dynamic.width_model import WidthModel, width_macs
from netchisel.dynamic.width_plan import plan_slimmable
from netchisel.dynamic.width_reorder import reorder_channels_, why_not_reorderable
from netchisel.dynamic.width_slim import STAGE, check_width


@dataclass(frozen=True)
class WidthConfig(TrainConfig):
    """Per-sample width: `widths` (ascending fractions of each hidden layer's channels, the
    last 1.0) trained together, and a gate choosing one per input.

    - `reorder`: sort channels by importance before training (narrow widths keep the best);
      None (default): where the model is a chain of nn.Sequential, the only kind it can sort;
    - `training`: "all" (every width each step) or "sandwich" (widest, narrowest and
      `sandwich_random` random others); `distill`: narrower widths learn the teacher's soft
      outputs at `temperature` (else the labels); `distill_from`: "original" (a frozen copy of the
      model handed in teaches every width, the widest included, so the full width stays near
      it) or "widest" (the widest learns the labels and teaches the others);
      `epochs` / `steps`: its length;
    - `calibrate_norms`: training samples re-estimating each width's BatchNorm statistics
      after training (0: keep the running ones);
    - gate: `gate_channels`, `gate_pool` (its size), `gate_steps`, `gate_lr`, `cost_weight`
      (MACs price in its targets);
    - `gate_bias`: use as given; None to calibrate it on `split` to the least mean MACs within
      `max_drop` accuracy points of the static model, judged by `rule` at `confidence` (as
      early exit's: "agreement" bounds the rate of answers that differ from the widest's,
      "accuracy" takes the split's accuracy as measured; `netchisel.dynamic.thresholds`).

    Example:
        >>> c = WidthConfig.from_dict({"widths": [0.25, 0.5, 1.0], "max_drop": 1.0})
        >>> c.widths, c.training, c.distill
        ((0.25, 0.5, 1.0), 'all', True)
    """

    NAME: ClassVar[str] = "dynamic.width"

    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    reorder: bool | None = None
    training: Literal["all", "sandwich"] = "all"
    sandwich_random: int = 1
    distill: bool = True
    distill_from: Literal["original", "widest"] = "original"
    temperature: float = 1.0
    epochs: float = 1.0
    steps: int | None = None
    calibrate_norms: int = 1024
    gate_channels: int = 8
    gate_pool: int = 4
    gate_steps: int = 300
    gate_lr: float = 1e-2
    cost_weight: float = 0.1
    gate_bias: float | None = None
    max_drop: float = 0.5
    rule: Literal["agreement", "accuracy"] = "agreement"
    confidence: float = 0.5
    split: str = "val"

    def validate(self) -> None:
        check_training(STAGE, self.lr, self.batch_size)
        if len(self.widths) < 2:
            raise ConfigError(
                f"{STAGE}: widths {list(self.widths)} gives no choice: give at least two, "
                "e.g. [0.5, 1.0]"
            )
        for k, w in enumerate(self.widths):
            check_width(w, f"widths[{k}]")
        if list(self.widths) != sorted(set(self.widths)):
            raise ConfigError(f"{STAGE}: widths {list(self.widths)} must be ascending and distinct")
        if self.widths[-1] != 1.0:
            raise ConfigError(
                f"{STAGE}: widths {list(self.widths)} must end with 1.0 (the full model, the "
                "reference)"
            )
        if not self.epochs > 0:
            raise ConfigError(f"{STAGE}: epochs must be > 0, got {self.epochs}")
        for name in ("steps", "gate_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{STAGE}: {name} must be >= 1, got {value}")
        for name in ("sandwich_random", "calibrate_norms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{STAGE}: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("gate_channels", "gate_pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{STAGE}: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"{STAGE}: temperature must be > 0, got {self.temperature}")
        if not self.gate_lr > 0:
            raise ConfigError(f"{STAGE}: gate_lr must be > 0, got {self.gate_lr}")
        if not (self.cost_weight >= 0 and math.isfinite(self.cost_weight)):
            raise ConfigError(f"{STAGE}: cost_weight must be >= 0, got {self.cost_weight}")
        if self.gate_bias is not None and not math.isfinite(self.gate_bias):
            raise ConfigError(f"{STAGE}: gate_bias must be finite, got {self.gate_bias}")
        if not (0.0 <= self.max_drop <= 100.0):
            raise ConfigError(f"{STAGE}: max_drop must be in [0, 100] points, got {self.max_drop}")
        if self.rule not in RULES:
            raise ConfigError(f"{STAGE}: rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"{STAGE}: confidence must be in (0, 1), got {self.confidence}")


@register(WidthConfig)
def dynamic_width(model: nn.Module, config: WidthConfig, ctx: Context) -> nn.Module:
    """Slim, train and gate `model`; returns the `WidthModel` around it."""
    task = ctx.require_task(STAGE)
    if isinstance(model, WidthModel):
        raise ConfigError(f"{STAGE}: the model already has widths; apply dynamic.width once")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = task.example_inputs(2)[0].to(device)
    widths = list(config.widths)
    plan = plan_slimmable(model, widths, example)
    reorder = config.reorder
    if reorder is None:
        reorder = why_not_reorderable(model, plan) is None
    reference = split_accuracy(model, task, config.split, STAGE)
    original = copy.deepcopy(model).eval() if config.distill_from == "original" else None
    with restored_on_error(model):
        if reorder:
            reorder_channels_(model, plan)
        with seeded(ctx.seed):
            embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
            vocab = embedding.num_embeddings if embedding is not None else None
            gate = make_gate(example, len(widths), config.gate_channels, config.gate_pool, vocab)
        dyn = WidthModel(model, plan, widths, gate.to(device))
        losses = train_widths(dyn, config, task, ctx, original)
        if config.calibrate_norms:
            recalibrate_norms(dyn, task, config.calibrate_norms)
        gate_losses = train_gate(dyn, config, task, ctx)
        found = calibrate_gate(
            dyn,
            task,
            max_drop=config.max_drop,
            reference=reference,
            split=config.split,
            bias=config.gate_bias,
            rule=config.rule,
            confidence=config.confidence,
        )
    dyn.eval()
    per_width, gate_macs, static = width_macs(dyn, example)
    ctx.record(
        widths=widths,
        reordered=reorder,
        layers_sliced=[p for p, k in zip(plan.steps, plan.kinds, strict=True) if k != "norm"],
        steps=len(losses),
        final_train_loss=losses[-1],
        gate_steps=len(gate_losses),
        final_gate_loss=gate_losses[-1],
        macs_per_width=per_width,
        gate_macs=gate_macs,
        static_macs=static,
        width_accuracy=width_accuracies(dyn, task, config.split),
        gate_bias=found.bias,
        width_fractions=found.fractions,
        expected_macs=found.expected_macs,
        mac_reduction=1.0 - found.expected_macs / static,
        reference_accuracy=reference,
        calibrated_accuracy=found.accuracy,
        rule=config.rule,
        confidence=config.confidence,
        dynamic=trade_off_record(
            dyn,
            task,
            Budget(reference, config.max_drop, config.rule, config.confidence),
            found,
            config.split,
        ),
    )
    return dyn


def trade_off_record(
    model: WidthModel, task: Task, budget: Budget, chosen: GateOutcome, split: str
) -> dict[str, object]:
    """What a report plots of the stage (the record `dynamic`): accuracy against mean MACs
    per sample on `split` for the gate calibrated at each budget of `thresholds.BUDGETS` and
    for each width alone (no gate), the point chosen, the static model, and the share of the
    split at each width."""
    logits, correct, differs = _split_outputs(model, task, split)
    example = task.example_inputs(1, split)[0].to(_device(model))
    per_width, gate_macs, static = width_macs(model, example)
    reference = budget.reference
    sweep = []
    for points in BUDGETS:
        at = dataclasses.replace(budget, max_drop=points)
        found = calibrate_bias(logits, correct, per_width, gate_macs, at, differs)
        if found is not None:
            sweep.append(
                {
                    "setting": f"max_drop {points:g}",
                    "value": found.accuracy,
                    "mean_macs": found.expected_macs,
                }
            )
    alone = [
        {
            "setting": f"width {w:g} alone",
            "value": 100.0 * float(c.double().mean()),
            "mean_macs": float(m),
        }
        for w, c, m in zip(model.widths, correct, per_width, strict=True)
    ]
    return {
        "kind": "width",
        "split": split,
        "metric": "accuracy (%)",
        "static": {"value": reference, "mean_macs": float(static)},
        "chosen": {"value": chosen.accuracy, "mean_macs": chosen.expected_macs},
        "sweep": sweep + alone,
        "histogram": {
            f"width {w:g}": f for w, f in zip(model.widths, chosen.fractions, strict=True)
        },
    }


def calibrate_gate(
    model: WidthModel,
    task: Task,
    *,
    max_drop: float = 0.5,
    reference: float | None = None,
    split: str = "val",
    bias: float | None = None,
    rule: str = "agreement",
    confidence: float = 0.5,
) -> GateOutcome:
    """Set `model`'s gate bias (in place) to the least mean MACs that keep `split` within
    `max_drop` points of `reference` (default: the full width on `split`) by `rule` at
    `confidence` (`thresholds.Budget`), or to `bias`; records the share of `split` sent to
    each width for the expected MACs.

    The gate is not retrained, so a sweep over budgets costs one pass over the split.
    """
    logits, correct, differs = _split_outputs(model, task, split)
    example = task.example_inputs(1, split)[0].to(_device(model))
    per_width, gate_macs, _ = width_macs(model, example)
    if reference is None:
        reference = 100.0 * float(correct[-1].double().mean())
    if bias is not None:
        found = outcome(logits, correct, per_width, gate_macs, bias)
    else:
        budget = Budget(reference, max_drop, rule, confidence)
        calibrated = calibrate_bias(logits, correct, per_width, gate_macs, budget, differs)
        if calibrated is None:
            full = 100.0 * float(correct[-1].double().mean())
            raise ConfigError(
                f"{STAGE}: no gate setting meets max_drop={max_drop}: the full width scores "
                f"{full:.2f}% on {split} against {reference:.2f}% for the static model; raise "
                "max_drop or train the widths longer"
            )
        found = calibrated
    model.gate_bias = found.bias
    model.width_fractions = found.fractions
    return found


def width_accuracies(model: WidthModel, task: Task, split: str = "val") -> list[float]:
    """Accuracy in percent of each width alone on `split`."""
    _, correct, _ = _split_outputs(model, task, split)
    return [100.0 * float(c.double().mean()) for c in correct]


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _split_outputs(model: WidthModel, task: Task, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """The gate's logits (N, widths), each width's correctness (widths, N) and whether its
    answer differs from the widest width's (widths, N)."""
    device = _device(model)
    gates: list[Tensor] = []
    right: list[Tensor] = []
    differ: list[Tensor] = []
    model.eval()
    with torch.no_grad():
        for batch in task.loader(split):
            x, y = labelled(task, batch, STAGE)
            x = x.to(device)
            gates.append(model.gate(x).float().cpu())
            outs = [model.run_width(x, k).argmax(-1).cpu() for k in range(len(model.widths))]
            right.append(torch.stack([o == y for o in outs]))
            differ.append(torch.stack([o != outs[-1] for o in outs]))
    if not right:
        raise ConfigError(f"{STAGE}: the {split!r} split is empty; calibration needs data")
    return torch.cat(gates), torch.cat(right, 1), torch.cat(differ, 1)


def _order(config: WidthConfig, count: int) -> list[int]:
    """The width indices one training step runs: widest first (its outputs teach the rest)."""
    if config.training == "all" or count <= 2:
        return list(range(count - 1, -1, -1))
    middle = list(range(1, count - 1))
    draws = min(config.sandwich_random, len(middle))
    picked = torch.randperm(len(middle))[:draws].tolist()
    return [count - 1, 0, *(middle[i] for i in picked)]


def train_widths(
    model: WidthModel,
    config: WidthConfig,
    task: Task,
    ctx: Context,
    original: nn.Module | None = None,
) -> list[float]:
    """Train every width of `model` (not the gate) through `fit`; the loss of every step.
    With `original` (a frozen model) its soft outputs are the teacher of every width."""

    def loss_fn(_: nn.Module, batch: Batch) -> Tensor:
        x, y = labelled(task, batch, STAGE)
        order = _order(config, len(model.widths))
        widest = model.run_width(x, order[0])
        if original is None:
            total = nn.functional.cross_entropy(widest, y)
            teacher = widest.detach()
        else:
            with torch.no_grad():
                teacher = logits_of(original(x))
            total = soft_kl(widest, teacher, config.temperature)
        for k in order[1:]:
            out = model.run_width(x, k)
            if config.distill:
                total = total + soft_kl(out, teacher, config.temperature)
            else:
                total = total + nn.functional.cross_entropy(out, y)
        return total

    with frozen(model.gate.parameters()):
        settings = train_settings(config, config.steps, config.epochs)
        return fit(model, task, settings, ctx, loss_fn=loss_fn)


def recalibrate_norms(model: WidthModel, task: Task, samples: int) -> None:
    """Re-estimate every width's BatchNorm statistics as exact averages over `samples`
    training samples, with the weights as trained (no gradient, nothing else changes)."""
    norms = [
        model.norm_at(j, k)
        for j, kind in enumerate(model.kinds)
        if kind == "norm"
        for k in range(len(model.widths))
    ]
    if not norms:
        return
    device = _device(model)
    momenta = [bn.momentum for bn in norms]
    model.eval()
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches below
            bn.train()
        with torch.no_grad():
            for batch in task.calibration_batches(samples):
                x = task.inputs_of(batch)[0].to(device)
                for k in range(len(model.widths)):
                    model.run_width(x, k)
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.eval()


def train_gate(model: WidthModel, config: WidthConfig, task: Task, ctx: Context) -> list[float]:
    """Train the gate alone (the widths frozen, in eval mode) on each sample's target width."""
    device = _device(model)
    example = task.example_inputs(1)[0].to(device)
    per_width, _, _ = width_macs(model, example)
    model.eval()

    def loss_fn(gate: nn.Module, batch: Batch) -> Tensor:
        x, y = labelled(task, batch, STAGE)
        with torch.no_grad():
            probs = torch.stack(
                [model.run_width(x, k).float().softmax(-1) for k in range(len(model.widths))]
            )
            target = gate_targets(probs, y, per_width, config.cost_weight)
        return nn.functional.cross_entropy(gate(x), target)

    settings = dataclasses.replace(train_settings(config, config.gate_steps), lr=config.gate_lr)
    return fit(model.gate, task, settings, ctx, loss_fn=loss_fn)
