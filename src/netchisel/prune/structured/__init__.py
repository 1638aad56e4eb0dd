"""`prune.structured`: remove channels, attention heads or whole residual blocks for real.

Split like Torch-Pruning (dependency graph, importance, pruner), one idea per file:

- `config.py`: `StructuredConfig`, the stage's settings;
- `graph.py`: running and tracing the model, Torch-Pruning's dependency graph of couplings;
- `scores.py`: our criteria (`prune/importance.py`, plus `bn_scale`) as a Torch-Pruning
  `Importance`: a dependency group in, one score per channel out;
- `units.py`: what one keep-decision covers (a channel group, an attention module's heads, a
  block), found and scored, and the groups left alone with why;
- `plan.py`: which channels each unit keeps (ratio per unit or one global ranking with a floor,
  `round_to`), and the bisection for a MAC target;
- `surgery.py`: the cut itself, checked against the original output shapes, under the one
  rollback guard, with the unit that breaks a forward pass named;
- `apply.py`: the registered stage, which only orchestrates.

To add a criterion, add it to `prune/importance.py` (it is then a valid `importance:` here).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from netchisel.core.context import Context
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 2))
    >>> config = StructuredConfig(ratio=0.5, input_shape=(1, 3, 8, 8))
    >>> prune_structured(net, config, Context(task=None, quiet=True))[0].out_channels
    4
"""

from __future__ import annotations

from netchisel.prune.structured.apply import prune_structured
from netchisel.prune.structured.config import IMPORTANCES, StructuredConfig
from netchisel.prune.structured.plan import kept_count
from netchisel.prune.structured.scores import CriterionImportance
from netchisel.prune.structured.units import channel_groups

__all__ = [
    "IMPORTANCES",
    "CriterionImportance",
    "StructuredConfig",
    "channel_groups",
    "kept_count",
    "prune_structured",
]
