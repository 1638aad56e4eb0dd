"""Deployment exports beside an artifact: `model.pt2` (torch.export), `model.onnx`, and
`model.onnx_int8` (a QDQ int8 ONNX file, made by `netchisel.quantize.onnx_int8`)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from netchisel.core.errors import ConfigError, ModelError, first_line

EXPORTS = ("pt2", "onnx", "onnx_int8")  # onnx_int8: QDQ int8 (netchisel.quantize.onnx_int8)


def export_pt2(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Write a torch.export program of `model` traced on `example_inputs`."""
    with _eval(model):
        try:
            program = torch.export.export(model, example_inputs)
        except Exception as e:  # torch raises many types for untraceable code
            raise ModelError(f"torch.export cannot trace the model: {first_line(e)}") from None
        torch.export.save(program, str(path))


def export_onnx(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: Path) -> None:
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
