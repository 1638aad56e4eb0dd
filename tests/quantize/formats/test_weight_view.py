"""`weight` of quantized Linear layers: metadata free, F.linear on the kernel, other ops in
float, read-only, not stored; real readers (nn.MultiheadAttention, torchvision ViT, T5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netchisel as nc
from netchisel.core.errors import ModelError
from netchisel.quantize import DynamicInt8Config, RTNConfig, quantize_
from netchisel.quantize.formats import (
    DynamicInt8Linear,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    PackedConv2d,
    PackedLinear,
    StaticInt8Conv1d,
    StaticInt8Conv2d,
    StaticInt8Linear,
)
from netchisel.quantize.formats.weight_view import WeightView
from netchisel.quantize.primitives import QuantSpec

CONFIGS = {
    "dynamic_int8": DynamicInt8Config(),
    "int8": RTNConfig(bits=8),
    "int4": RTNConfig(bits=4, group_size=32),
}


def _layers(linear: nn.Linear) -> dict[str, nn.Module]:
    return {
        "int8": Int8WeightOnlyLinear.from_float(linear),
        "int4": Int4WeightOnlyLinear.from_float(linear, group_size=32),
        "dynamic": DynamicInt8Linear.from_float(linear),
        "dynamic_fbgemm": DynamicInt8Linear.from_float(linear, "per_tensor"),
        "packed3": PackedLinear.from_float(linear, QuantSpec(bits=3)),
        "static": StaticInt8Linear.from_float(linear, input_scale=0.05, input_zero_point=128),
    }


@pytest.mark.parametrize("kind", list(_layers(nn.Linear(64, 8))))
def test_weight_view_runs_the_kernel_under_f_linear(kind: str) -> None:
    torch.manual_seed(0)
    layer = _layers(nn.Linear(64, 24))[kind]
    weight = layer.weight
    assert isinstance(weight, WeightView) and isinstance(weight, torch.Tensor)
    assert (weight.dtype, tuple(weight.shape), weight.device.type) == (
        torch.float32,
        (24, 64),
        "cpu",
    )
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(F.linear(x, layer.weight, layer.bias), y)
        # Another bias (Swin V2 passes a modified copy): swapped in after the kernel.
        other = torch.randn(24)
        swapped = F.linear(x, layer.weight, other)
        assert torch.allclose(swapped, y - layer.bias + other, atol=1e-5)
        # Any other op computes with the dequantized weight, exactly.
        deq = layer.dequantized_weight()  # type: ignore[operator]
        assert torch.equal(x @ layer.weight.T, x @ deq.T)
        assert torch.equal(layer.weight + 0, deq)


def test_weight_view_is_read_only_and_not_stored() -> None:
    layer = Int8WeightOnlyLinear.from_float(nn.Linear(32, 8))
    before = layer.weight_int8.clone()
    writes = [
        lambda w: w.mul_(2),
        lambda w: nn.init.zeros_(w),
        lambda w: torch.add(w, 1, out=w),
        lambda w: w.__iadd__(1),
    ]
    for write in writes:
        with pytest.raises(ModelError, match="change the weight of a quantized layer"):
            write(layer.weight)
    assert torch.equal(layer.weight_int8, before)
    assert sorted(layer.state_dict()) == ["bias", "scales", "weight_int8"]
    assert "weight" not in dict(layer.named_parameters()) | dict(layer.named_buffers())


@pytest.mark.parametrize(("name", "size"), [("dynamic_int8", 3416), ("int8", 3312), ("int4", 2272)])
def test_saved_bytes_unchanged(name: str, size: int, tmp_path: Path) -> None:
    # The sizes are those of the artifact written before `weight` existed (commit 389906b).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    quantize_(net, CONFIGS[name])
    nc.save(net, tmp_path / "m")
    assert os.path.getsize(tmp_path / "m" / "model.safetensors") == size
    loaded = nc.load(tmp_path / "m")
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_multihead_attention_reads_out_proj_weight(name: str) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        reference = mha(x, x, x)[0]
        quantize_(mha, CONFIGS[name])
        out = mha(x, x, x)[0]
        # out_proj runs in float on its dequantized weight: equal to a float MHA with it.
        twin = nn.MultiheadAttention(64, 4, batch_first=True).eval()
        twin.load_state_dict(
            {k: v for k, v in mha.state_dict().items() if not k.startswith("out_proj")},
            strict=False,
        )
        twin.out_proj.weight.copy_(mha.out_proj.dequantized_weight())  # type: ignore[operator]
        twin.out_proj.bias.copy_(mha.out_proj.bias)
        assert torch.allclose(out, twin(x, x, x)[0], atol=1e-6)
    assert type(mha.out_proj).__name__ != "NonDynamicallyQuantizableLinear"
    # Measured: dynamic 0.0047, int8 0.0047, int4 0.072 (seed 0); bounds ~3x.
    bound = {"dynamic_int8": 0.015, "int8": 0.015, "int4": 0.2}[name]
    assert _relative_error(out, reference) < bound


def _tiny_vit() -> nn.Module:
    from tests.models._torchvision import torchvision

    vit = torchvision().models.vision_transformer.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    nn.init.normal_(vit.heads.head.weight, std=0.02)  # zeros by default: every output 0
    return vit.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torchvision_vit(name: str) -> None:
    torch.manual_seed(0)
    vit = _tiny_vit()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = vit(x)
        quantize_(vit, CONFIGS[name])
        error = _relative_error(vit(x), reference)
    assert type(vit.encoder.layers[0].mlp[0]).__name__ != "Linear"
    # Measured: dynamic 0.010, int8 0.0095, int4 0.11 (seed 0); bounds ~3x.
    assert error < {"dynamic_int8": 0.03, "int8": 0.03, "int4": 0.3}[name], error


@pytest.mark.parametrize("name", list(CONFIGS))
def test_t5_reads_weight_dtype(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    )
    t5 = transformers.T5EncoderModel(config).eval()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = t5(input_ids=ids).last_hidden_state
        quantize_(t5, CONFIGS[name])
        error = _relative_error(t5(input_ids=ids).last_hidden_state, reference)
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    # Measured: dynamic 0.012, int8 0.0091, int4 0.13 (seed 0); bounds ~3x.
    assert error < {"dynamic_int8": 0.04, "int8": 0.03, "int4": 0.4}[name], error


def test_convolutions_have_a_weight_view_too() -> None:
    # Hugging Face's ViT reads `projection.weight.dtype` of its patch conv.
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, stride=4)
    layers = [
        StaticInt8Conv2d.from_float(conv, input_scale=0.02, input_zero_point=128),
        PackedConv2d.from_float(conv, QuantSpec(bits=4, symmetric=False)),
    ]
    x = torch.randn(2, 3, 8, 8)
    for layer in layers:
        weight = layer.weight
        assert (weight.dtype, tuple(weight.shape)) == (torch.float32, (8, 3, 4, 4))
        with torch.no_grad():  # F.conv2d computes in float on the dequantized weight
            expected = F.conv2d(x, layer.dequantized_weight(), layer.bias, 4)
            assert torch.equal(F.conv2d(x, weight, layer.bias, 4), expected)
    conv1d = StaticInt8Conv1d.from_float(nn.Conv1d(2, 4, 3), input_scale=0.02)
    assert tuple(conv1d.weight.shape) == (4, 2, 3) and tuple((conv1d.weight * 1).shape) == (4, 2, 3)


def test_a_model_whose_attention_reads_the_view_profiles() -> None:
    # The FLOP and memory counters are dispatch modes: the view reaches them dequantized.
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 6, 32)
    before = nc.profile(model, x, latency=False, on_disk=False)
    quantize_(model, RTNConfig(bits=8))
    after = nc.profile(model, x, latency=False, on_disk=False)
    assert after.macs == before.macs  # out_proj: the same matmul, in float
