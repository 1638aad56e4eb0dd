"""Clustered layers: gradients to the centroids, the cached inference weight, every conv."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.quantize.formats import ClusteredConv, ClusteredLinear


def test_centroid_gradient_is_the_sum_of_its_weights_gradients() -> None:
    layer = ClusteredLinear.from_linear(nn.Linear(16, 8), bits=3, pruned=torch.rand(8, 16) < 0.5)
    x = torch.randn(4, 16)
    layer(x).pow(2).sum().backward()
    assert layer.codebook.grad is not None
    weight = layer.weight.detach().requires_grad_()
    nn.functional.linear(x, weight, layer.bias.detach()).pow(2).sum().backward()
    assert weight.grad is not None
    per_index = torch.zeros(8).index_add_(
        0, layer.indices.long().reshape(-1), weight.grad.reshape(-1)
    )
    per_index[0] = 0.0  # the reserved zero code is not trained
    assert torch.allclose(layer.codebook.grad, per_index, atol=1e-5)


def test_inference_weight_is_gathered_once_until_the_codebook_changes() -> None:
    layer = ClusteredLinear.from_linear(nn.Linear(8, 4), bits=2)
    with torch.no_grad():
        first = layer.weight
        assert layer.weight is first  # cached
        layer.load_state_dict({**layer.state_dict(), "codebook": layer.codebook + 1.0})
        second = layer.weight
    assert second is not first and torch.equal(second, first + 1.0)
    assert layer.weight.requires_grad  # with grad enabled it is gathered for training


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv3d(2, 4, 3, padding="same", dilation=1),
    ],
)
def test_clustered_conv_computes_the_conv_of_its_shared_weight(conv: nn.Module) -> None:
    layer = ClusteredConv.from_conv(conv, bits=4)  # type: ignore[arg-type]
    reference = type(conv)(
        conv.in_channels,  # type: ignore[arg-type]
        conv.out_channels,  # type: ignore[arg-type]
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        groups=conv.groups,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,  # type: ignore[arg-type]
    )
    reference.load_state_dict({**conv.state_dict(), "weight": layer.weight.detach()})
    x = torch.randn(2, conv.in_channels, *([6] * (len(conv.kernel_size))))  # type: ignore[arg-type]
    assert torch.allclose(layer(x), reference(x), atol=1e-6)
    assert torch.unique(layer.weight).numel() <= 16
