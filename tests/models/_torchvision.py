"""Import torchvision and timm for the model matrix, kept apart from the rest of the suite.

They are installed by `make` into `.venv/models` (`pip install --target`), not into the venv:
transformers imports torchvision whenever it can find it, and torchvision's CUDA wheel does not
import on CPU torch (below), so a torchvision in the venv broke every transformers model.
`torchvision()` puts that directory on `sys.path` only when a test asks for it.

The torchvision 0.28 wheel on PyPI is built against CUDA torch; on torch 2.13.0+cpu its
`torchvision._C` fails to load, torchvision then skips every op it would register (its
`extension._has_ops()` is False), except two fake-tensor registrations for `torchvision::nms`
and `torchvision::qnms` that it makes unconditionally, which raise "operator torchvision::nms
does not exist" and abort `import torchvision`. Defining those two schemas first (no kernel:
calling them raises) lets torchvision import; the models need neither op. Detection models and
`torchvision.ops.nms` stay unusable. With a torchvision built for CPU (the pytorch.org CPU
index) nothing is defined here: the real extension already has the ops.

Example:
    >>> tv = torchvision()
    >>> tv.models.resnet18(weights=None).fc.out_features
    1000
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

from netchisel.core.errors import NetChiselError

# Where `make` installs the two (see the Makefile); NETCHISEL_MODELS_PATH overrides it.
TARGET = Path(__file__).resolve().parents[2] / ".venv" / "models"

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY: list[torch.library.Library] = []  # kept alive: the schemas live as long as it does


def torchvision() -> types.ModuleType:
    """`import torchvision`, after defining the two op schemas its import needs if missing."""
    _on_path()
    if not _LIBRARY and not hasattr(torch.ops.torchvision, "nms"):
        lib = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            lib.define(schema)
        _LIBRARY.append(lib)
    import torchvision as tv

    return tv


def timm() -> types.ModuleType:
    """`import timm` (which imports torchvision) after `torchvision()`."""
    torchvision()
    import timm as tm

    return tm


def _on_path() -> None:
    import os

    where = Path(os.environ.get("NETCHISEL_MODELS_PATH", TARGET))
    if not (where / "torchvision").is_dir():
        raise NetChiselError(f"torchvision is not installed in {where}: run 'make' (see Makefile)")
    if str(where) not in sys.path:
        sys.path.append(str(where))
