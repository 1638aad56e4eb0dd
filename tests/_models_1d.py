"""A tiny 1-D CNN of the MNIST-1D shape (input (N, 1, 40), 10 classes) and a random task over it,
shared by the `*_1d.py` tests: Conv1d(1, 25, 5, stride 2) -> ReLU -> BatchNorm1d ->
Conv1d(25, 25, 3) -> ReLU -> pool -> Flatten -> Linear."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.task import Task, classification_task

POOLS = ("max", "avg", "adaptive")


def cnn1d(pool: str = "max") -> nn.Sequential:
    """The 1-D CNN, seeded (the same weights each call), in eval mode; BatchNorm1d has non-trivial
    running statistics so eval differs from an identity."""
    torch.manual_seed(0)
    pooling: nn.Module = {
        "max": nn.MaxPool1d(2),
        "avg": nn.AvgPool1d(2),
        "adaptive": nn.AdaptiveAvgPool1d(5),
    }[pool]
    width = 5 if pool == "adaptive" else 8
    net = nn.Sequential(
        nn.Conv1d(1, 25, 5, stride=2),
        nn.ReLU(),
        nn.BatchNorm1d(25),
        nn.Conv1d(25, 25, 3),
        nn.ReLU(),
        pooling,
        nn.Flatten(),
        nn.Linear(25 * width, 10),
    )
    bn = net[2]
    assert isinstance(bn, nn.BatchNorm1d)
    bn.running_mean.uniform_(0.0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def inputs_1d(n: int = 64) -> Tensor:
    """`n` random sequences (n, 1, 40)."""
    return torch.randn(n, 1, 40, generator=torch.Generator().manual_seed(1))


def task_1d(n: int = 64) -> Task:
    """A 10-class task on `inputs_1d(n)` with random labels (train = val)."""
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    data = TensorDataset(inputs_1d(n), labels)
    return classification_task({"train": data, "val": data}, batch_size=32)


def relative_error(out: Tensor, ref: Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return float((out - ref).abs().max() / ref.abs().max())
