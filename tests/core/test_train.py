from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import classification_task
from netchisel.core.train import TrainSettings, fit


def _task() -> object:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = (x[:, 0] > 0).long()
    return classification_task({"train": TensorDataset(x, y), "val": TensorDataset(x, y)}, 32)


def test_fit_learns_a_separable_problem() -> None:
    task = _task()
    model = nn.Linear(2, 2)
    before = task.evaluate(model)["accuracy"]  # type: ignore[attr-defined]
    losses = fit(model, task, TrainSettings(epochs=5, lr=0.1), Context(task, quiet=True))  # type: ignore[arg-type]
    assert len(losses) == 5 * 8
    assert task.evaluate(model)["accuracy"] >= 97.0 > before  # type: ignore[attr-defined]


def test_fit_is_deterministic() -> None:
    task = _task()
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        model = nn.Linear(2, 2)
        fit(model, task, TrainSettings(steps=7), Context(task, quiet=True, seed=4))  # type: ignore[arg-type]
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_divergence_is_a_clear_error() -> None:
    task = _task()
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    with pytest.raises(ConfigError, match=r"diverged at step 0 .*lower the learning rate"):
        fit(model, task, TrainSettings(steps=5), Context(task, quiet=True))  # type: ignore[arg-type]


class _HalfLinear(nn.Module):
    """A Linear whose parameters are float16 and that computes in the input's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.inner.weight.to(x.dtype), self.inner.bias.to(x.dtype))


def test_half_parameters_train_through_fp32_copies_with_adamw() -> None:
    task = _task()
    torch.manual_seed(0)
    model = _HalfLinear()
    plain = torch.optim.AdamW(model.parameters(), lr=0.01)  # what fit avoids: fp16 AdamW
    (model(torch.randn(4, 2)).sum() * 1e-4).backward()  # small gradients, as late in training
    plain.step()
    assert not torch.isfinite(model.inner.weight).all()
    torch.manual_seed(0)
    model = _HalfLinear()
    losses = fit(model, task, TrainSettings(epochs=5, lr=0.1), Context(task, quiet=True))  # type: ignore[arg-type]
    assert model.inner.weight.dtype == torch.float16
    assert all(map(math.isfinite, losses))
    assert task.evaluate(model)["accuracy"] >= 95.0  # type: ignore[attr-defined]
