"""ONNX Runtime int8 (QDQ) export: of a static int8 model, and of a float one calibrated."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import Task
from netchisel.core.train import TrainSettings, fit
from netchisel.measure.latency import onnx_file_runner
from netchisel.quantize import StaticInt8Config, quantize_
from netchisel.quantize.onnx_int8 import rebatch
from netchisel.zoo import data

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Task]:
    task = data.task("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread setting
    fit(model, task, TrainSettings(steps=100, lr=0.01), Context(task, quiet=True))
    torch.set_num_threads(before)
    return model.eval(), task


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_static_int8_model_exports_its_own_qdq_scales(
    setup: tuple[nn.Module, Task], tmp_path: Path
) -> None:
    model, task = setup
    int8 = quantize_(copy.deepcopy(model), StaticInt8Config(calibration_samples=128), task)
    x = task.example_inputs(16)
    path = nc.save(int8, tmp_path / "m", export=["onnx_int8"], example_inputs=x)
    found = ops(path / "model.onnx_int8")
    assert found["QuantizeLinear"] == 2 and found["DequantizeLinear"] == 4  # 2 inputs, 2 weights
    ours = torch.from_numpy(onnx_file_runner(path / "model.onnx_int8", x)()[0])
    with torch.no_grad():
        ref = int8(*x)
    # The same int8 model, up to an input rounded one step apart at a tie (torch multiplies
    # by the inverse scale, ONNX Runtime divides): measured 1.2e-3 once on an AVX2 CPU.
    assert float((ours - ref).abs().max()) <= 3e-3 * float(ref.abs().max())


def test_float_model_is_quantized_by_onnxruntime_on_the_task(
    setup: tuple[nn.Module, Task], tmp_path: Path
) -> None:
    model, task = setup
    x = task.example_inputs(16)
    calibration = [task.inputs_of(b) for b in task.calibration_batches(100)]
    with pytest.raises(ConfigError, match="needs calibration data"):
        nc.save(model, tmp_path / "none", export=["onnx_int8"], example_inputs=x)
    assert not (tmp_path / "none").exists()  # nothing half-written
    path = nc.save(
        model, tmp_path / "m", export=["onnx_int8"], example_inputs=x, calibration=calibration
    )
    assert ops(path / "model.onnx_int8")["DequantizeLinear"] >= 4
    ours = torch.from_numpy(onnx_file_runner(path / "model.onnx_int8", x)()[0])
    with torch.no_grad():
        ref = model(*x)
    assert float((ours - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_rebatch_fills_the_static_batch() -> None:
    batches = [(torch.arange(5.0)[:, None],), (torch.arange(5.0, 9.0)[:, None],)]
    assert [b[0].flatten().tolist() for b in rebatch(batches, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rebatch([(torch.zeros(3, 2),)], 8)[0][0].shape == (8, 2)
