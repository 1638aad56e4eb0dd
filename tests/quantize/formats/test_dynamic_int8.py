"""DynamicInt8Linear: per-token on torch._int_mm, per-tensor on fbgemm, old artifacts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netchisel as nc
from netchisel.quantize.formats import DynamicInt8Linear
from netchisel.quantize.formats.dynamic_int8 import DYNAMIC_BLOCK_ROWS, fbgemm_full_range
from tests.quantize.formats import rel as _rel


def test_dynamic_int8_is_close_and_row_scaled():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    layer = DynamicInt8Linear.from_float(lin)
    x = torch.randn(16, 128)
    x[0] *= 100  # a loud row must not hurt the others (scales are per row)
    assert _rel(layer(x)[1:], lin(x)[1:]) < 0.01


def test_dynamic_int8_row_blocks_change_nothing_and_train():
    """Rows are computed in blocks of DYNAMIC_BLOCK_ROWS; each row's output is its own."""
    torch.manual_seed(0)
    layer = DynamicInt8Linear.from_float(nn.Linear(32, 8))
    x = torch.randn(2 * DYNAMIC_BLOCK_ROWS + 5, 32)
    one_by_one = torch.cat([layer(row[None]) for row in x])
    assert torch.equal(layer(x), one_by_one)
    x.requires_grad_(True)
    layer(x).sum().backward()  # in-place block scaling must not break autograd
    assert layer.bias.grad is not None and torch.equal(
        layer.bias.grad, torch.full((8,), float(len(x)))
    )


def _fbgemm_reference(layer: DynamicInt8Linear, x: torch.Tensor) -> torch.Tensor:
    """fbgemm's dynamic linear written out: uint8 activations over [min(x, 0), max(x, 0)]
    (7 bits without VNNI), exact integer products, then scales and bias."""
    qmax = 255 if fbgemm_full_range() else 127
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / qmax
    zero = min(max(round(-low / scale), 0), qmax)
    xq = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    acc = (xq - zero).double() @ layer.weight_int8.double().t()
    return (acc * scale * layer.weight_scale.double() + layer.bias.double()).float()


@pytest.mark.parametrize("weights", ["per_channel", "per_tensor"])
def test_dynamic_int8_per_tensor_runs_fbgemm_exactly(weights):
    torch.manual_seed(0)
    layer = DynamicInt8Linear.from_float(nn.Linear(128, 64), "per_tensor", weights)
    assert (layer.weight_scale.unique().numel() == 1) == (weights == "per_tensor")
    x = torch.randn(16, 128) * 3 + 0.5
    with torch.no_grad():
        y = layer(x)
    assert (y - _fbgemm_reference(layer, x)).abs().max() < 1e-5
    count = nc.count_flops(layer, x)
    assert count.macs == 16 * 128 * 64 and "quantized.linear_dynamic" in count.flops_by_op


def test_dynamic_int8_granularity_decides_who_a_loud_row_hurts():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(16, 128)
    x[0] *= 100
    per_token = DynamicInt8Linear.from_float(lin)
    per_tensor = DynamicInt8Linear.from_float(lin, "per_tensor")
    assert _rel(per_token(x)[1:], lin(x)[1:]) < 0.01
    assert _rel(per_tensor(x)[1:], lin(x)[1:]) > 0.05  # one scale, set by the loud row


def test_dynamic_int8_mse_scale_lifts_a_per_tensor_weight_past_one_outlier():
    torch.manual_seed(0)
    lin = nn.Linear(1536, 384)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
        lin.weight[5, 9] = 3.0  # 150 standard deviations, as in MiniLM's output.dense layers
    x = torch.randn(64, 1536)
    error = {}
    for method in ("minmax", "mse"):
        layer = DynamicInt8Linear.from_float(lin, "per_tensor", "per_tensor", method)
        assert layer.weight_scale.unique().numel() == 1  # still fbgemm's per-tensor kernel
        with torch.no_grad():
            error[method] = _rel(layer(x), lin(x))
    assert error["mse"] < 0.55 * error["minmax"]  # measured 0.166 against 0.335


def test_dynamic_int8_per_tensor_trains_its_bias_and_matches_inference():
    torch.manual_seed(0)
    layer = DynamicInt8Linear.from_float(nn.Linear(32, 8), "per_tensor")
    x = torch.randn(10, 32)
    with torch.no_grad():
        fused = layer(x)  # bias inside the kernel
    x.requires_grad_()
    y = layer(x)  # bias added outside, so it gets a gradient
    assert (y - fused).abs().max() < 1e-5
    y.sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((8,), 10.0))
    assert x.grad is None  # none through the rounding
    layer.bias.requires_grad_(False)
    y = layer(x.detach().reshape(2, 5, 32))  # a frozen bias goes back into the kernel
    assert not y.requires_grad and y.shape == (2, 5, 8)
    assert (y.reshape(10, 8) - fused).abs().max() < 1e-5


def test_dynamic_int8_artifact_from_before_the_modes_runs_per_token(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(DynamicInt8Linear.from_float(nn.Linear(32, 8)))
    path = nc.save(net, tmp_path / "m")
    manifest = path / "manifest.json"
    text = manifest.read_text()
    assert ',"activations":"per_token"' in text
    manifest.write_text(text.replace(',"activations":"per_token"', ""))  # as saved before
    loaded = nc.load(path)
    x = torch.randn(3, 32)
    assert loaded[0].activations == "per_token" and torch.equal(loaded(x), net(x))


def test_dynamic_int8_with_one_input_feature():
    # torch._int_mm returns uninitialised memory for K=1 on CPU; the layer pads it to 2.
    torch.manual_seed(0)
    lin = nn.Linear(1, 16)
    x = torch.linspace(-1, 1, 5)[:, None]
    for activations in ("per_token", "per_tensor"):
        layer = DynamicInt8Linear.from_float(lin, activations)
        assert _rel(layer(x), lin(x)) < 0.02


def test_dynamic_int8_bad_modes_and_export(tmp_path, monkeypatch):
    from netchisel.core.errors import ConfigError, ModelError
    from netchisel.quantize.formats import dynamic_int8

    with pytest.raises(ConfigError, match="activations: 'per_row' is not one of"):
        DynamicInt8Linear.from_float(nn.Linear(4, 2), "per_row")
    with pytest.raises(ConfigError, match="weights: 'per_row' is not one of"):
        DynamicInt8Linear.from_float(nn.Linear(4, 2), weights="per_row")
    net = nn.Sequential(DynamicInt8Linear.from_float(nn.Linear(8, 4), "per_tensor"))
    with pytest.raises(ModelError, match="quantize with activations: per_token to export"):
        nc.save(net, tmp_path / "m", export=["pt2"], example_inputs=(torch.randn(2, 8),))
    monkeypatch.setattr(dynamic_int8, "FBGEMM", False)  # where fbgemm is absent (CUDA, later torch)
    assert net(torch.zeros(0, 8)).shape == (0, 4)
    x = torch.randn(3, 8)
    assert _rel(net(x), F.linear(x, net[0].dequantized_weight(), net[0].bias)) < 0.02
