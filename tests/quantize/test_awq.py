from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import classification_task
from netchisel.quantize.awq import (
    AWQConfig,
    awq_scales,
    awq_search,
    clipped_qparams,
    gram_error,
    quantize_awq,
)
from netchisel.quantize.fold import InputScale
from netchisel.quantize.gptq import rtn_weight
from netchisel.quantize.primitives import QuantSpec, dequantize, quantize
from netchisel.quantize.rtn import RTNConfig, quantize_rtn
from tests._models import lm_task, quiet_context, tiny_gpt

pytestmark = pytest.mark.filterwarnings("ignore:.*they stay in float")


def _outlier_inputs(tokens: int = 2048, cols: int = 128) -> tuple[Tensor, Tensor]:
    """A weight and inputs where 4 of 128 channels are 20x larger (LLM-style outliers)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, cols, generator=g)
    x[:, [3, 40, 77, 100]] *= 20.0
    return torch.randn(64, cols, generator=g), x


# Measured: 0.28 of RTN's error at 4 bits (alpha 0.3), 0.26 at 3 bits (alpha 0.4).
@pytest.mark.parametrize(("bits", "bound"), [(4, 0.35), (3, 0.35)])
def test_scale_search_beats_rtn_with_outlier_channels(bits: int, bound: float) -> None:
    weight, x = _outlier_inputs()
    gram = x.T @ x
    spec = QuantSpec(bits, False, "group", 32)
    found = awq_search([weight], gram, x.abs().mean(0), [spec])
    rtn = gram_error(rtn_weight(weight, spec) - weight, gram)
    # alpha = 0 is RTN; the chosen alpha is never worse and here much better.
    assert found.errors[0.0] == pytest.approx(rtn, rel=1e-2)
    assert found.alpha > 0.0
    assert found.errors[found.alpha] < bound * found.errors[0.0]
    assert float(found.scales.max() * found.scales.min()) == pytest.approx(1.0, rel=1e-5)


def test_scales_follow_the_activation_magnitude() -> None:
    s = awq_scales(torch.tensor([1.0, 4.0, 16.0]), 0.5)
    assert s.tolist() == pytest.approx([0.5, 1.0, 2.0])
    assert awq_scales(torch.tensor([1.0, 9.0]), 0.0).tolist() == [1.0, 1.0]


def test_clipping_search_lowers_the_output_error() -> None:
    weight, x = _outlier_inputs()
    weight[:, 5] *= 6.0  # a few large weights stretch every row's first group
    gram = x.T @ x
    spec = QuantSpec(3, False, "group", 32)
    scale, zero = clipped_qparams(weight, gram, spec)
    clipped = dequantize(quantize(weight, scale, zero, spec), scale, zero, spec)
    minmax = rtn_weight(weight, spec)
    # Measured: 0.25 of min-max's error.
    assert gram_error(clipped - weight, gram) < 0.35 * gram_error(minmax - weight, gram)


def test_stage_is_closer_to_float_than_rtn_and_round_trips(tmp_path: Path) -> None:
    task = lm_task()
    dense = tiny_gpt().eval()
    tokens = task.splits["train"].tensors[0]  # type: ignore[attr-defined]
    with torch.no_grad():
        # LLM-like outlier channels in the residual stream, which every LayerNorm passes on.
        for block in dense.blocks:  # type: ignore[union-attr]
            block.ln_1.weight[[1, 7]] *= 12.0
            block.ln_2.weight[[2, 9]] *= 12.0
        reference = dense(tokens)

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model(tokens) - reference) ** 2).mean())

    ours, rtn = copy.deepcopy(dense), copy.deepcopy(dense)
    ctx = quiet_context(task)
    quantize_awq(ours, AWQConfig(bits=3, group_size=32), ctx)
    quantize_rtn(rtn, RTNConfig(bits=3, group_size=32), quiet_context(task))
    assert error(ours) < 0.5 * error(rtn)  # measured 0.38 (0.64 without clipping)
    assert ctx.records["folded_into"]["blocks.1.attn.q_proj"] == "blocks.1.ln_1"
    assert ctx.records["input_scale_modules"] == ["blocks.0.mlp.fc_out", "blocks.1.mlp.fc_out"]
    assert isinstance(ours.blocks[0].mlp.fc_out, InputScale)  # type: ignore[index, union-attr]
    path = nc.save(ours, tmp_path / "awq")
    assert torch.equal(nc.load(path)(tokens[:2]), ours(tokens[:2]))


def test_a_failure_midway_leaves_the_model_as_it_was() -> None:
    class Log(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.log()  # NaN for negative inputs: the second layer cannot be solved

    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32), Log(), nn.Linear(32, 4))
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    task = classification_task({"train": TensorDataset(x, torch.zeros(32, dtype=torch.long))})
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ModelError, match="not finite"):
        quantize_awq(net, AWQConfig(bits=4, group_size=32), quiet_context(task))
    assert [type(m) for m in net] == [nn.LayerNorm, nn.Linear, Log, nn.Linear]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grid": 0}, r"quantize.awq.grid: must be >= 1"),
        ({"max_shrink": 1.0}, r"quantize.awq.max_shrink: 1.0 is not in \[0, 1\)"),
        ({"calibration_samples": 0}, r"calibration_samples: the calibration set is empty"),
        ({"alpha": 0.5}, r"unknown key 'alpha'"),
    ],
)
def test_bad_config_is_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AWQConfig.from_dict(options)
