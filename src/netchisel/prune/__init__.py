"""Pruning: `prune.*` stages of the registry and `netchisel.prune_` in Python.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = prune_(net, UnstructuredConfig(sparsity=0.5))
    >>> int((net[0].weight == 0).sum())
    32
"""

from __future__ import annotations

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.registry import apply_stage
from netchisel.core.task import Task
from netchisel.prune.lottery import LotteryConfig
from netchisel.prune.penalty import PenaltyConfig
from netchisel.prune.schedule import GradualConfig, IterativeConfig
from netchisel.prune.sensitivity import SensitivityConfig
from netchisel.prune.sparse_training import SparseTrainingConfig
from netchisel.prune.sparsegpt import SparseGPTConfig
from netchisel.prune.structured import StructuredConfig
from netchisel.prune.unstructured import UnstructuredConfig

__all__ = [
    "GradualConfig",
    "IterativeConfig",
    "LotteryConfig",
    "PenaltyConfig",
    "SensitivityConfig",
    "SparseGPTConfig",
    "SparseTrainingConfig",
    "StructuredConfig",
    "UnstructuredConfig",
    "prune_",
]


def prune_(
    model: nn.Module, config: StageConfig, task: Task | None = None, *, seed: int = 0
) -> nn.Module:
    """Apply a pruning config to `model` in place (through its registered stage)."""
    return apply_stage(model, config, task, family="prune", seed=seed)
