"""Low-rank factorization and architecture rewrites: `factorize.*` stages and `factorize_`.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> _ = factorize_(net, SVDConfig(rank=8, layers=("0",)))
    >>> [tuple(m.weight.shape) for m in net[0]]
    [(8, 64), (64, 8)]
"""

from __future__ import annotations

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.registry import apply_stage
from netchisel.core.task import Task
from netchisel.factorize.cp import CPConfig
from netchisel.factorize.separable import SeparableConfig
from netchisel.factorize.svd import SVDConfig
from netchisel.factorize.tucker import TuckerConfig

__all__ = ["CPConfig", "SVDConfig", "SeparableConfig", "TuckerConfig", "factorize_"]


def factorize_(
    model: nn.Module, config: StageConfig, task: Task | None = None, *, seed: int = 0
) -> nn.Module:
    """Apply a factorization config to `model` in place (through its registered stage)."""
    return apply_stage(model, config, task, family="factorize", seed=seed)
