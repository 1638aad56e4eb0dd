"""Epoch reports (a search's pruner) see the model being trained: under distill, the student."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.task import classification_task
from netchisel.distill.distiller import DistillConfig
from netchisel.stages import get_stage


def test_epoch_reports_name_the_student() -> None:
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    task = classification_task({"train": data, "val": data}, batch_size=8)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    seen: list[tuple[int, nn.Module]] = []
    ctx = Context(task, teacher, quiet=True, on_epoch=lambda e, m: seen.append((e, m)))
    get_stage("distill")(student, DistillConfig(epochs=2, lr=0.01), ctx)
    assert [e for e, _ in seen] == [1, 2]  # 40 samples / batch 8 = 5 steps an epoch
    assert all(m is student for _, m in seen)
