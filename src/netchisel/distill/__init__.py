"""Knowledge distillation: the `distill` stage of the registry and `netchisel.distill.distill_`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> from netchisel.core.task import classification_task
    >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    >>> task = classification_task({"train": data, "val": data}, batch_size=8)
    >>> teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> student = nn.Linear(4, 3)
    >>> _ = distill_(student, DistillConfig(steps=4, temperature=2.0, alpha=0.5), task, teacher)
    >>> sorted(student.state_dict())
    ['bias', 'weight']
"""

from __future__ import annotations

from torch import nn

from netchisel.core.registry import apply_stage
from netchisel.core.task import Task
from netchisel.distill.distiller import DistillConfig, distillation_loss
from netchisel.distill.losses import (
    attention_probabilities,
    attention_probability_loss,
    attention_transfer_loss,
    hint_loss,
    soft_target_loss,
    spatial_attention_map,
    token_kl_loss,
)

__all__ = [
    "DistillConfig",
    "attention_probabilities",
    "attention_probability_loss",
    "attention_transfer_loss",
    "distill_",
    "distillation_loss",
    "hint_loss",
    "soft_target_loss",
    "spatial_attention_map",
    "token_kl_loss",
]


def distill_(
    model: nn.Module,
    config: DistillConfig,
    task: Task,
    teacher: nn.Module | None = None,
    *,
    seed: int = 0,
) -> nn.Module:
    """Distill `teacher` (or the source named by `config.teacher`) into `model`, in place."""
    return apply_stage(model, config, task, family="distill", seed=seed, teacher=teacher)
