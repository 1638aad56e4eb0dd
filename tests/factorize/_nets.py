"""The small conv net the conv-rewrite tests share: every kind of conv a rewrite meets."""

from __future__ import annotations

import torch
from torch import nn


def conv_net() -> nn.Sequential:
    """A 3x3 conv with bias, a strided one without, a depthwise 3x3 and a 1x1 (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.Conv2d(32, 8, 1),
    )
