"""Hugging Face configs after head pruning: the head counts follow the cut layers.

Why: `save_pretrained` writes `config.json`, and `from_pretrained` (or a serving stack) builds
every attention layer from `num_attention_heads`, `num_key_value_heads` and `head_dim`. Left at
the dense values, the checkpoint does not load. A config holds one count for all layers, so it
is updated only when every attention layer reading it kept the same heads and the config states
`head_dim` (Llama, Mistral, Qwen2 ...); otherwise (per-layer counts, or a head width derived as
hidden_size / heads, as GPT-2 and BERT do) it stays, and only `netchisel.save` keeps the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netchisel.prune.structured.attention import Layout, attention_layouts


def _counts(config: Any) -> tuple[int, int] | None:
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", heads)
    if isinstance(heads, int) and isinstance(kv, int):
        return heads, kv
    return None


def sync_head_counts(model: nn.Module) -> None:
    """Set each Hugging Face config's head counts to those its attention layers now have, when
    all of them agree and the config states the same `head_dim`; else leave it.

    Example:
        >>> sync_head_counts(nn.Linear(2, 2))  # no attention, nothing to do
    """
    by_config: dict[int, tuple[Any, list[Layout]]] = {}
    for name, layout in attention_layouts(model).items():
        config = getattr(model.get_submodule(name), "config", None)
        if _counts(config) is not None:
            by_config.setdefault(id(config), (config, []))[1].append(layout)
    for config, layouts in by_config.values():
        found = {(lay.heads, lay.kv_heads, lay.head_dim) for lay in layouts}
        head_dim = getattr(config, "head_dim", None)
        if len(found) != 1 or not isinstance(head_dim, int) or isinstance(head_dim, bool):
            continue
        heads, kv, width = found.pop()
        if width != head_dim:
            continue
        config.num_attention_heads = heads
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = kv
