"""Tiny backbones and tasks shared by the dynamic tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.task import Task, classification_task


def conv_chain(seed: int = 0) -> nn.Sequential:
    """(N, 1, 8) -> Conv1d(1, 4, 3) ReLU Conv1d(4, 4, 3) ReLU Flatten Linear(32, 3).

    MACs per sample: conv 4*1*3*8 = 96, conv 4*4*3*8 = 384, linear 32*3 = 96.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 3),
    )


class Calls:
    """Counts the calls and the samples a module sees (a forward hook)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.samples = 0
        self.handle = module.register_forward_hook(self._seen)

    def _seen(self, module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        self.calls += 1
        self.samples += int(args[0].shape[0])


def labelled_by(model: nn.Module, n: int = 192, seed: int = 0) -> Task:
    """Inputs (N, 1, 8) labelled by `model`'s own argmax: it scores 100% on every split."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(-1)
    third = n // 3
    splits = {
        name: TensorDataset(x[i * third : (i + 1) * third], y[i * third : (i + 1) * third])
        for i, name in enumerate(("train", "val", "test"))
    }
    return classification_task(splits, batch_size=32)
