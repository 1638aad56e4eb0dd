"""quantize.static_int8 on a DARTS-style cell in 1-D and 2-D: ReLU-conv-BN and separable
(depthwise then pointwise) branches reading one shared state. torchao's x86 recipe leaves a
Conv1d float unless a ReLU follows it; `annotate_missed_layers` quantizes the rest."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ModelError
from netchisel.core.task import Task, classification_task
from netchisel.quantize.formats import StaticInt8Conv1d, StaticInt8Linear
from netchisel.quantize.formats.static_int8 import StaticInt8Conv2d, float_twin
from netchisel.quantize.static_int8 import StaticInt8Config, quantize_static_int8

SHAPES = {1: (1, 40), 2: (1, 12, 12)}


def _conv(dims: int, *args: int, **kwargs: object) -> nn.Module:
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return conv(*args, bias=False, **kwargs)  # type: ignore[arg-type]


def _bn(dims: int, channels: int) -> nn.Module:
    bn = nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
    bn.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
    return bn


class Cell(nn.Module):
    """stem conv-BN -> state s; s -> ReLU-conv3-BN and s -> ReLU-depthwise3-pointwise1-BN,
    summed; a strided ReLU-conv1-BN; global pooling; Linear. 5 convs and 1 Linear."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(_conv(dims, 1, 8, 3, padding=1), _bn(dims, 8))
        self.plain = nn.Sequential(nn.ReLU(), _conv(dims, 8, 8, 3, padding=1), _bn(dims, 8))
        self.sep = nn.Sequential(
            nn.ReLU(),
            _conv(dims, 8, 8, 3, padding=1, groups=8),
            _conv(dims, 8, 8, 1),
            _bn(dims, 8),
        )
        self.reduce = nn.Sequential(nn.ReLU(), _conv(dims, 8, 16, 1, stride=2), _bn(dims, 16))
        pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(pool, nn.Flatten(), nn.Linear(16, 10))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        return self.head(self.reduce(self.plain(s) + self.sep(s)))  # type: ignore[no-any-return]


def _inputs(dims: int, n: int) -> Tensor:
    return torch.randn(n, *SHAPES[dims], generator=torch.Generator().manual_seed(1))


def _task(dims: int, n: int = 64) -> Task:
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    data = TensorDataset(_inputs(dims, n), labels)
    return classification_task({"train": data, "val": data}, batch_size=32)


def _relative_error(out: Tensor, ref: Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dims", [1, 2])
def test_every_conv_of_a_cell_is_quantized_within_3_percent(dims: int) -> None:
    net, x = Cell(dims), _inputs(dims, 32)
    with torch.no_grad():
        ref = net(x)
    ctx = Context(_task(dims), quiet=True)
    quantize_static_int8(net, StaticInt8Config(calibration_samples=64), ctx)
    # without annotate_missed_layers 1-D gets 2 of 6 (stem.0: a ReLU follows it; the Linear)
    assert ctx.records["quantized_layers"] == 6 and ctx.records["float_layers"] == []
    assert ctx.records["folded_batchnorms"] == 4
    conv = StaticInt8Conv1d if dims == 1 else StaticInt8Conv2d
    for layer in (net.stem[0], net.plain[1], net.sep[1], net.sep[2], net.reduce[1]):
        assert type(layer) is conv
    assert isinstance(net.head[2], StaticInt8Linear)
    with torch.no_grad():
        out = net(x)
        assert _relative_error(out, ref) < 0.03
        assert _relative_error(float_twin(net)(x), out) < 0.03


class _Odd(nn.Module):
    """A 'same'-padded conv, a reflect-padded conv, and a conv whose output is unused."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.same = nn.Conv1d(1, 4, 3, padding="same")
        self.reflect = nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect")
        self.unused = nn.Conv1d(4, 4, 1)
        self.head = nn.Linear(4 * 40, 10)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.same(x))
        self.unused(y)
        return self.head(self.reflect(y).flatten(1))  # type: ignore[no-any-return]


def test_float_layers_say_why() -> None:
    net, x = _Odd(), _inputs(1, 16)
    with torch.no_grad():
        ref = net(x)
    ctx = Context(_task(1), quiet=True)
    quantize_static_int8(net, StaticInt8Config(calibration_samples=32), ctx)
    assert isinstance(net.same, StaticInt8Conv1d) and isinstance(net.head, StaticInt8Linear)
    assert ctx.records["float_layers"] == [
        "reflect: padding_mode 'reflect': the int8 conv pads with zeros only (pad with F.pad "
        "before a padding=0 conv to quantize it)",
        "unused: its output is never used, so torch.export drops it as dead code and it gets "
        "no calibrated input (remove the layer or use its output)",
    ]
    with torch.no_grad():
        # 0.037 with 7-bit inputs (CPUs without VNNI: full_int8_range), ~0.02 with 8 bits.
        assert _relative_error(net(x), ref) < 0.05


def test_an_even_same_padded_conv2d_is_one_model_error() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 2, padding="same"), nn.Flatten(), nn.Linear(4 * 144, 10))
    with pytest.raises(ModelError, match="numeric padding"):
        quantize_static_int8(
            net.eval(), StaticInt8Config(calibration_samples=16), Context(_task(2), quiet=True)
        )
