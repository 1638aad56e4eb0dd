"""Dynamic networks: models that spend less computation on easy inputs.

- `dynamic.early_exit`: exit heads with calibrated thresholds; the model stops at the first
  sure exit (`EarlyExitConfig`, `EarlyExitModel`);
- `dynamic.moe`: feed-forward blocks as mixtures of experts, only the chosen experts running
  (`MoEConfig`);
- `dynamic.width`: per-sample width on sliced weights, chosen by a small gate (`WidthConfig`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> from netchisel.core.task import classification_task
    >>> x = torch.randn(64, 4)
    >>> data = TensorDataset(x, (x[:, 0] > 0).long())
    >>> task = classification_task({"train": data, "val": data}, batch_size=16)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> config = EarlyExitConfig(exits=("1",), steps=4, max_drop=100.0)
    >>> model = dynamic_(net, config, task)
    >>> model.exit_names, model.backbone is net
    (['1'], True)
"""

from __future__ import annotations

from torch import nn

from netchisel.core.registry import apply_stage
from netchisel.core.task import Task
from netchisel.dynamic.early_exit import Calibration, EarlyExitConfig, calibrate_exits
from netchisel.dynamic.exits import EarlyExitModel
from netchisel.dynamic.moe import MoEConfig
from netchisel.dynamic.width import WidthConfig, calibrate_gate
from netchisel.dynamic.width_model import WidthModel

__all__ = [
    "Calibration",
    "EarlyExitConfig",
    "EarlyExitModel",
    "MoEConfig",
    "WidthConfig",
    "WidthModel",
    "calibrate_exits",
    "calibrate_gate",
    "dynamic_",
]


def dynamic_(
    model: nn.Module,
    config: EarlyExitConfig | MoEConfig | WidthConfig,
    task: Task,
    *,
    seed: int = 0,
) -> nn.Module:
    """Run a dynamic stage on `model` and return the dynamic model, which holds `model` (its
    weights are trained in place where the stage trains them): use the returned module."""
    return apply_stage(model, config, task, family="dynamic", seed=seed)
