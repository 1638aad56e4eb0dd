"""The one training loop (`fit`) and the one set of training fields every training stage has
(`TrainConfig`): finetune, distill, the pruning schedules and the quantization stages that
train all derive their config from it, so `lr`, `optimizer`, `weight_decay`, `lr_schedule` and
`batch_size` mean the same thing, with the same defaults and checks, in every recipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self

import torch
from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import apply_masks_
from netchisel.core.task import Batch, Task


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to train. Give `epochs` or `steps` (steps win when both are set)."""

    epochs: float = 1.0
    steps: int | None = None
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = None
    batch_size: int | None = None


HALF_DTYPES = (torch.float16, torch.bfloat16)
OLD_FIELD_NAMES = {"schedule": "lr_schedule"}
"""Training fields renamed since recipes were first written: old name -> the name now."""


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """The training fields of every stage that trains (one meaning, default and check each).

    - `lr`, `optimizer` ("adamw" or "sgd"), `weight_decay`;
    - `lr_schedule`: "cosine" (decay to 0 over the run) or "constant";
    - `batch_size`: None for the task's own.

    `from_dict` also reads `schedule`, the name `finetune` used for `lr_schedule` before every
    training stage shared these fields, so old recipes keep loading.

    Example:
        >>> @dataclass(frozen=True)
        ... class TrainOnlyConfig(TrainConfig):
        ...     steps: int = 10
        >>> TrainOnlyConfig.from_dict({"schedule": "constant"}).lr_schedule
        'constant'
        >>> train_settings(TrainOnlyConfig(lr=0.1), steps=5).steps
        5
    """

    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        """`version`, then the stage's own fields, then the shared training ones (the order an
        error's list of known keys reads best in)."""
        shared = [f.name for f in dataclasses.fields(TrainConfig)]
        own = [n for n in super().field_names() if n not in shared]
        return [shared[0], *own, *shared[1:]]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> Self:
        data = dict(data or {})
        for old, new in OLD_FIELD_NAMES.items():
            if old in data and old not in cls.field_names():
                if new in data:
                    raise ConfigError(
                        f"{where or cls.__name__}: {old!r} is the old name of {new!r}: "
                        f"give only {new!r}"
                    )
                data[new] = data.pop(old)
        return super().from_dict(data, where)


def train_settings(config: TrainConfig, steps: int | None, epochs: float = 1.0) -> TrainSettings:
    """`fit`'s settings for a stage's training fields, for `steps` steps (or `epochs`)."""
    return TrainSettings(
        epochs=epochs,
        steps=steps,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        schedule=config.lr_schedule,
        batch_size=config.batch_size,
    )


@contextlib.contextmanager
def frozen(parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Train with these parameters held fixed; those that required grad do again afterwards.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with frozen(layer.parameters()):
        ...     layer.weight.requires_grad
        False
        >>> layer.weight.requires_grad
        True
    """
    held = [p for p in parameters if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


def check_training(stage: str, lr: float, batch_size: int | None) -> None:
    """The checks every stage that trains shares, naming the stage and the field.

    Example:
        >>> check_training("finetune", 1e-3, None)
    """
    if not lr > 0:
        raise ConfigError(f"{stage}: lr must be > 0, got {lr}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"{stage}: batch_size must be >= 1, got {batch_size}")


def fit(
    model: nn.Module,
    task: Task,
    settings: TrainSettings,
    ctx: Context | None = None,
    *,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Train `model` in place on the task's train split; returns the loss of every step.

    Seeded by `ctx.seed` (shuffling and dropout), so the same call gives the same weights;
    without a `ctx`, seed 0 with a progress bar (`Context(task)`).
    Masks set on the model (`netchisel.core.masks`) are re-applied after every step, so pruned
    weights stay pruned. `loss_fn` replaces the task's loss (distillation, penalties);
    `before_step(step)` runs after the backward pass and before the optimizer step (gradient
    surgery), `after_step(step)` after it (schedules, regrowth).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        >>> task = classification_task({"train": data, "val": data}, batch_size=8)
        >>> losses = fit(nn.Linear(4, 2), task, TrainSettings(steps=3), Context(task, quiet=True))
        >>> len(losses)
        3
    """
    ctx = ctx if ctx is not None else Context(task)
    loader = task.loader("train", shuffle=True, batch_size=settings.batch_size, seed=ctx.seed)
    if len(loader) == 0:
        raise ConfigError(f"task {task.name!r}: the train split is empty")
    total = (
        settings.steps if settings.steps is not None else math.ceil(settings.epochs * len(loader))
    )
    if total <= 0:
        raise ConfigError(f"training needs at least one step (epochs/steps gave {total})")
    params = [p for p in model.parameters() if p.requires_grad]
    # float16/bfloat16 parameters train through fp32 copies: AdamW's second moment underflows
    # in float16 and its step divides by zero. After each step the copy is rounded back.
    masters = [(p, p.detach().float()) for p in params if p.dtype in HALF_DTYPES]
    by_param = {id(p): m for p, m in masters}
    stepped = [by_param.get(id(p), p) for p in params]
    if settings.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            stepped, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    else:
        opt = torch.optim.AdamW(stepped, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor(step, total, settings)
    )
    device = next((p.device for p in params), torch.device("cpu"))
    torch.manual_seed(ctx.seed)
    was_training = model.training
    model.train()
    losses: list[float] = []
    epochs = 0
    try:
        with ctx.progress(f"training {total} steps", total) as advance:
            while len(losses) < total:
                for batch in loader:
                    batch = tuple(t.to(device) for t in batch)
                    loss = (loss_fn or task.loss)(model, batch)
                    if not torch.isfinite(loss):
                        raise ConfigError(
                            f"training diverged at step {len(losses)} (loss {loss.item()}): "
                            "lower the learning rate"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if settings.grad_clip is not None:
                        nn.utils.clip_grad_norm_(params, settings.grad_clip)
                    if before_step is not None:
                        before_step(len(losses))
                    for param, master in masters:
                        master.grad = None if param.grad is None else param.grad.float()
                    opt.step()
                    with torch.no_grad():
                        for param, master in masters:
                            param.copy_(master)
                    schedule.step()
                    apply_masks_(model)
                    if after_step is not None:
                        after_step(len(losses))
                    losses.append(loss.item())
                    advance(1)
                    if len(losses) >= total:
                        break
                epochs += 1
                if ctx.on_epoch is not None:
                    ctx.on_epoch(epochs, model)
    finally:
        model.train(was_training)
    return losses


def _lr_factor(step: int, total: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return 1.0
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
