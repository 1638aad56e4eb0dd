"""Allowed refusals of the model matrix (operation -> {arch -> why}): prune.

Operations: channels, heads, unstructured.
An entry here must raise a NetChiselError naming a module and leave the model unchanged
(tests/models/test_matrix.py checks it); delete the line when the case succeeds.
"""

from __future__ import annotations

REFUSED: dict[str, dict[str, str]] = {
    "channels": {
        "regnet_x_400mf": "prune.structured: pruning the group of trunk_output.block4.block4-10...",
        "shufflenet_v2_x0_5": "FAILS (not a NetChiselError): ZeroDivisionError: integer divisio...",
        "tv_swin": "ran past 120 s on one thread (stopped by the measuring script)",
    },
    "heads": {
        "hf_t5": "prune.structured: pruning the group of encoder.block.0.layer.0.SelfAttention ...",
        "timm_levit": "prune.structured: nothing to prune among the chosen layers (stages.1.blo...",
        "tv_swin": "ran past 120 s on one thread (stopped by the measuring script)",
    },
    "unstructured": {},
}
