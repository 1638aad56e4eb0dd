"""Every weight quantizer treats GPT-2's Conv1D projections as Linears (`quantize/linears.py`).

Error bounds (relative L2 error of the tiny GPT-2's logits on held-out tokens). Asymmetric 4-bit
rounding in groups of 32 Gaussian weights (range about 4 sigma, step range/15) leaves a weight
error of step/sqrt(12), about 0.08 of the weights' size; per-channel int8 (step range/255,
range about 6 sigma) about 0.007. Every projection's output moves by about that fraction and
the residual stream carries the unquantized embeddings past them, so the logits move by less:
bounds 0.08 (4-bit) and 0.01 (int8); measured 0.026 (GPTQ), 0.034 (AWQ), 0.036 (RTN), 0.004
(dynamic int8, SmoothQuant). A quantizer that skipped the projections would show 0 error and
fail the type checks; one that read W in the wrong layout would be off by about 1.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.config import StageConfig
from netchisel.core.conv1d import FROM_CONV1D, is_conv1d
from netchisel.core.modules import build
from netchisel.quantize import (
    DynamicInt8Config,
    GPTQConfig,
    RTNConfig,
    SmoothQuantConfig,
    quantize_,
)
from netchisel.quantize.awq import AWQConfig
from tests._gpt2 import logits, projections, relative_error, tiny_gpt2, tokens
from tests._models import lm_task

pytest.importorskip("transformers")

HEAD = ("lm_head",)  # tied to the token embedding: kept in float
CASES = [
    (GPTQConfig(bits=4, group_size=32, exclude=HEAD), "Int4WeightOnlyLinear", 0.08),
    (AWQConfig(bits=4, group_size=32, exclude=HEAD), "Int4WeightOnlyLinear", 0.08),
    (RTNConfig(bits=4, group_size=32, exclude=HEAD), "Int4WeightOnlyLinear", 0.08),
    (DynamicInt8Config(exclude=HEAD), "DynamicInt8Linear", 0.01),
    (SmoothQuantConfig(exclude=HEAD), "DynamicInt8Linear", 0.01),
]


def quantized(config: StageConfig, model: nn.Module | None = None) -> nn.Module:
    model = tiny_gpt2() if model is None else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the embeddings stay in float: said once, expected
        return quantize_(model, config, task=lm_task())


@pytest.mark.parametrize(("config", "kind", "bound"), CASES, ids=lambda c: getattr(c, "NAME", ""))
def test_every_projection_is_quantized(config: StageConfig, kind: str, bound: float) -> None:
    x = tokens()
    ref = logits(tiny_gpt2(), x)
    model = quantized(config)
    layers = projections(model)
    assert len(layers) == 8
    for name, layer in layers.items():
        assert kind in {type(m).__name__ for m in layer.modules()}, name
        assert all(getattr(m, FROM_CONV1D) is True for m in layer.modules()), name
    assert type(model.lm_head) is nn.Linear and not hasattr(model.lm_head, FROM_CONV1D)
    assert 0.0 < relative_error(logits(model, x), ref) < bound


def test_gptq_beats_round_to_nearest_on_the_projections() -> None:
    x = tokens()
    ref = logits(tiny_gpt2(), x)
    gptq = relative_error(logits(quantized(CASES[0][0]), x), ref)
    rtn = relative_error(logits(quantized(CASES[2][0]), x), ref)
    assert gptq < 0.85 * rtn  # measured 0.026 vs 0.036


@pytest.mark.parametrize("config", [c for c, _, _ in CASES], ids=lambda c: c.NAME)
def test_an_excluded_conv1d_stays_conv1d(config: StageConfig) -> None:
    kept = r"transformer\.h\.1\.mlp\.c_proj"
    model = quantized(dataclasses.replace(config, exclude=(*HEAD, kept)))
    for name, layer in projections(model).items():
        assert is_conv1d(layer) == name.endswith("h.1.mlp.c_proj"), name


def test_gptq_on_gpt2_saves_and_loads_bit_exactly(tmp_path: Path) -> None:
    model, x = quantized(CASES[0][0], build("tests._gpt2:tiny_gpt2", {})), tokens()
    nc.save(model, tmp_path / "gpt2")
    loaded = nc.load(tmp_path / "gpt2")
    assert torch.equal(logits(loaded, x), logits(model, x))
    for name, layer in projections(loaded).items():
        assert type(layer).__name__ == "Int4WeightOnlyLinear" and layer.from_conv1d is True, name
        assert torch.equal(
            layer.state_dict()["qweight"], model.get_submodule(name).state_dict()["qweight"]
        )


def test_a_failing_rtn_leaves_the_conv1d_modules() -> None:
    model = tiny_gpt2()
    before = projections(model)
    with pytest.raises(nc.NetChiselError, match="group_size 7 does not divide"):
        quantized(RTNConfig(bits=4, group_size=7, exclude=HEAD), model)
    assert all(projections(model)[n] is m for n, m in before.items())


def test_a_failing_smoothquant_leaves_the_conv1d_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise nc.NetChiselError("calibration failed midway")

    monkeypatch.setattr("netchisel.quantize.smoothquant.run_layerwise", fail)
    model = tiny_gpt2()
    before = projections(model)
    with pytest.raises(nc.NetChiselError, match="midway"):
        quantized(SmoothQuantConfig(exclude=HEAD), model)
    assert all(projections(model)[n] is m for n, m in before.items())


@pytest.mark.parametrize("config", [GPTQConfig, AWQConfig], ids=["gptq", "awq"])
def test_a_failing_calibrated_stage_leaves_the_conv1d_modules(config: type[StageConfig]) -> None:
    model = tiny_gpt2()
    before = projections(model)
    with pytest.raises(nc.NetChiselError, match="group_size 7 does not divide"):
        quantized(config(bits=4, group_size=7, exclude=HEAD), model)  # type: ignore[call-arg]
    assert all(projections(model)[n] is m for n, m in before.items())
