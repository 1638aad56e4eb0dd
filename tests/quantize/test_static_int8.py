"""quantize.static_int8: accuracy and error bounds, int8 artifacts, FLOPs, failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task, classification_task
from netchisel.core.train import TrainSettings, fit
from netchisel.measure.flops import count_flops
from netchisel.measure.latency import make_runner
from netchisel.pipeline.recipe import load_recipe
from netchisel.quantize import StaticInt8Config, quantize_
from netchisel.quantize.formats.static_int8 import (
    float_twin,
)
from netchisel.zoo import data

ROOT = Path(__file__).parents[2]


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def tiny_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def digits() -> Task:
    return data.task("digits")


@pytest.fixture(scope="module")
def trained(digits: Task) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"cnn": tiny_cnn(), "mlp": tiny_mlp()}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread setting
    for model in models.values():
        fit(model, digits, TrainSettings(steps=150, lr=0.01), Context(digits, quiet=True))
        model.eval()
    torch.set_num_threads(before)
    return models


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_accuracy_and_outputs_stay_close_to_fp32(
    name: str, trained: dict[str, nn.Module], digits: Task
) -> None:
    fp32 = trained[name]
    int8 = quantize_(copy.deepcopy(fp32), StaticInt8Config(calibration_samples=256), digits)
    fp32_acc = digits.evaluate(fp32)["accuracy"]
    int8_acc = digits.evaluate(int8)["accuracy"]
    assert fp32_acc > 85.0  # the float model learned something worth keeping
    assert abs(int8_acc - fp32_acc) <= 1.2  # 270 images: 0.37 points each
    x = digits.example_inputs(128)[0]
    with torch.no_grad():
        ref, out = fp32(x), int8(x)
    assert float((out - ref).abs().max()) <= 0.03 * float(ref.abs().max())
    kinds = [type(m).__name__ for m in int8.modules()]
    if name == "cnn":  # both BatchNorms folded into the convolutions before them
        assert kinds.count("StaticInt8Conv2d") == 2 and kinds.count("Identity") == 2
    assert kinds.count("StaticInt8Linear") == (1 if name == "cnn" else 2)


def test_artifact_holds_int8_and_loads_to_identical_outputs(
    trained: dict[str, nn.Module], digits: Task, tmp_path: Path
) -> None:
    fp32 = trained["cnn"]
    int8 = quantize_(copy.deepcopy(fp32), StaticInt8Config(calibration_samples=128), digits)
    path = nc.save(int8, tmp_path / "int8")
    loaded = nc.load(path)
    x = digits.example_inputs(32)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
    int8_bytes = 0
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
            t = f.get_tensor(key)
            if key.endswith("weight_int8"):
                assert t.dtype == torch.int8
                int8_bytes += t.numel()
            else:
                assert t.dtype == torch.float32 and t.dim() == 1  # scales and biases
    weights = [m for m in fp32.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert int8_bytes == sum(m.weight.numel() for m in weights) == 1 * 8 * 9 + 8 * 16 * 9 + 256 * 10
    manifest = json.loads((path / "manifest.json").read_text())
    assert "0.weight_int8" not in manifest.get("tensors", {})  # raw: left out of the codec table
    fp32_file = (nc.save(fp32, tmp_path / "fp32") / "model.safetensors").stat().st_size
    ratio = (path / "model.safetensors").stat().st_size / fp32_file
    assert 0.25 < ratio < 0.40  # int8 weights plus float32 per-channel scales and biases


def test_flops_count_the_int8_kernels(trained: dict[str, nn.Module], digits: Task) -> None:
    fp32 = trained["cnn"]
    int8 = quantize_(copy.deepcopy(fp32), StaticInt8Config(calibration_samples=64), digits)
    x = digits.example_inputs(4)[0]
    ours, theirs = count_flops(int8, x), count_flops(fp32, x)
    assert ours.uncounted_ops == ()
    assert ours.macs == theirs.macs == ours.macs_by_dtype["int8"]
    assert ours.macs_by_module["0"] == theirs.macs_by_module["0"] == 4 * 8 * 64 * 9


def test_compiled_with_freezing_matches_eager(trained: dict[str, nn.Module], digits: Task) -> None:
    int8 = quantize_(
        copy.deepcopy(trained["mlp"]), StaticInt8Config(calibration_samples=64), digits
    )
    x = digits.example_inputs(8)
    compiled = make_runner(int8, x, "compile")()  # inductor lowers it to oneDNN int8 kernels
    with torch.no_grad():
        eager = int8(*x)
    assert float((compiled - eager).abs().max()) <= 1e-3 * float(eager.abs().max())


def test_float_twin_computes_with_the_dequantized_weights(
    trained: dict[str, nn.Module], digits: Task
) -> None:
    int8 = quantize_(
        copy.deepcopy(trained["cnn"]), StaticInt8Config(calibration_samples=64), digits
    )
    twin = float_twin(int8)
    assert [type(twin[i]).__name__ for i in (0, 1, 8)] == ["Conv2d", "Identity", "Linear"]
    assert torch.equal(twin[0].weight, int8[0].dequantized_weight())
    x = digits.example_inputs(64)[0]
    with torch.no_grad():
        ref, out = twin(x), int8(x)
    assert 0 < float((out - ref).abs().max()) <= 0.03 * float(ref.abs().max())  # input rounding


def test_a_static_int8_model_runs_with_autograd_on_and_gives_the_same_numbers(
    trained: dict[str, nn.Module], digits: Task
) -> None:
    # The first conv stays float (its BatchNorm too): its output requires grad when autograd is
    # on, which the int8 conv after it used to refuse outside torch.no_grad().
    config = StaticInt8Config(calibration_samples=64, exclude=("0",))
    int8 = quantize_(copy.deepcopy(trained["cnn"]), config, digits)
    assert type(int8[0]) is nn.Conv2d and type(int8[4]).__name__ == "StaticInt8Conv2d"
    x = digits.example_inputs(16)[0]
    with torch.no_grad():
        expected = int8(x)
    assert int8[0](x).requires_grad  # so the int8 conv does get an input that requires grad
    assert torch.equal(int8(x), expected)


def test_empty_calibration_is_one_config_error(trained: dict[str, nn.Module]) -> None:
    x, y = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)
    task = classification_task({"train": TensorDataset(x, y), "val": TensorDataset(x, y)})
    with pytest.raises(ConfigError, match="'train' split is empty"):
        quantize_(copy.deepcopy(trained["mlp"]), StaticInt8Config(), task)
    with pytest.raises(ConfigError, match="the calibration set is empty"):
        StaticInt8Config(calibration_samples=0)
    with pytest.raises(ConfigError, match="needs a task"):
        quantize_(copy.deepcopy(trained["mlp"]), StaticInt8Config())


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


def test_failure_leaves_the_model_unchanged(digits: Task) -> None:
    model = Branchy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match=r"torch\.export cannot trace the model"):
        quantize_(model, StaticInt8Config(calibration_samples=16), digits)
    assert type(model.fc) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="matches no layer"):
        quantize_(tiny_mlp(), StaticInt8Config(layers=("head",)), digits)


def test_example_recipe_parses() -> None:
    recipe = load_recipe(ROOT / "examples/recipes/quant_static_cnn.yaml")
    assert [name for name, _ in recipe.stages] == ["quantize.static_int8", "evaluate"]
