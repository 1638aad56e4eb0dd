"""Distillation into a 1-D student: a 1-D CNN teacher, a narrower 1-D student."""

from __future__ import annotations

import torch
from torch import nn

import netchisel as nc
from tests._models_1d import cnn1d, inputs_1d, task_1d


def test_a_1d_student_learns_from_a_1d_teacher() -> None:
    torch.manual_seed(1)
    student = nn.Sequential(
        nn.Conv1d(1, 8, 5, stride=2),
        nn.ReLU(),
        nn.BatchNorm1d(8),
        nn.AdaptiveAvgPool1d(4),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    teacher = cnn1d()
    x = inputs_1d(64)

    def gap() -> float:
        with torch.no_grad():
            t = teacher.eval()(x).softmax(-1)
            log_p = student.eval()(x).log_softmax(-1)
            return float(nn.functional.kl_div(log_p, t, reduction="sum"))

    before = gap()
    nc.distill_(student, nc.distill.DistillConfig(steps=30, lr=1e-2, alpha=0.0), task_1d(), teacher)
    assert gap() < 0.7 * before
