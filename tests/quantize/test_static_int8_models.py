"""quantize.static_int8 on the shapes real models have: a module called twice (torchvision's
ResNet blocks), a layer whose weight its parent passes to F.linear (torchvision's Swin),
nn.MultiheadAttention's out_proj; and torchvision's ResNet-18 itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.task import custom_task
from netchisel.quantize.formats.static_int8 import StaticInt8Conv2d, StaticInt8Linear
from netchisel.quantize.static_int8 import StaticInt8Config, quantize_static_int8


def _quantize(model: nn.Module, calibration: Tensor) -> Context:
    task = custom_task(
        lambda m: {"score": 0.0}, [calibration[:1]], "score", train=TensorDataset(calibration)
    )
    ctx = Context(task, quiet=True)
    quantize_static_int8(model, StaticInt8Config(calibration_samples=len(calibration)), ctx)
    return ctx


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Block(nn.Module):
    """torchvision's BasicBlock shape: one ReLU module called twice, the second after the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


def test_a_module_called_twice_does_not_stop_the_x86_quantizer() -> None:
    # Before: "Input partition has more than one output node" from torchao's conv-add-relu
    # pattern, which found both calls of `relu` in one partition.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(), Block()).eval()
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        reference = model(x)
        ctx = _quantize(model, x)
        error = _relative_error(model(x), reference)
    assert ctx.records["quantized_layers"] == 5 and ctx.records["folded_batchnorms"] == 4
    assert ctx.records["float_layers"] == []
    assert error < 0.05, error  # measured 0.0089


class ParentReadsWeight(nn.Module):
    """torchvision's Swin attention: `F.linear(x, self.qkv.weight, self.qkv.bias)`."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / 4, dim=-1)
        return F.linear(attention @ v, self.proj.weight, self.proj.bias)


def test_a_layer_whose_weight_its_parent_reads_is_quantized() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), ParentReadsWeight()).eval()
    x = torch.randn(8, 5, 8)
    with torch.no_grad():
        reference = model(x)
        ctx = _quantize(model, x)
        error = _relative_error(model(x), reference)
    assert isinstance(model[1].qkv, StaticInt8Linear)
    assert isinstance(model[1].proj, StaticInt8Linear)
    assert ctx.records["quantized_layers"] == 3 and ctx.records["float_layers"] == []
    assert error < 0.05, error  # measured 0.015


def test_multihead_attention_out_proj_stays_float_and_says_why() -> None:
    torch.manual_seed(0)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha, self.fc = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.mha(x, x, x, need_weights=False)[0])

    model = Attention().eval()
    x = torch.randn(4, 5, 16)
    ctx = _quantize(model, x)
    assert isinstance(model.fc, StaticInt8Linear) and type(model.mha.out_proj) is not nn.Linear
    assert not isinstance(model.mha.out_proj, StaticInt8Linear)
    (why,) = ctx.records["float_layers"]
    assert why.startswith("mha.out_proj: nn.MultiheadAttention never calls it")


def test_torchvision_resnet18_runs_every_conv_and_linear_int8() -> None:
    from tests.models._torchvision import torchvision

    torch.manual_seed(0)
    model = torchvision().models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    calibration = torch.rand(4, 3, 32, 32) * 2 - 1
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = model(x)
        ctx = _quantize(model, calibration)
        error = _relative_error(model(x), reference)
    int8 = [
        n for n, m in model.named_modules() if isinstance(m, StaticInt8Conv2d | StaticInt8Linear)
    ]
    assert len(int8) == 21 == ctx.records["quantized_layers"]  # 20 convs and fc
    assert ctx.records["folded_batchnorms"] == 20 and ctx.records["float_layers"] == []
    assert error < 0.15, error  # measured 0.025 (7-bit inputs on this AVX2 CPU)
