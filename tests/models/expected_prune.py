"""Allowed refusals of the model matrix (operation -> {arch -> why}): prune.

Operations: channels, heads, unstructured.
An entry here must raise a NetChiselError naming a module and leave the model unchanged
(tests/models/test_matrix.py checks it); delete the line when the case succeeds.
"""

from __future__ import annotations

REFUSED: dict[str, dict[str, str]] = {
    "channels": {},
    "heads": {
        # LeViT's attention reshapes q/k/v with per-head key and value widths and an
        # attention-bias table per head: no layout netchisel cuts, and the graph cannot map it.
        "timm_levit": "prune.structured: nothing to prune among the chosen layers (stages.1.blo...",
        # Swin's window attention derives head_dim from its input width and keeps a relative
        # position bias table per head: pruning its heads needs a replacement forward.
        "tv_swin": "features.1.0.attn: its heads also index its own parameter relative_position...",
    },
    "unstructured": {},
}
