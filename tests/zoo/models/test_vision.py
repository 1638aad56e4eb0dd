"""The digits models: exact parameter counts and the structure pruning and NAS rely on."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import fx, nn

from netchisel.core.errors import ConfigError
from netchisel.zoo import models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_is_lenet_300_100() -> None:
    # (in*300 + 300) + (300*100 + 100) + (100*10 + 10)
    assert n_params(models.mlp(in_features=784)) == 266_610
    assert n_params(models.mlp()) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 50_610
    assert models.mlp()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    names = [n for n, _ in models.mlp(hidden=(5,)).named_children()]
    assert names == ["flatten", "fc1", "relu1", "fc2"]


def _adds(model: nn.Module) -> int:
    graph = fx.symbolic_trace(model).graph
    return sum(1 for n in graph.nodes if n.op == "call_function" and n.target is operator.add)


def test_resnet20_structure() -> None:
    model = models.resnet()
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 9
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 9 * 2 + 2  # stem, two per block, two option-B shortcuts
    assert [m.kernel_size for m in convs].count((1, 1)) == 2
    assert model.fc.in_features == 64
    # The residual add is a visible `+` for tracers: one per block.
    assert _adds(model) == 9


def test_resnet_depth_must_be_6n_plus_2() -> None:
    assert (
        len([m for m in models.resnet(depth=32).modules() if isinstance(m, models.BasicBlock)])
        == 15
    )
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        models.resnet(depth=18)


def test_mobilenet_structure() -> None:
    model = models.mobilenet()
    blocks = [m for m in model.modules() if isinstance(m, models.InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in models.MOBILENET_STAGES) == 11
    assert sum(b.use_residual for b in blocks) == 6
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 11
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert _adds(model) == 6
    # 32x32 in, 4x4 before pooling.
    assert model.features(torch.zeros(1, 1, 32, 32)).shape == (1, 1280, 4, 4)
