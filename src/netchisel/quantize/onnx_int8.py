"""ONNX Runtime int8: a QDQ (QuantizeLinear/DequantizeLinear) int8 ONNX file of a model.

With calibration batches from the task, the model is exported to ONNX, pre-processed
(`quant_pre_process`: shape inference and graph fusions) and quantized by ONNX Runtime's
`quantize_static` (QDQ format, int8 weights per channel, uint8 activations, min-max
calibration). ONNX Runtime places the quantize/dequantize pairs where its own int8 kernels can
absorb them (`QLinearConv`, `QLinearAdd`, ...), which is what makes the file fast. A model
already quantized by `quantize.static_int8` goes the same way through its float twin (the
dequantized weights, BatchNorms folded), so only its activation scales are recalibrated.

Without calibration, a static int8 model is exported with its own scales: its layers emit the
quantize -> dequantize pattern under export, which the ONNX exporter writes as QDQ nodes, so
PyTorch and ONNX Runtime compute the same int8 model. ONNX Runtime then fuses only the layers
whose output is re-quantized right away (a convolution before a residual add stays a float
convolution on dequantized weights), so on ResNets this file is slower than fp32
(`bench/results/quant_static_cnn.json`).

The `onnxruntime` latency backend (`profile.latency.onnx_file_runner`) times the file. It is
written to a temp name and renamed, so a failure leaves nothing half-written.

Example:
    >>> export_onnx_int8(model, (x,), Path("model.onnx_int8"), calibration=[(x,)])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.artifact.exports import export_onnx, register_export
from netchisel.core.errors import ConfigError, ModelError, first_line
from netchisel.quantize.formats.static_int8 import float_twin, full_int8_range, has_static_int8

Batch = tuple[Tensor, ...]


@register_export("onnx_int8")
def export_onnx_int8(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    calibration: Sequence[Batch] | None = None,
) -> None:
    """Write a QDQ int8 ONNX file of `model` (traced at the shapes of `example_inputs`).

    `calibration` (model inputs, any batch sizes): ONNX Runtime quantizes on it. Without it a
    float model is a ConfigError and a static int8 model is exported with its own scales.
    """
    path = Path(path)
    if has_static_int8(model):
        if not calibration:
            export_onnx(model, example_inputs, path)
            return
        model = float_twin(model)
    if not calibration:
        raise ConfigError(
            "export 'onnx_int8' of a float model needs calibration data: pass calibration= "
            "(model inputs from the task), or quantize it with quantize.static_int8 first"
        )
    ort_quant = _ort_quantization()
    with tempfile.TemporaryDirectory() as tmp:
        float_path, pre_path, out = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "q")
        export_onnx(model, example_inputs, float_path)
        names = _input_names(float_path)
        feeds = [
            dict(zip(names, (t.numpy() for t in batch), strict=False))
            for batch in rebatch(calibration, len(example_inputs[0]))
        ]
        try:
            with _quiet():
                ort_quant.shape_inference.quant_pre_process(str(float_path), str(pre_path))
                ort_quant.quantize_static(
                    str(pre_path),
                    str(out),
                    _Reader(feeds),
                    quant_format=ort_quant.QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=ort_quant.QuantType.QUInt8,
                    weight_type=ort_quant.QuantType.QInt8,
                    calibrate_method=ort_quant.CalibrationMethod.MinMax,
                    # 7-bit weights where the CPU's int8 kernels saturate (no VNNI), as
                    # ONNX Runtime advises; the same CPUs get 7-bit inputs in static int8.
                    reduce_range=not full_int8_range(),
                )
        except (ConfigError, ModelError):
            raise
        except Exception as e:
            raise ModelError(f"ONNX Runtime quantization failed: {first_line(e)}") from None
        os.replace(out, path)


def rebatch(batches: Sequence[Batch], batch_size: int) -> list[Batch]:
    """The samples of `batches` in batches of exactly `batch_size` (the ONNX graph's static
    batch); a last partial batch is dropped, or, if it is the only one, filled by repeating.

    Example:
        >>> [b[0].shape[0] for b in rebatch([(torch.zeros(5, 2),), (torch.zeros(4, 2),)], 4)]
        [4, 4]
    """
    inputs = [torch.cat([b[i].detach().cpu() for b in batches]) for i in range(len(batches[0]))]
    total = len(inputs[0])
    if total == 0:
        raise ConfigError("export 'onnx_int8': the calibration batches hold no samples")
    if total < batch_size:
        repeats = -(-batch_size // total)
        inputs = [t.repeat(repeats, *[1] * (t.dim() - 1)) for t in inputs]
        total = len(inputs[0])
    return [
        tuple(t[start : start + batch_size] for t in inputs)
        for start in range(0, total - batch_size + 1, batch_size)
    ]


class _Reader:
    """A calibration data reader for ONNX Runtime (it needs only `get_next`)."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def _ort_quantization() -> Any:
    try:
        import onnxruntime.quantization as ort_quant
        import onnxruntime.quantization.shape_inference  # noqa: F401
    except ImportError:
        raise ConfigError(
            "export 'onnx_int8' needs the onnx extra: pip install 'netchisel[onnx]'"
        ) from None
    return ort_quant


def _input_names(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The quantization tool logs and prints its progress; keep the user's output clean.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
