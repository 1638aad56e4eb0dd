"""netchisel: make neural networks smaller, faster and cheaper, and prove it with measurements.

Example:
    >>> import torch, netchisel as nc
    >>> nc.profile(torch.nn.Linear(4, 2), torch.zeros(1, 4), latency=False, on_disk=False).flops
    18
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> net = nc.prune_(net, nc.prune.UnstructuredConfig(sparsity=0.5))
    >>> int((net[0].weight == 0).sum())
    4
"""

from __future__ import annotations

import importlib
from types import ModuleType

from netchisel.artifact.store import load, save
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ArtifactError, ConfigError, ModelError, NetChiselError
from netchisel.core.modules import builder
from netchisel.core.registry import register
from netchisel.core.task import (
    Task,
    classification_task,
    custom_task,
    embedding_task,
    language_model_task,
)
from netchisel.core.train import TrainSettings, fit
from netchisel.distill import distill_
from netchisel.dynamic import dynamic_
from netchisel.factorize import factorize_
from netchisel.measure import Profile, count_flops, measure_latency, profile
from netchisel.pipeline.recipe import load_recipe
from netchisel.pipeline.runner import RunResult, run_recipe
from netchisel.prune import prune_
from netchisel.quantize import quantize_
from netchisel.stages import get_stage, stage_names

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    """`nc.zoo` and `nc.search` without an explicit import; imported on first use (search
    needs the search extra, optuna)."""
    if name in ("zoo", "search"):
        return importlib.import_module(f"netchisel.{name}")
    raise AttributeError(f"module 'netchisel' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "ConfigError",
    "Context",
    "ModelError",
    "NetChiselError",
    "Profile",
    "RunResult",
    "StageConfig",
    "Task",
    "TrainSettings",
    "builder",
    "classification_task",
    "count_flops",
    "custom_task",
    "distill_",
    "dynamic_",
    "embedding_task",
    "factorize_",
    "fit",
    "get_stage",
    "language_model_task",
    "load",
    "load_recipe",
    "measure_latency",
    "profile",
    "prune_",
    "quantize_",
    "register",
    "run_recipe",
    "save",
    "stage_names",
]
