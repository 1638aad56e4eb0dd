from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import classification_task
from netchisel.core.train import TrainConfig, TrainSettings, fit, train_settings


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


def test_fit_without_a_context_seeds_with_zero() -> None:
    task = _task()
    weights = []
    for ctx in (None, Context(task, quiet=True)):  # type: ignore[arg-type]
        torch.manual_seed(1)
        model = nn.Linear(2, 2)
        fit(model, task, TrainSettings(steps=4), ctx)  # type: ignore[arg-type]
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_every_training_stage_shares_train_config() -> None:
    from netchisel.core.finetune import FinetuneConfig
    from netchisel.stages import STAGES

    training = sorted(c.NAME for c in STAGES if issubclass(c, TrainConfig))
    assert training == [
        "distill",
        "dynamic.early_exit",
        "dynamic.moe",
        "dynamic.width",
        "finetune",
        "prune.gradual",
        "prune.iterative",
        "prune.lottery",
        "prune.penalty",
        "prune.sparse_training",
        "quantize.binary",
        "quantize.kmeans",
        "quantize.qat",
    ]
    for config in STAGES:
        fields = config.field_names()
        assert "schedule" not in fields, config.NAME  # one name: lr_schedule
        assert sorted(fields) == sorted(f.name for f in dataclasses.fields(config))
    assert FinetuneConfig.field_names() == [
        *("version", "epochs", "steps"),
        *("lr", "optimizer", "weight_decay", "lr_schedule", "batch_size"),
    ]


@pytest.mark.parametrize("name", ["finetune", "distill", "prune.gradual", "quantize.qat"])
def test_the_old_name_schedule_still_reads_as_lr_schedule(name: str) -> None:
    from netchisel.stages import get_stage

    config_class = get_stage(name).config_class
    config = config_class.from_dict({"schedule": "constant"})
    assert isinstance(config, TrainConfig) and config.lr_schedule == "constant"
    assert "schedule" not in config.to_dict()
    with pytest.raises(ConfigError, match="'schedule' is the old name of 'lr_schedule'"):
        config_class.from_dict({"schedule": "constant", "lr_schedule": "cosine"}, name)


def test_train_settings_carry_the_training_fields() -> None:
    from netchisel.core.finetune import FinetuneConfig

    config = FinetuneConfig(epochs=2.5, lr=0.1, optimizer="sgd", lr_schedule="constant")
    settings = train_settings(config, config.steps, config.epochs)
    assert settings == TrainSettings(
        epochs=2.5, lr=0.1, optimizer="sgd", schedule="constant", batch_size=None
    )
