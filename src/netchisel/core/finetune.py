"""The two stages every recipe can use on any model: `finetune` and `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.train import TrainConfig, fit, train_settings


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Train through the task for `epochs` (or exactly `steps` when given); the training
    fields are `TrainConfig`'s (`lr_schedule` was `schedule` here: still read).

    Example:
        >>> FinetuneConfig.from_dict({"epochs": 2, "lr": 0.01}).lr
        0.01
    """

    NAME: ClassVar[str] = "finetune"

    epochs: float = 1.0
    steps: int | None = None

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"finetune.lr: must be > 0, got {self.lr}")
        if self.epochs <= 0:
            raise ConfigError(f"finetune.epochs: must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"finetune.steps: must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"finetune.batch_size: must be >= 1, got {self.batch_size}")


@register(FinetuneConfig)
def finetune(model: nn.Module, config: FinetuneConfig, ctx: Context) -> nn.Module:
    """Train the model in place on the task's train split."""
    settings = train_settings(config, config.steps, config.epochs)
    losses = fit(model, ctx.require_task("finetune"), settings, ctx)
    ctx.record(steps=len(losses), final_train_loss=losses[-1])
    return model


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """Evaluate on a named split (the runner already evaluates `eval_split` after each stage)."""

    NAME: ClassVar[str] = "evaluate"

    split: str = "test"


@register(EvaluateConfig)
def evaluate(model: nn.Module, config: EvaluateConfig, ctx: Context) -> nn.Module:
    """Record the task's metrics on `config.split`; the model is unchanged."""
    metrics = ctx.require_task("evaluate").evaluate(model, config.split)
    ctx.record(**{f"{config.split}_{k}": v for k, v in metrics.items()})
    return model
