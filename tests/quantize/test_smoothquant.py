from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task, classification_task
from netchisel.quantize.dynamic_int8 import DynamicInt8Config, quantize_dynamic_int8
from netchisel.quantize.fold import InputScale, divide_outputs, multiply_inputs
from netchisel.quantize.formats import DynamicInt8Linear
from netchisel.quantize.smoothquant import (
    SmoothQuantConfig,
    quantize_smoothquant,
    smoothing_scales,
)

OUTLIERS = [2, 11, 30, 45]


class PreLN(nn.Module):
    """x + fc2(gelu(fc1(ln(x)))) with a few LayerNorm channels 30x larger (LLM outliers)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * width, width)
        with torch.no_grad():
            self.ln.weight[OUTLIERS] *= 30.0

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(self.ln(x))))  # type: ignore[no-any-return]


def _model() -> PreLN:
    torch.manual_seed(0)
    return PreLN().eval()


def _task() -> Task:
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, torch.zeros(128, dtype=torch.long))
    return classification_task({"train": data, "val": data})


def _ctx(task: Task | None) -> Context:
    return Context(task, quiet=True)


def _error(model: nn.Module, reference: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        expected = reference(x)
        return float((model(x) - expected).norm() / expected.norm())


def test_smoothing_scales_balance_activation_and_weight_ranges() -> None:
    s = smoothing_scales(torch.tensor([100.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 1.0]), 0.5)
    assert s.tolist() == pytest.approx([10.0, 0.5, 1.0])
    # After smoothing, both maxima are equal: sqrt(act_max * weight_max).
    assert (torch.tensor([100.0, 1.0]) / s[:2]).tolist() == pytest.approx([10.0, 2.0])


def test_folding_leaves_the_float_function_unchanged() -> None:
    model = _model()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
        act_max = model.ln(x).abs().amax(0)
    s = smoothing_scales(act_max, model.fc1.weight.abs().amax(0), 0.5)
    divide_outputs(model.ln, s)
    multiply_inputs(model.fc1, s)
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) < 1e-5


def test_smoothing_reduces_the_int8_error_with_outlier_channels(tmp_path: Path) -> None:
    task, reference = _task(), _model()
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    plain = quantize_dynamic_int8(copy.deepcopy(reference), DynamicInt8Config(), _ctx(task))
    ctx = _ctx(task)
    smooth = quantize_smoothquant(copy.deepcopy(reference), SmoothQuantConfig(), ctx)
    assert ctx.records["smoothed"] == {"fc1": "ln"}
    assert ctx.records["unsmoothed"] == ["fc2"]  # after a GELU: no fold, left alone
    assert isinstance(smooth.fc1, DynamicInt8Linear) and isinstance(smooth.fc2, DynamicInt8Linear)
    # Measured: 0.0083 against 0.0142 without smoothing (fc2, unsmoothed, is most of the rest:
    # quantizing fc1 alone gives 0.0049 against 0.0125).
    assert _error(smooth, reference, x) < 0.7 * _error(plain, reference, x)
    path = nc.save(smooth, tmp_path / "sq")
    assert torch.equal(nc.load(path, trust=[PreLN])(x), smooth(x))


def test_unfoldable_groups_keep_their_scale_as_a_module_when_asked() -> None:
    task, reference = _task(), _model()
    ctx = _ctx(task)
    model = quantize_smoothquant(copy.deepcopy(reference), SmoothQuantConfig(fold_only=False), ctx)
    assert isinstance(model.fc2, InputScale)
    assert ctx.records["input_scale_modules"] == ["fc2"] and ctx.records["unsmoothed"] == []
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    assert _error(model, reference, x) < 0.01


def test_a_failure_leaves_the_model_as_it_was() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    bad = torch.randn(16, 64)
    bad[0, 0] = float("nan")
    task = classification_task({"train": TensorDataset(bad, torch.zeros(16, dtype=torch.long))})
    with pytest.raises(ModelError, match="layer fc1: the layer's calibration inputs are not"):
        quantize_smoothquant(model, SmoothQuantConfig(), _ctx(task))
    assert isinstance(model.fc1, nn.Linear) and not isinstance(model.fc1, DynamicInt8Linear)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, r"quantize.smoothquant.alpha: 1.5 is not in \[0, 1\]"),
        ({"calibration_samples": 0}, r"calibration_samples: the calibration set is empty"),
        ({"bits": 4}, r"unknown key 'bits'"),
    ],
)
def test_bad_config_is_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SmoothQuantConfig.from_dict(options)
