"""A user's own module class, importable by name (as a user's package would be)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Scaled(nn.Module):
    """Multiplies its input by a constant factor."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


class Versioned(nn.Module):
    """Checks the `version` its state dict carries, as torchvision's MNASNet does: without it
    (an old checkpoint) it would change its own structure; here it records what it saw."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.seen_version: int | None = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.seen_version = local_metadata.get("version")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class Rotary(nn.Module):
    """A non-persistent buffer (a rotary embedding's inv_freq) and a dict cache of tensors
    filled by eval forwards (timm LeViT's attention_bias_cache)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10.0 ** torch.arange(dim)), persistent=False)
        self.scale_cache: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if "cpu" not in self.scale_cache:
            self.scale_cache["cpu"] = self.inv_freq * 2
        return x * self.scale_cache["cpu"]
