"""Quantization: `quantize.*` stages of the registry and `netchisel.quantize_` in Python.

`primitives.py` holds the pure tensor functions, `formats/` the stored formats (one object per
format, thin Linear/Conv wrappers), and each stage is one file named like the stage (`rtn.py`,
`gptq.py`, ...). A new method is one file here plus one line in `netchisel/stages.py`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 32))
    >>> _ = quantize_(net, RTNConfig(bits=8))
    >>> type(net[0]).__name__
    'Int8WeightOnlyLinear'
"""

from __future__ import annotations

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.registry import apply_stage
from netchisel.core.task import Task
from netchisel.quantize.awq import AWQConfig
from netchisel.quantize.binary import BinaryConfig
from netchisel.quantize.compressed_tensors import ExportSummary, export_compressed_tensors
from netchisel.quantize.compressed_tensors_load import load_compressed_tensors
from netchisel.quantize.dynamic_int8 import DynamicInt8Config
from netchisel.quantize.gptq import GPTQConfig
from netchisel.quantize.kmeans import KMeansConfig
from netchisel.quantize.mixed import MixedPrecisionConfig
from netchisel.quantize.onnx_int8 import export_onnx_int8  # noqa: F401  (registers onnx_int8)
from netchisel.quantize.primitives import QuantSpec
from netchisel.quantize.qat import QATConfig
from netchisel.quantize.rtn import RTNConfig
from netchisel.quantize.smoothquant import SmoothQuantConfig
from netchisel.quantize.static_int8 import StaticInt8Config

__all__ = [
    "AWQConfig",
    "BinaryConfig",
    "DynamicInt8Config",
    "ExportSummary",
    "GPTQConfig",
    "KMeansConfig",
    "MixedPrecisionConfig",
    "QATConfig",
    "QuantSpec",
    "RTNConfig",
    "SmoothQuantConfig",
    "StaticInt8Config",
    "export_compressed_tensors",
    "load_compressed_tensors",
    "quantize_",
]


def quantize_(
    model: nn.Module, config: StageConfig, task: Task | None = None, *, seed: int = 0
) -> nn.Module:
    """Apply a quantization config to `model` in place (through its registered stage)."""
    return apply_stage(model, config, task, family="quantize", seed=seed)
