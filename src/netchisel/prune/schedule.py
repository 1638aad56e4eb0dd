"""Pruning schedules: `prune.iterative` (train, prune, fine-tune, with a rising ratio) and
`prune.gradual` (AGP: the cubic schedule of Zhu & Gupta 2017, pruning while training).

Both reuse `prune.unstructured`'s pieces: the importance criteria, the keep-mask selection
(`compute_keep_masks`: local / per row / global with a per-layer floor) and the one training
loop (`netchisel.core.train.fit`, which holds masks through every optimizer step). What this
file adds is only *when* to prune and to *what* ratio, plus two helpers the other
training-time stages (`lottery.py`, `sparse_training.py`, `penalty.py`) share:

- `prune_to_`: mask the chosen layers to a sparsity without ever reviving a weight that an
  earlier step pruned, so sparsity only rises; pruned weights are zeroed or, with
  `mode: freeze` / `freeze_initial`, frozen (`prune.unstructured`'s `hold_` does both);
- (`netchisel.core.state.restored_on_error` puts a model's weights, masks and mode back when a
  stage fails or is interrupted midway; every training-time stage runs inside it.)

Masked weights stay dense tensors with zeros: the artifact stores them sparsely (the `bitmask`
codec), but latency on dense kernels does not improve, and the records say so.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from netchisel.core.config import check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.prune.importance import CRITERIA
from netchisel.prune.unstructured import (
    DENSE_KERNEL_NOTE,
    FREEZE_NOTE,
    UnstructuredConfig,
    check_local_options,
    check_per_layer,
    check_per_layer_values,
    compute_keep_masks,
    current_weights,
    hold_,
    select_prunable,
)

FreezeMode = Literal["zero", "freeze", "freeze_initial"]

# -- pure schedule functions ------------------------------------------------------------------


def rising_sparsities(
    final: float, rounds: int, spacing: Literal["geometric", "linear"] = "geometric"
) -> list[float]:
    """The sparsity after each of `rounds` pruning rounds, ending exactly at `final`.

    "geometric" prunes the same fraction of the *remaining* weights every round (Han et al.
    2015; Frankle & Carbin 2019), so late rounds remove fewer weights, which is when the
    network is most fragile; "linear" adds the same amount of sparsity every round.

    Example:
        >>> rising_sparsities(0.875, 3)
        [0.5, 0.75, 0.875]
        >>> rising_sparsities(0.9, 3, "linear")
        [0.3, 0.6, 0.9]
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if spacing == "linear":
        out = [round(final * k / rounds, 12) for k in range(1, rounds + 1)]
    else:
        out = [1.0 - (1.0 - final) ** (k / rounds) for k in range(1, rounds + 1)]
    out[-1] = final  # no float drift on the ratio the user asked for
    return out


def agp_sparsity(step: int, *, initial: float, final: float, start: int, end: int) -> float:
    """Target sparsity at `step` of AGP: s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3.

    Zhu & Gupta 2017, eq. 1: fast pruning while there are many redundant weights, slow near the
    end. Before `start` it is `initial`, after `end` it is `final`.

    Example:
        >>> agp_sparsity(50, initial=0.0, final=0.8, start=0, end=100)
        0.7
    """
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    return round(final + (initial - final) * (1.0 - progress) ** 3, 12)


def agp_steps(start: int, end: int, frequency: int) -> list[int]:
    """The training steps at which AGP prunes: every `frequency` steps from `start`, and `end`.

    Example:
        >>> agp_steps(0, 10, 4)
        [0, 4, 8, 10]
    """
    points = list(range(start, end + 1, frequency))
    if points[-1] != end:
        points.append(end)  # the last point reaches the final sparsity exactly
    return points


# -- helpers shared by the training-time stages -----------------------------------------------


def check_global_budget(
    stage: str, layers: dict[str, nn.Module], sparsity: float, min_keep: float
) -> None:
    """Fail before any training when the per-layer floor makes the final sparsity impossible."""
    sizes = [m.get_parameter("weight").numel() for m in layers.values()]
    total = sum(sizes)
    floor = sum(min(n, math.ceil(min_keep * n)) for n in sizes)
    if floor > total - round(sparsity * total):
        raise ConfigError(
            f"{stage}: sparsity {sparsity} with min_keep {min_keep} is impossible (every layer "
            "keeps at least min_keep of its weights): lower min_keep or sparsity"
        )


def prune_to_(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: UnstructuredConfig,
    ctx: Context,
    freeze_at: dict[str, Tensor] | None = None,
) -> float:
    """Mask the layers' weights to `config.sparsity`; a weight pruned before stays pruned.

    Entries an earlier mask holds are pruned first (`compute_keep_masks`), so the sparsity
    reached is exactly what the selection chose. Held entries are zeroed, or frozen at
    `freeze_at` (see `prune.unstructured.hold_`).
    Returns the fraction of the layers' weights now masked.
    """
    hold_(model, compute_keep_masks(model, layers, config, ctx), freeze_at)
    return masked_fraction(model, layers)


def freeze_values(
    mode: FreezeMode, layers: dict[str, nn.Module], initial: dict[str, Tensor]
) -> dict[str, Tensor] | None:
    """What a pruning step holds pruned weights at: None (zero), their current values
    (`freeze`) or their values when the stage began (`freeze_initial`, taken as `initial`)."""
    if mode == "zero":
        return None
    return current_weights(layers) if mode == "freeze" else initial


def masked_fraction(model: nn.Module, layers: dict[str, nn.Module]) -> float:
    """Fraction of the layers' weight entries held by a mask.

    Example:
        >>> import torch
        >>> from netchisel.core.masks import set_mask
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> set_mask(net, "0.weight", torch.tensor([[True, False], [True, True]]))
        >>> masked_fraction(net, {"0": net[0]})
        0.25
    """
    masks = masks_of(model)
    pruned, total = 0, 0
    for name, layer in layers.items():
        weight = layer.get_parameter("weight")
        total += weight.numel()
        mask = masks.get(f"{name}.weight")
        if mask is not None:
            pruned += int((~mask.keep).sum())
    return pruned / total if total else 0.0


def check_selection(stage: str, importance: str, min_keep: float, calibration_samples: int) -> None:
    """The checks of the fields a stage hands to `compute_keep_masks`."""
    if importance not in CRITERIA:
        raise ConfigError(
            f"{stage}: unknown importance {importance!r} (known: {', '.join(CRITERIA)})"
        )
    if not 0.0 <= min_keep <= 1.0:
        raise ConfigError(f"{stage}: min_keep {min_keep} is not in [0, 1]")
    check_calibration_samples(stage, calibration_samples)


def check_sparsity(stage: str, field: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{stage}: {field} {value} is not in [0, 1)")


def check_mode(stage: str, mode: str) -> None:
    if mode not in typing.get_args(FreezeMode):
        known = ", ".join(typing.get_args(FreezeMode))
        raise ConfigError(f"{stage}: mode {mode!r} is not one of {known}")


@dataclass(frozen=True)
class ScheduleConfig(TrainConfig):
    """What the training-time schedules prune and how each step chooses it.

    `importance`, `scope`, `group`, `layers`, `exclude`, `min_keep`, `calibration_samples` are
    as in `prune.unstructured`; `per_layer` maps regexes to final ratios, reached along the
    same schedule as `sparsity`; `mode` is "zero", "freeze" or "freeze_initial".
    """

    sparsity: float = 0.9
    importance: str = "l1"
    scope: Literal["local", "global"] = "local"
    group: Literal["layer", "row"] = "layer"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    min_keep: float = 0.01
    calibration_samples: int = 128
    mode: FreezeMode = "zero"

    def check_schedule(self, stage: str) -> None:
        """The checks every schedule shares (its own fields are checked by its `validate`)."""
        check_sparsity(stage, "sparsity", self.sparsity)
        check_per_layer_values(stage, self.per_layer)
        check_mode(stage, self.mode)
        check_selection(stage, self.importance, self.min_keep, self.calibration_samples)
        check_training(stage, self.lr, self.batch_size)
        check_local_options(stage, self.scope, self.group, self.per_layer)

    def selection(self, at: Callable[[float], float]) -> UnstructuredConfig:
        """One pruning step's selection, exactly as `prune.unstructured` would make it.

        `at` maps a final ratio to this step's target, so `sparsity` and every `per_layer`
        ratio rise along the same schedule.

        Example:
            >>> config = IterativeConfig(sparsity=0.8, per_layer={"fc": 0.4})
            >>> config.selection(lambda s: s / 2).per_layer
            {'fc': 0.2}
        """
        return UnstructuredConfig(
            sparsity=at(self.sparsity),
            importance=self.importance,
            scope=self.scope,
            group=self.group,
            layers=self.layers,
            exclude=self.exclude,
            per_layer={pattern: at(ratio) for pattern, ratio in self.per_layer.items()},
            min_keep=self.min_keep,
            calibration_samples=self.calibration_samples,
        )


# -- prune.iterative --------------------------------------------------------------------------


@dataclass(frozen=True)
class IterativeConfig(ScheduleConfig):
    """Train, then `rounds` times: prune to a rising ratio and fine-tune.

    - `sparsity`: the fraction of the chosen layers' weights pruned after the last round.
    - `rounds` / `spacing`: how many prune+fine-tune rounds and how the ratio rises
      ("geometric": the same fraction of the remaining weights each round; "linear").
    - `train_steps`: training before the first round (0 for an already trained model);
      `finetune_steps`: training after every round.
    - `importance`, `scope`, `group`, `layers`, `exclude`, `per_layer`, `min_keep`,
      `calibration_samples`: as in `prune.unstructured` (the criterion is re-measured every
      round; `per_layer` ratios are final ratios, reached along the same rounds).
    - `mode`: "zero" (pruned weights are 0 and stay 0), "freeze" (they keep the value they
      had when they were pruned and are not trained) or "freeze_initial" (they go back to
      the value they had when the stage began, before any of its training, and stay there).
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: every training run.

    Example:
        >>> config = IterativeConfig(sparsity=0.875, rounds=3)
        >>> [config.round_target(k)(config.sparsity) for k in (1, 2, 3)]
        [0.5, 0.75, 0.875]
    """

    NAME: ClassVar[str] = "prune.iterative"

    rounds: int = 5
    spacing: Literal["geometric", "linear"] = "geometric"
    train_steps: int = 0
    finetune_steps: int = 200

    def validate(self) -> None:
        stage = "prune.iterative"
        self.check_schedule(stage)
        if self.rounds < 1:
            raise ConfigError(f"{stage}: rounds must be >= 1, got {self.rounds}")
        if self.train_steps < 0:
            raise ConfigError(f"{stage}: train_steps must be >= 0, got {self.train_steps}")
        if self.finetune_steps < 0:
            raise ConfigError(f"{stage}: finetune_steps must be >= 0, got {self.finetune_steps}")

    def round_target(self, k: int) -> Callable[[float], float]:
        """Round k's (1-based) target for a final ratio."""
        return lambda final: rising_sparsities(final, self.rounds, self.spacing)[k - 1]


@register(IterativeConfig)
def prune_iterative(model: nn.Module, config: IterativeConfig, ctx: Context) -> nn.Module:
    """Train, then prune to a rising ratio and fine-tune, round after round (Han et al. 2015).

    Records the sparsity reached and the task's metrics after every round.
    """
    stage = "prune.iterative"
    task = ctx.require_task(stage)
    layers = select_prunable(model, stage, config.layers, config.exclude)
    check_per_layer(stage, config.per_layer, layers)
    if config.scope == "global":
        check_global_budget(stage, layers, config.sparsity, config.min_keep)
    rounds: list[dict[str, Any]] = []
    initial = current_weights(layers)
    with restored_on_error(model):
        if config.train_steps:
            fit(model, task, train_settings(config, config.train_steps), ctx)
        rounds.append(
            {"round": 0, "sparsity": masked_fraction(model, layers), **task.evaluate(model)}
        )
        for k in range(1, config.rounds + 1):
            held = freeze_values(config.mode, layers, initial)
            reached = prune_to_(model, layers, config.selection(config.round_target(k)), ctx, held)
            if config.finetune_steps:
                fit(model, task, train_settings(config, config.finetune_steps), ctx)
            rounds.append({"round": k, "sparsity": reached, **task.evaluate(model)})
    ctx.record(
        sparsity=rounds[-1]["sparsity"],
        rounds=rounds,
        train_steps=config.train_steps + config.rounds * config.finetune_steps,
        note=DENSE_KERNEL_NOTE if config.mode == "zero" else FREEZE_NOTE,
    )
    return model


# -- prune.gradual (AGP) ----------------------------------------------------------------------


@dataclass(frozen=True)
class GradualConfig(ScheduleConfig):
    """Train for `steps`, pruning every `frequency` steps along AGP's cubic schedule.

    - `sparsity` / `initial_sparsity`: s_f and s_i of Zhu & Gupta (2017).
    - `steps`: training steps in all; pruning happens at steps `start_step`,
      `start_step + frequency`, ... and `end_step` (default: 3/4 of `steps`, leaving the last
      quarter to recover at the final sparsity).
    - `importance`, `scope`, `group`, `layers`, `exclude`, `per_layer`, `min_keep`,
      `calibration_samples`: as in `prune.unstructured` (a `per_layer` ratio is that layer's s_f).
    - `mode`: "zero", "freeze" or "freeze_initial", as in `prune.iterative`.
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: the training run.

    Example:
        >>> GradualConfig(steps=100, frequency=25).pruning_steps()
        [0, 25, 50, 75]
    """

    NAME: ClassVar[str] = "prune.gradual"

    initial_sparsity: float = 0.0
    steps: int = 1000
    start_step: int = 0
    end_step: int | None = None
    frequency: int = 50

    def validate(self) -> None:
        stage = "prune.gradual"
        self.check_schedule(stage)
        check_sparsity(stage, "initial_sparsity", self.initial_sparsity)
        finals = {"sparsity": self.sparsity}
        finals.update({f"per_layer[{k!r}]": v for k, v in self.per_layer.items()})
        for field_name, final in finals.items():
            if self.initial_sparsity > final:
                raise ConfigError(
                    f"{stage}: initial_sparsity {self.initial_sparsity} is above {field_name} "
                    f"{final} (AGP only prunes more)"
                )
        if self.steps < 1:
            raise ConfigError(f"{stage}: steps must be >= 1, got {self.steps}")
        if self.frequency < 1:
            raise ConfigError(f"{stage}: frequency must be >= 1, got {self.frequency}")
        if self.start_step < 0:
            raise ConfigError(f"{stage}: start_step must be >= 0, got {self.start_step}")
        end = self.pruning_end()
        if not self.start_step < end < self.steps:
            raise ConfigError(
                f"{stage}: end_step {end} must be after start_step {self.start_step} and "
                f"before steps {self.steps}"
            )

    def pruning_end(self) -> int:
        return self.end_step if self.end_step is not None else (3 * self.steps) // 4

    def pruning_steps(self) -> list[int]:
        return agp_steps(self.start_step, self.pruning_end(), self.frequency)

    def target(self, step: int, final: float | None = None) -> float:
        """The AGP target at `step` for a final ratio (default: `sparsity`)."""
        return agp_sparsity(
            step,
            initial=self.initial_sparsity,
            final=self.sparsity if final is None else final,
            start=self.start_step,
            end=self.pruning_end(),
        )


@register(GradualConfig)
def prune_gradual(model: nn.Module, config: GradualConfig, ctx: Context) -> nn.Module:
    """Prune while training, along the cubic AGP schedule (Zhu & Gupta 2017).

    Step t counts optimizer steps from 0; at each pruning step the mask is recomputed after
    that step's update. Records every pruning step's target and reached sparsity.
    """
    stage = "prune.gradual"
    task = ctx.require_task(stage)
    layers = select_prunable(model, stage, config.layers, config.exclude)
    check_per_layer(stage, config.per_layer, layers)
    if config.scope == "global":
        check_global_budget(stage, layers, config.sparsity, config.min_keep)
    when = set(config.pruning_steps())
    schedule: list[dict[str, float]] = []
    initial = current_weights(layers)

    def after_step(step: int) -> None:
        if step not in when:
            return
        target = config.target(step)
        held = freeze_values(config.mode, layers, initial)
        at_step = config.selection(lambda final: config.target(step, final))
        reached = prune_to_(model, layers, at_step, ctx, held)
        schedule.append({"step": step, "target": target, "sparsity": reached})

    with restored_on_error(model):
        losses = fit(model, task, train_settings(config, config.steps), ctx, after_step=after_step)
    ctx.record(
        sparsity=masked_fraction(model, layers),
        schedule=schedule,
        final_train_loss=losses[-1],
        note=DENSE_KERNEL_NOTE if config.mode == "zero" else FREEZE_NOTE,
    )
    return model
