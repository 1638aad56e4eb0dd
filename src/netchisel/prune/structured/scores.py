"""Scores: one number per channel (or block) from our element criteria (`prune/importance.py`).

`CriterionImportance` follows Torch-Pruning's `Importance` interface (a dependency group in,
one score per channel out), so a new criterion is an entry in `prune/importance.py` and works
here, in `tp.pruner.MetaPruner`, and in the unstructured stages alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import Tensor, nn

from netchisel.core.conv1d import is_conv1d
from netchisel.core.errors import ConfigError
from netchisel.prune.importance import NEEDS, LayerStats, get_criterion
from netchisel.prune.structured.config import IMPORTANCES, STAGE, StructuredConfig
from netchisel.prune.structured.graph import LAYER_TYPES

SCORED_TYPES: tuple[type[nn.Module], ...] = (*LAYER_TYPES, nn.Embedding)
"""Layers whose weights score the channels of a group (an Embedding's columns are channels)."""


class CriterionImportance(tp.importance.Importance):  # type: ignore[misc]
    """One of our criteria as a Torch-Pruning importance: dependency group -> score per channel.

    A channel's score is the sum of the criterion's element scores over every weight slice the
    group removes with it: the output rows of Conv/Linear layers (columns of an Embedding) and
    the input columns of the layers that read it. `bn_scale` is instead the sum of |gamma| of
    the group's BatchNorms (network slimming, Liu et al. 2017). Because it follows
    Torch-Pruning's interface, it also plugs into `tp.pruner.MetaPruner`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
        >>> dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 1, 8, 8))
        >>> group = dg.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
        >>> CriterionImportance("l1")(group).shape
        torch.Size([4])
    """

    def __init__(self, importance: str, stats: dict[nn.Module, LayerStats] | None = None) -> None:
        if importance not in IMPORTANCES:
            raise ConfigError(
                f"unknown importance {importance!r} (known: {', '.join(IMPORTANCES)})"
            )
        self.importance = importance
        self.stats = stats or {}

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        """Scores for the root channels of `group` (None when no layer in it has weights)."""
        dg = group._DG
        channels = len(group[0].idxs)
        total = torch.zeros(channels, dtype=torch.float64)
        found = False
        for item in group:
            roots = item.root_idxs
            if not item.idxs or roots is None or any(r is None for r in roots):
                continue
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            scores = self._slice_scores(item.dep.target.module, item.idxs, out)
            if scores is None:
                continue
            total.scatter_add_(0, torch.tensor(roots), scores.double().cpu())
            found = True
        return total.float() if found else None

    def _slice_scores(self, layer: Any, idxs: list[int], out: bool) -> Tensor | None:
        if self.importance == "bn_scale":
            if out and isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
                return layer.weight.detach().abs()[idxs]
            return None
        if not isinstance(layer, SCORED_TYPES) and not is_conv1d(layer):
            return None
        weight = layer.get_parameter("weight")
        if NEEDS.get(self.importance) and layer not in self.stats and is_conv1d(layer):
            raise ConfigError(
                f"{STAGE}.importance: {self.importance} needs input statistics, which are "
                f"not collected for {type(layer).__name__} layers: use l1, l2 or random"
            )
        element = get_criterion(self.importance)(weight, self.stats.get(layer, LayerStats()))
        if isinstance(layer, nn.Embedding):
            dim = 1  # Torch-Pruning prunes an Embedding's features, its columns
        elif is_conv1d(layer):
            dim = 1 if out else 0  # Hugging Face's Conv1D stores its weight (in, out)
        elif isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
            dim = 1 if out else 0
        else:
            dim = 0 if out else 1
        if not out and isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            return None  # a depthwise conv's channels are counted once, by its output rows
        per_channel = element.movedim(dim, 0).reshape(element.shape[dim], -1).sum(dim=1)
        return per_channel[idxs]


def block_score(
    name: str, block: nn.Module, config: StructuredConfig, stats: dict[nn.Module, LayerStats]
) -> Tensor:
    """Mean element score over the block's weights (bn_scale: mean |gamma| of its BatchNorms)."""
    if config.importance == "bn_scale":
        gammas = [
            m.weight.detach().abs()
            for m in block.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        ]
        if not gammas:
            raise ConfigError(
                f"{STAGE}: bn_scale scores blocks by their BatchNorms; block {name} has none: "
                "exclude it or use importance l1"
            )
        return torch.cat(gammas).mean().reshape(1)
    criterion = get_criterion(config.importance)
    total, count = 0.0, 0
    for layer in block.modules():
        if isinstance(layer, SCORED_TYPES):
            weight = layer.get_parameter("weight")
            total += float(criterion(weight, stats.get(layer, LayerStats())).double().sum())
            count += weight.numel()
    return torch.tensor([total / max(count, 1)])
