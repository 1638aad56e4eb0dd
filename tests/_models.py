"""The tiny GPT, its language-model task and the correlated layer inputs that the layer-by-layer
calibration tests (GPTQ, AWQ, SparseGPT) share: one copy, so their sizes stay in step."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.task import Task, language_model_task
from netchisel.zoo.models import gpt


def tiny_gpt() -> nn.Module:
    """A 2-block, 32-wide zoo gpt over bytes; seeded, so every call gives the same weights."""
    torch.manual_seed(0)
    return gpt(n_layer=2, n_head=2, n_embd=32, block_size=16)


def lm_task(samples: int = 32) -> Task:
    """`samples` random 16-byte windows (next byte the target), the same for train and val."""
    tokens = torch.randint(0, 256, (samples, 17), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    return language_model_task({"train": data, "val": data}, batch_size=16)


def quiet_context(task: Task | None) -> Context:
    """The context a stage runs in, with no progress output."""
    return Context(task, quiet=True)


def layer_data(rows: int, cols: int, tokens: int) -> tuple[Tensor, Tensor]:
    """A (rows, cols) weight and (tokens, cols) correlated inputs whose first 4 features are 10x
    larger, as LLM activations have outlier features."""
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5
    x = torch.randn(tokens, cols, generator=g) @ mixing + 0.1 * torch.randn(
        tokens, cols, generator=g
    )
    x[:, :4] *= 10.0
    return torch.randn(rows, cols, generator=g), x
