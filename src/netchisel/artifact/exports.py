"""Deployment exports beside an artifact, a registry by name: `model.pt2` (torch.export) and
`model.onnx` here; `model.onnx_int8` (QDQ int8) is registered by `netchisel.quantize`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from netchisel.core.errors import ConfigError, ModelError, first_line

Inputs = tuple[torch.Tensor, ...]
Calibration = Sequence[Inputs] | None  # model inputs for exports that quantize (onnx_int8)
ExportFn = Callable[[nn.Module, Inputs, Path, Calibration], None]
F = TypeVar("F", bound=ExportFn)
_EXPORTS: dict[str, ExportFn] = {}
_WITHOUT_INPUTS: set[str] = set()  # exports that write the weights as they are (no tracing)


def register_export(name: str, *, needs_inputs: bool = True) -> Callable[[F], F]:
    """Make `fn(model, example_inputs, path, calibration)` the writer of `model.<name>`.

    The families add theirs (quantize: `onnx_int8`, `compressed_tensors`); the artifact format
    imports none of them. `needs_inputs=False`: the export does not run the model, so saving
    without example inputs is fine (it gets an empty tuple).
    """

    def decorate(fn: F) -> F:
        _EXPORTS[name] = fn
        if not needs_inputs:
            _WITHOUT_INPUTS.add(name)
        return fn

    return decorate


def needs_inputs(name: str) -> bool:
    """Whether export `name` runs the model on example inputs (pt2 and onnx trace it)."""
    return name not in _WITHOUT_INPUTS


def export_names() -> list[str]:
    """The exports `save(..., export=[...])` and a recipe's `export:` may name."""
    return list(_EXPORTS)


def get_export(name: str) -> ExportFn:
    """The writer of `model.<name>`; a ConfigError listing the known ones."""
    if name not in _EXPORTS:
        raise ConfigError(f"unknown export {name!r} (known: {', '.join(_EXPORTS)})")
    return _EXPORTS[name]


@register_export("pt2")
def export_pt2(
    model: nn.Module,
    example_inputs: Inputs,
    path: Path,
    calibration: Sequence[Inputs] | None = None,
) -> None:
    """Write a torch.export program of `model` traced on `example_inputs`."""
    with _eval(model):
        try:
            program = torch.export.export(model, example_inputs)
        except Exception as e:  # torch raises many types for untraceable code
            raise ModelError(f"torch.export cannot trace the model: {first_line(e)}") from None
        torch.export.save(program, str(path))


@register_export("onnx")
def export_onnx(
    model: nn.Module,
    example_inputs: Inputs,
    path: Path,
    calibration: Sequence[Inputs] | None = None,
) -> None:
    """Write an ONNX graph of `model` (the onnx extra: onnx, onnxscript)."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx extra: pip install 'netchisel[onnx]'"
        ) from None
    # The exporter prints progress and warns about optional packages; keep the user's output clean.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with (
            _eval(model),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example_inputs, str(path), dynamo=True, external_data=False)
    except (ConfigError, ModelError):
        raise
    except Exception as e:
        raise ModelError(f"ONNX export failed: {first_line(e)}") from None
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def _eval(model: nn.Module):  # type: ignore[no-untyped-def]
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
