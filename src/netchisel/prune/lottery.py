"""`prune.lottery`: lottery tickets by iterative magnitude pruning with rewinding.

Frankle & Carbin (2019) train a network, prune the smallest-magnitude weights, reset the rest to
their *initial* values and train again, round after round; the sparse "ticket" then trains to
the dense accuracy. Frankle et al. (2020, "Linear mode connectivity and the lottery ticket
hypothesis") rewind to the weights after `k` steps of training instead of step 0, which is what
makes tickets work on larger networks. The control that shows the initial values matter is the
*same mask* trained from a random re-initialisation; it is `init: random` of this same stage, so
the two differ in nothing else (same mask, data order, budget and seed).

The model as given is the initialisation theta_0: pass an untrained model for the classic
experiment. Selection is `prune.unstructured`'s magnitude (l1) criterion, local or global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import apply_masks_
from netchisel.core.registry import register
from netchisel.core.state import clone_state, restored_on_error, seeded
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.prune.schedule import (
    check_global_budget,
    check_sparsity,
    prune_to_,
    rising_sparsities,
)
from netchisel.prune.unstructured import DENSE_KERNEL_NOTE, UnstructuredConfig, select_prunable

# The random re-initialisation draws from its own stream, offset from the stage's seed so it
# never reproduces theta_0 when the caller seeded the model's construction with the same seed.
_REINIT_SEED_OFFSET = 104_729


@dataclass(frozen=True)
class LotteryConfig(TrainConfig):
    """Find a lottery ticket at `sparsity` in `rounds` rounds of train, prune, rewind.

    - `sparsity` / `rounds`: the final fraction of the chosen weights pruned, reached by
      pruning the same fraction of the remaining weights each round (20% per round in the
      paper: `rounds` = log(1 - sparsity) / log(0.8)).
    - `steps`: the training budget T of the dense run; every later round trains T - k steps from
      the rewind point, so each trained network has seen T steps in all.
    - `rewind_step`: k. 0 rewinds to the initialisation; k > 0 to the weights after k steps of
      the dense run ("late rewinding").
    - `init`: "rewind" (the ticket) or "random" (the control: the same final mask, the weights
      re-drawn from each layer's own initialiser before the last training).
    - `train_ticket`: train after the last pruning; False returns the ticket at its rewound (or
      re-drawn) values, untrained.
    - `scope`, `layers`, `exclude`, `min_keep`: as in `prune.unstructured` (criterion l1).
    - `lr`, `optimizer`, `weight_decay`, `lr_schedule`, `batch_size`: every training run.

    Example:
        >>> LotteryConfig(sparsity=0.9, rounds=5, init="random").round_sparsities()[-1]
        0.9
    """

    NAME: ClassVar[str] = "prune.lottery"

    sparsity: float = 0.8
    rounds: int = 5
    steps: int = 600
    rewind_step: int = 0
    init: Literal["rewind", "random"] = "rewind"
    train_ticket: bool = True
    scope: Literal["local", "global"] = "local"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    min_keep: float = 0.01

    def validate(self) -> None:
        stage = "prune.lottery"
        check_sparsity(stage, "sparsity", self.sparsity)
        if self.rounds < 1:
            raise ConfigError(f"{stage}: rounds must be >= 1, got {self.rounds}")
        if self.steps < 1:
            raise ConfigError(f"{stage}: steps must be >= 1, got {self.steps}")
        if not 0 <= self.rewind_step < self.steps:
            raise ConfigError(
                f"{stage}: rewind_step {self.rewind_step} must be in [0, steps={self.steps})"
            )
        if not 0.0 <= self.min_keep <= 1.0:
            raise ConfigError(f"{stage}: min_keep {self.min_keep} is not in [0, 1]")
        check_training(stage, self.lr, self.batch_size)

    def round_sparsities(self) -> list[float]:
        return rising_sparsities(self.sparsity, self.rounds, "geometric")


@register(LotteryConfig)
def prune_lottery(model: nn.Module, config: LotteryConfig, ctx: Context) -> nn.Module:
    """Iterative magnitude pruning with rewinding; returns the (trained) ticket.

    Records the sparsity and the task's metrics of every round (round 0 is the dense run).
    """
    stage = "prune.lottery"
    task = ctx.require_task(stage)
    layers = select_prunable(model, stage, config.layers, config.exclude)
    if config.scope == "global":
        check_global_budget(stage, layers, config.sparsity, config.min_keep)
    retrain = config.steps - config.rewind_step
    rounds: list[dict[str, Any]] = []
    with restored_on_error(model):
        rewind_point = _train_dense(model, config, ctx)
        rounds.append({"round": 0, "sparsity": 0.0, **task.evaluate(model)})
        targets = config.round_sparsities()
        for k, target in enumerate(targets, start=1):
            selection = UnstructuredConfig(
                sparsity=target,
                importance="l1",
                scope=config.scope,
                layers=config.layers,
                exclude=config.exclude,
                min_keep=config.min_keep,
            )
            reached = prune_to_(model, layers, selection, ctx)
            last = k == len(targets)
            rewind_(model, rewind_point)
            if last and config.init == "random":
                reinitialise_(model, ctx.seed + _REINIT_SEED_OFFSET)
            if last and not config.train_ticket:
                rounds.append({"round": k, "sparsity": reached, "trained": False})
                break
            fit(model, task, train_settings(config, retrain), ctx)
            rounds.append({"round": k, "sparsity": reached, **task.evaluate(model)})
    ctx.record(
        sparsity=rounds[-1]["sparsity"],
        init=config.init,
        rewind_step=config.rewind_step,
        rounds=rounds,
        note=DENSE_KERNEL_NOTE,
    )
    return model


def _train_dense(model: nn.Module, config: LotteryConfig, ctx: Context) -> dict[str, Tensor]:
    """Train for T steps and return the rewind point (theta_0, or theta_k seen on the way)."""
    saved = {"point": clone_state(model)}

    def after_step(step: int) -> None:
        # fit calls this with the 0-based index of the step just taken: k steps are done at k-1.
        if step == config.rewind_step - 1:
            saved["point"] = clone_state(model)

    fit(
        model,
        ctx.require_task("prune.lottery"),
        train_settings(config, config.steps),
        ctx,
        after_step=after_step,
    )
    return saved["point"]


@torch.no_grad()
def rewind_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Put every tensor back to `state` (the rewind point), then zero what the masks prune.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> start = {k: v.clone() for k, v in net.state_dict().items()}
        >>> _ = net.weight.data.add_(1.0)
        >>> rewind_(net, start)
        >>> torch.equal(net.weight, start["weight"])
        True
    """
    model.load_state_dict(state)
    apply_masks_(model)


@torch.no_grad()
def reinitialise_(model: nn.Module, seed: int) -> None:
    """Re-draw every module's parameters from its own initialiser, then apply the masks.

    Uses each module's `reset_parameters` (the distribution it was first drawn from), seeded,
    without touching the caller's random stream. Parameters of modules without one keep their
    values (the lottery stage rewinds them first).

    Example:
        >>> net = nn.Linear(4, 4)
        >>> before = net.weight.detach().clone()
        >>> reinitialise_(net, seed=1)
        >>> torch.equal(net.weight, before)
        False
    """
    with seeded(seed):
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    apply_masks_(model)
