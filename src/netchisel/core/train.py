"""The one training loop: zoo reference training, the `finetune` stage and recovery use it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

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


def fit(
    model: nn.Module,
    task: Task,
    settings: TrainSettings,
    ctx: Context,
    *,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Train `model` in place on the task's train split; returns the loss of every step.

    Seeded by `ctx.seed` (shuffling and dropout), so the same call gives the same weights.
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
