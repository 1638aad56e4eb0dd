from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.calib import hessian
from netchisel.calib.hessian import output_error
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import classification_task
from netchisel.quantize.formats import Int4WeightOnlyLinear, PackedLinear
from netchisel.quantize.gptq import GPTQConfig, gptq_solve, quantize_gptq, rtn_weight
from netchisel.quantize.primitives import QuantSpec, choose_qparams
from netchisel.quantize.rtn import RTNConfig, quantize_rtn
from tests._models import layer_data, lm_task, quiet_context, tiny_gpt

pytestmark = pytest.mark.filterwarnings("ignore:.*they stay in float")


# -- the solver -------------------------------------------------------------------------------


# Measured ratios GPTQ / RTN of the output error on these inputs: 0.24 (8-bit), 0.25 (4),
# 0.26 (3), 0.37 (2); the bounds leave a little room for other BLAS builds.
@pytest.mark.parametrize(
    ("bits", "granularity", "bound"),
    [
        (8, "channel", 0.3),
        (4, "group", 0.3),
        (4, "channel", 0.3),
        (3, "group", 0.3),
        (2, "group", 0.42),
    ],
)
def test_gptq_output_error_is_well_below_rtn(bits: int, granularity: str, bound: float) -> None:
    weight, x = layer_data(32, 128, 1024)
    spec = QuantSpec(bits, bits == 8, granularity, 32)  # type: ignore[arg-type]
    gram = x.T @ x
    ours = gptq_solve(weight, gram, spec)
    rtn = rtn_weight(weight, spec)
    assert output_error(weight, ours.weight, gram) < bound * output_error(weight, rtn, gram)
    assert ours.damping == 0.01
    # The integers are within the format and dequantize to the weight the layer computes with.
    assert int(ours.q.min()) >= spec.qmin and int(ours.q.max()) <= spec.qmax
    assert tuple(ours.scale.shape) == ((32, 4) if granularity == "group" else (32, 1))


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, False, "group", 32),
        QuantSpec(3, True, "channel"),
        QuantSpec(8, True, "channel"),
    ],
)
def test_identity_hessian_is_round_to_nearest(spec: QuantSpec) -> None:
    # No correlation between inputs: no error is fed forward, so GPTQ is RTN exactly.
    weight, _ = layer_data(32, 128, 1024)
    ours = gptq_solve(weight, torch.eye(128), spec)
    assert torch.allclose(ours.weight, rtn_weight(weight, spec), atol=1e-6)


def test_lazy_block_updates_are_the_column_by_column_math() -> None:
    weight, x = layer_data(32, 128, 1024)
    spec = QuantSpec(4, False, "group", 32)
    one = gptq_solve(weight, x.T @ x, spec, blocksize=1)  # rounded up to one group
    big = gptq_solve(weight, x.T @ x, spec, blocksize=128)
    assert torch.allclose(one.weight, big.weight, atol=1e-4)


def test_act_order_uses_static_groups_and_still_beats_rtn() -> None:
    weight, x = layer_data(32, 128, 1024)
    spec = QuantSpec(4, False, "group", 32)
    gram = x.T @ x
    ours = gptq_solve(weight, gram, spec, act_order=True)
    # Static groups: every group's parameters are RTN's, chosen before the sweep.
    scale, zero = choose_qparams(weight, spec)
    assert torch.allclose(ours.scale, scale, rtol=1e-2) and torch.equal(ours.zero, zero)
    rtn = rtn_weight(weight, spec)
    assert output_error(weight, ours.weight, gram) < 0.3 * output_error(weight, rtn, gram)


def test_rank_deficient_hessian_raises_damping_instead_of_nan() -> None:
    weight, _ = layer_data(32, 128, 1024)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))  # rank 3 of 128
    x[:, 10] = 0.0  # a dead input
    x[:, 11] = x[:, 12]  # two inputs that move together
    result = gptq_solve(weight, x.T @ x, QuantSpec(4, False, "group", 32), damping=1e-9)
    assert torch.isfinite(result.weight).all()
    assert result.damping > 1e-9  # float32 could not factor H so damped; it was raised


def test_non_finite_inputs_are_an_error() -> None:
    weight, x = layer_data(32, 128, 1024)
    x[0, 0] = float("nan")
    with pytest.raises(ModelError, match="not finite"):
        gptq_solve(weight, x.T @ x, QuantSpec(4, False, "group", 32))


# -- the stage --------------------------------------------------------------------------------


def test_stage_beats_rtn_on_a_tiny_gpt_and_saves_packed() -> None:
    task = lm_task()
    dense = tiny_gpt().eval()
    tokens = task.splits["train"].tensors[0]  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = dense(tokens)

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model(tokens) - reference) ** 2).mean())

    ours, rtn = copy.deepcopy(dense), copy.deepcopy(dense)
    ctx = quiet_context(task)
    quantize_gptq(ours, GPTQConfig(bits=3, group_size=32, calibration_samples=32), ctx)
    quantize_rtn(rtn, RTNConfig(bits=3, group_size=32), quiet_context(task))
    assert error(ours) < 0.7 * error(rtn)
    assert isinstance(ours.blocks[0].attn.q_proj, PackedLinear)  # type: ignore[index, union-attr]
    per_layer = ctx.records["layer_output_error"]
    assert len(per_layer) == 13  # 2 blocks x 6 Linear layers + the head
    assert all(per_layer[n] < ctx.records["rtn_layer_output_error"][n] for n in per_layer)


def test_int4_stage_runs_the_kernel_and_round_trips(tmp_path: Path) -> None:
    model, task = tiny_gpt(), lm_task()
    quantize_gptq(model, GPTQConfig(bits=4, group_size=32), quiet_context(task))
    assert isinstance(model.blocks[1].mlp.fc_out, Int4WeightOnlyLinear)  # type: ignore[index, union-attr]
    tokens = torch.randint(0, 256, (2, 16))
    path = nc.save(model, tmp_path / "gptq")
    assert torch.equal(nc.load(path)(tokens), model(tokens))


def test_later_layers_see_the_quantized_earlier_layers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    task = classification_task({"train": TensorDataset(x, torch.zeros(64, dtype=torch.long))})
    spec = QuantSpec(3, False, "group", 32)
    first = gptq_solve(net[0].weight, 2 * x.T @ x / 64, spec)
    with torch.no_grad():
        hidden = torch.tanh(x @ first.weight.T + net[0].bias)
    second = gptq_solve(net[2].weight, 2 * hidden.T @ hidden / 64, spec)
    quantize_gptq(
        net, GPTQConfig(bits=3, group_size=32, calibration_samples=64), quiet_context(task)
    )
    assert torch.allclose(net[0].dequantized_weight(), first.weight, atol=1e-6)  # type: ignore[operator]
    assert torch.allclose(net[2].dequantized_weight(), second.weight, atol=1e-5)  # type: ignore[operator]


def test_a_failure_midway_leaves_the_model_as_it_was() -> None:
    class Log(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.log()  # NaN for negative inputs: the second layer cannot be solved

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), Log(), nn.Linear(32, 4))
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    task = classification_task({"train": TensorDataset(x, torch.zeros(32, dtype=torch.long))})
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ModelError, match="layer 2: the layer's calibration inputs are not finite"):
        quantize_gptq(net, GPTQConfig(bits=4, group_size=32), quiet_context(task))
    assert [type(m) for m in net] == [nn.Linear, Log, nn.Linear]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_bad_input_at_run_time_leaves_the_model_unchanged() -> None:
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="needs a task"):
        quantize_gptq(model, GPTQConfig(bits=4), quiet_context(None))
    with pytest.raises(ConfigError, match="group_size 48 does not divide in_features 32"):
        quantize_gptq(model, GPTQConfig(bits=3, group_size=48), quiet_context(lm_task()))
    with pytest.raises(ConfigError, match=r"quantize\.gptq\.blocks: the model has no module 'x'"):
        quantize_gptq(
            model, GPTQConfig(bits=4, group_size=32, blocks="x"), quiet_context(lm_task())
        )
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"blocksize": 0}, r"quantize.gptq.blocksize: must be >= 1"),
        ({"damping": 0.0}, r"quantize.gptq.damping: must be > 0"),
        ({"calibration_samples": 0}, r"calibration_samples: the calibration set is empty"),
        ({"bits": 9}, r"quantize.gptq: bits=9 is outside 1-8"),
        ({"act_ordr": True}, r"unknown key 'act_ordr'"),
    ],
)
def test_bad_config_is_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GPTQConfig.from_dict(options)


# -- row chunks: one inverse factor, the rows solved a chunk at a time ------------------------


@pytest.mark.parametrize(
    ("spec", "act_order"),
    [
        (QuantSpec(4, False, "group", 32), False),
        (QuantSpec(4, False, "group", 32), True),
        (QuantSpec(3, True, "channel"), False),
        (QuantSpec(8, False, "tensor"), True),
    ],
)
def test_solving_in_row_chunks_is_bit_identical(
    spec: QuantSpec, act_order: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight, x = layer_data(200, 64, 1024)
    one = gptq_solve(weight, x.T @ x, spec, act_order=act_order)
    monkeypatch.setattr(hessian, "ROW_CHUNK_BYTES", 1)  # chunks of 64 rows (H's width)
    assert [c.stop for c in hessian.row_chunks(200, 64)] == [64, 128, 192, 200]
    many = gptq_solve(weight, x.T @ x, spec, act_order=act_order)
    assert torch.equal(many.q, one.q)
    assert torch.equal(many.scale, one.scale) and torch.equal(many.zero, one.zero)
    assert torch.equal(many.weight, one.weight)
    assert tuple(many.scale.shape) == tuple(one.scale.shape)


def test_stage_in_row_chunks_writes_back_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    task = lm_task()
    one, many = tiny_gpt(), tiny_gpt()
    config = GPTQConfig(bits=4, group_size=32, calibration_samples=32)
    one_ctx, many_ctx = quiet_context(task), quiet_context(task)
    quantize_gptq(one, config, one_ctx)
    monkeypatch.setattr(hessian, "ROW_CHUNK_BYTES", 1)  # the 256 x 32 head: 8 chunks
    assert len(hessian.row_chunks(256, 32)) == 8
    quantize_gptq(many, config, many_ctx)
    ones, manys = one.state_dict(), many.state_dict()
    assert ones.keys() == manys.keys()
    assert all(torch.equal(ones[k], manys[k]) for k in ones)
    for key in ("layer_output_error", "rtn_layer_output_error"):
        expected = one_ctx.records[key]
        assert many_ctx.records[key] == pytest.approx(expected, rel=1e-5)
