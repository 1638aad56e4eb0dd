import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import netchisel as nc
from netchisel.quantize.formats import (
    DynamicInt8Linear,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    PackedLinear,
    has_kernel,
    quantized_linear,
)
from netchisel.quantize.formats.dynamic_int8 import DYNAMIC_BLOCK_ROWS, fbgemm_full_range
from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_int8_weight_only_matches_its_dequantized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    layer = Int8WeightOnlyLinear.from_float(lin)
    x = torch.randn(8, 256)
    # The scale is rounded to bf16 before rounding the weights: at most half a step off.
    step = layer.scales.float()[:, None]
    assert bool(((layer.dequantized_weight() - lin.weight).abs() <= step * 0.5 + 1e-9).all())
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01
    assert _rel(layer(x), lin(x)) < 0.01
    assert layer(x).dtype == torch.float32


@pytest.mark.parametrize(
    "shape, group, stored", [((64, 16), 32, (16, 32)), ((100, 10), 32, (16, 64))]
)
def test_int4_pads_inputs_to_the_group_and_outputs_to_16(shape, group, stored):
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    layer = Int4WeightOnlyLinear.from_float(lin, group_size=group)
    assert tuple(layer.qweight.shape) == stored
    assert layer.dequantized_weight().shape == lin.weight.shape
    x = torch.randn(3, shape[0])
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01  # the kernel computes exactly what is stored
    assert _rel(layer(x), lin(x)) < 0.12  # 4-bit rounding of a random layer


def test_int4_accepts_symmetric_integers_from_an_algorithm():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    spec = QuantSpec(4, symmetric=True, granularity="group", group_size=32)
    scale, zero = choose_qparams(lin.weight, spec)
    q = quantize(lin.weight, scale, zero, spec)
    layer = quantized_linear(lin, spec, q, scale, zero)
    assert isinstance(layer, Int4WeightOnlyLinear)
    expected = (q.float().reshape(32, 2, 32) * scale[..., None]).reshape(32, 64)
    # Only the bf16 storage of scales moves values: by <= 8 levels x 2**-8 of a step.
    assert (layer.dequantized_weight() - expected).abs().max() <= 8 * 2**-8 * float(scale.max())


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


def test_packed_linear_stores_exact_bits():
    lin = nn.Linear(10, 7)
    layer = PackedLinear.from_float(lin, QuantSpec(bits=3, symmetric=False))
    assert layer.packed.numel() == (70 * 3 + 7) // 8
    assert layer.simulated and not Int4WeightOnlyLinear.simulated
    x = torch.randn(4, 10)
    assert _rel(layer(x), F.linear(x, layer.dequantized_weight(), lin.bias)) < 1e-6


def test_kernel_choice():
    assert has_kernel(QuantSpec(8))
    assert has_kernel(QuantSpec(4, False, "group", 128))
    assert not has_kernel(QuantSpec(4, False, "channel"))
    assert not has_kernel(QuantSpec(3, False, "group", 128))
    assert not has_kernel(QuantSpec(8, True, "group", 128))


@pytest.mark.parametrize(
    "make",
    [
        lambda lin: Int8WeightOnlyLinear.from_float(lin),
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=64),
        lambda lin: DynamicInt8Linear.from_float(lin),
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
        lambda lin: PackedLinear.from_float(lin, QuantSpec(3, False, "group", 64)),
    ],
)
def test_artifact_round_trip_is_exact_and_stores_integers(tmp_path, make):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    net[0] = make(net[0])
    x = torch.randn(4, 128)
    net(x)  # a forward first: the kernel-layout cache must not end up in the manifest
    path = nc.save(net, tmp_path / "m")
    loaded = nc.load(path)
    assert type(loaded[0]) is type(net[0])
    assert torch.equal(loaded(x), net.eval()(x))
    stored = load_file(str(path / "model.safetensors"))
    int_bytes = sum(
        t.numel()
        for k, t in stored.items()
        if k.startswith("0.") and t.dtype in (torch.int8, torch.uint8)
    )
    assert (
        int_bytes
        == {
            Int8WeightOnlyLinear: 64 * 128,
            Int4WeightOnlyLinear: 64 * 128 // 2,
            DynamicInt8Linear: 64 * 128,
            PackedLinear: 64 * 128 * 3 // 8,
        }[type(net[0])]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=32),
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
    ],
)
def test_kernel_cache_follows_loaded_weights(make):
    torch.manual_seed(0)
    a, b = make(nn.Linear(64, 16)), make(nn.Linear(64, 16))
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = a(x)
        a.load_state_dict(b.state_dict())
        assert not torch.equal(a(x), before)
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "make, op",
    [
        (lambda lin: Int8WeightOnlyLinear.from_float(lin), "aten._weight_int8pack_mm"),
        (lambda lin: Int4WeightOnlyLinear.from_float(lin, 32), "aten._weight_int4pack_mm_for_cpu"),
        (lambda lin: DynamicInt8Linear.from_float(lin), "aten._int_mm"),
        (lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"), "quantized.linear_dynamic"),
        (lambda lin: PackedLinear.from_float(lin, QuantSpec(3, False, "group", 32)), "aten.mm"),
    ],
)
def test_flops_are_the_matmul_of_the_true_shape_and_no_setup_work(make, op):
    layer = make(nn.Linear(64, 48))
    count = nc.count_flops(layer, torch.zeros(5, 64))
    assert count.uncounted_ops == ()
    assert count.macs == 5 * 64 * 48
    assert count.flops_by_op[op] >= 2 * 5 * 64 * 48


@pytest.mark.parametrize("inputs", [8, 100, 104, 300])
def test_int8_kernel_pads_inputs_that_are_not_a_multiple_of_16(inputs):
    # Unpadded, the CPU kernel segfaults at 100 inputs and returns inf at 104.
    torch.manual_seed(0)
    lin = nn.Linear(inputs, 10)
    layer = Int8WeightOnlyLinear.from_float(lin)
    x = torch.randn(3, inputs)
    reference = F.linear(x.bfloat16().float(), layer.dequantized_weight(), lin.bias)
    assert _rel(layer(x), reference) < 0.01
    assert tuple(layer.weight_int8.shape) == (10, inputs)  # stored unpadded


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


@pytest.mark.parametrize(
    "make",
    [
        Int8WeightOnlyLinear.from_float,
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=32),
        DynamicInt8Linear.from_float,
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
    ],
)
def test_a_built_kernel_layout_keeps_torch_compile_in_one_graph(make):
    # Reading storage and versions (the eager cache check) would split the graph at each layer.
    torch.manual_seed(0)
    layer = make(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    with torch.inference_mode():
        eager = layer(x)  # builds the layout
        torch._dynamo.reset()
        explained = torch._dynamo.explain(layer)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    with torch.inference_mode():
        assert torch.equal(torch.compile(layer)(x), eager)
