"""Layer-by-layer calibration: one engine (`run_layerwise`) that GPTQ, SparseGPT, AWQ and
SmoothQuant are `solve` functions over, and the layer Hessian their second-order solvers share.

Example:
    >>> Layerwise("prune.sparsegpt", 128, blocks="").blocks
    ''
"""

from __future__ import annotations

from netchisel.calib.inputs import LayerInputs, calibration_inputs, collect_inputs
from netchisel.calib.layerwise import Calibration, Layerwise, Solve, run_layerwise
from netchisel.calib.trace import call_groups, find_blocks, hooks

__all__ = [
    "Calibration",
    "LayerInputs",
    "Layerwise",
    "Solve",
    "calibration_inputs",
    "call_groups",
    "collect_inputs",
    "find_blocks",
    "hooks",
    "run_layerwise",
]
