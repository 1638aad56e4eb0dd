from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.errors import ConfigError
from netchisel.core.task import (
    classification_task,
    custom_task,
    embedding_task,
    language_model_task,
    topk_agreement,
)


class Fixed(nn.Module):
    """Predicts class = first input feature, always."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float() * 10


def test_classification_accuracy_is_exact() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [1.0]])
    y = torch.tensor([0, 1, 1, 1])
    task = classification_task({"val": TensorDataset(x, y)}, batch_size=3)
    metrics = task.evaluate(Fixed())
    assert metrics["accuracy"] == 75.0
    # Wrong sample: logits [0, 0, 10] against label 1 -> loss 10 + log(2 + e^-10)... computed:
    expected = float(nn.functional.cross_entropy(Fixed()(x), y))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)


def test_language_model_metrics() -> None:
    class Uniform(nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*idx.shape, 16)

    tokens = torch.randint(0, 16, (5, 8))
    task = language_model_task({"val": TensorDataset(tokens, tokens)}, batch_size=2)
    m = task.evaluate(Uniform())
    assert m["perplexity"] == pytest.approx(16.0, rel=1e-5)
    assert m["bits_per_token"] == pytest.approx(4.0, rel=1e-5)
    assert m["loss"] == pytest.approx(math.log(16), rel=1e-6)


def test_embedding_task_is_perfect_for_the_reference_and_worse_for_noise() -> None:
    ref = nn.Linear(6, 4)
    data = TensorDataset(torch.randn(20, 6))
    task = embedding_task({"val": data}, ref, top_k=3)
    same = task.evaluate(ref)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert same["topk_agreement"] == 1.0
    other = task.evaluate(nn.Linear(6, 4))
    assert other["cosine"] < 0.9


def test_topk_agreement_counts_shared_neighbours() -> None:
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    # nearest neighbour of each row: a -> [1, 0, 3, 2]; b -> [2, 3, 0, 1]: none shared.
    assert topk_agreement(a, b, 1) == 0.0
    assert topk_agreement(a, a, 1) == 1.0


def test_missing_split_and_empty_calibration_are_errors() -> None:
    task = classification_task({"val": TensorDataset(torch.zeros(2, 1), torch.zeros(2).long())})
    with pytest.raises(ConfigError, match="has no 'train' split"):
        task.loader("train")
    with pytest.raises(ConfigError, match="at least one sample"):
        task.calibration_batches(0, "val")


def test_calibration_batches_take_exactly_n() -> None:
    data = TensorDataset(torch.arange(10.0).unsqueeze(1), torch.zeros(10).long())
    task = classification_task({"train": data}, batch_size=4)
    batches = task.calibration_batches(7)
    assert sum(len(b[0]) for b in batches) == 7


def test_evaluate_restores_training_flag() -> None:
    task = classification_task({"val": TensorDataset(torch.zeros(2, 1), torch.zeros(2).long())})
    model = Fixed().train()
    task.evaluate(model)
    assert model.training


def test_custom_task_uses_the_callable() -> None:
    task = custom_task(lambda m: {"score": 2.5}, [torch.zeros(3, 4)], "score")
    assert task.evaluate(nn.Linear(4, 1)) == {"score": 2.5}
    assert task.example_inputs(2)[0].shape == (2, 4)
    with pytest.raises(ConfigError, match="has no loss"):
        task.loss(nn.Linear(4, 1), (torch.zeros(1, 4),))


def test_example_inputs_have_exactly_the_asked_batch() -> None:
    data = TensorDataset(torch.arange(5.0).unsqueeze(1), torch.zeros(5).long())
    task = classification_task({"val": data})
    (x,) = task.example_inputs(12)
    assert x.shape == (12, 1) and x[:, 0].tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
    with pytest.raises(ConfigError, match="batch size must be >= 1"):
        task.example_inputs(0)
