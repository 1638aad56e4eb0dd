"""The builder reference every zoo model is marked with (what artifacts name to rebuild it)."""

from __future__ import annotations

from typing import Any

from torch import nn

from netchisel.core.modules import mark_builder


def marked(model: nn.Module, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Mark `model` as built by `netchisel.zoo.models:<name>(**kwargs)`.

    The reference names the package, not the file the builder lives in, so artifacts saved
    before the models were split by family still name them right.

    Example:
        >>> from netchisel.core.modules import builder_of
        >>> builder_of(marked(nn.Linear(2, 2), "mlp", {"in_features": 2}))[0]
        'netchisel.zoo.models:mlp'
    """
    return mark_builder(model, f"netchisel.zoo.models:{name}", kwargs)
