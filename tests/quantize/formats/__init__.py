"""Tests of quantize/formats/, one file per format file."""

from __future__ import annotations

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float."""
    a, b = a.detach(), b.detach()
    return float((a.float() - b.float()).norm() / b.float().norm())
