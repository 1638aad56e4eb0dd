"""Exact FLOPs and MACs of 1-D models (Conv1d, BatchNorm1d, 1-D pooling), by hand per
docs/measurement.md."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.measure import count_flops
from tests._models_1d import cnn1d, inputs_1d

# Conv1d(1,25,5,stride 2) on 40: 18 outputs; MACs 25*18*1*5, FLOPs 2*MACs + 1 bias per output.
CONV0 = 2 * 25 * 18 * 5 + 25 * 18
RELU0 = 25 * 18
# BatchNorm1d in eval: 2 per element + 2 per channel, affine weight and bias 1 each per element.
BN = 2 * 450 + 2 * 25 + 2 * 450
# Conv1d(25,25,3) on 18: 16 outputs.
CONV3 = 2 * 25 * 16 * 25 * 3 + 25 * 16
RELU4 = 25 * 16
MACS = 25 * 18 * 5 + 25 * 16 * 25 * 3


@pytest.mark.parametrize(
    ("pool", "pool_flops", "features"),
    [
        ("max", 400, 200),  # 1 compare per element read, windows of 2 over 16: all 400 read
        ("avg", 400 + 200, 200),  # + 1 divide per output
        # 16 -> 5: windows [0,4) [3,7) [6,10) [9,13) [12,16), overlapping, + 1 divide each
        ("adaptive", 25 * 5 * 4 + 125, 125),
    ],
)
def test_cnn1d_counts_every_layer_exactly(pool: str, pool_flops: int, features: int) -> None:
    count = count_flops(cnn1d(pool), inputs_1d(1))
    linear = 2 * features * 10 + 10
    assert count.uncounted_ops == ()
    by_module = {k: v for k, v in count.flops_by_module.items() if k}
    assert by_module == {
        "0": CONV0,
        "1": RELU0,
        "2": BN,
        "3": CONV3,
        "4": RELU4,
        "5": pool_flops,
        "6": 0,
        "7": linear,
    }
    assert count.flops == CONV0 + RELU0 + BN + CONV3 + RELU4 + pool_flops + linear
    assert count.macs == MACS + features * 10


@pytest.mark.parametrize(
    ("conv", "length", "out_len"),
    [
        (nn.Conv1d(4, 6, 3, stride=2, padding=1), 11, 6),  # (11 + 2 - 3) // 2 + 1
        (nn.Conv1d(4, 6, 3, dilation=2), 11, 7),  # 11 - 2*(3-1)
        (nn.Conv1d(4, 6, 3, groups=2, bias=False), 11, 9),
        (nn.Conv1d(4, 4, 5, groups=4, padding=2, stride=3), 11, 4),  # depthwise (11+4-5)//3+1
    ],
)
def test_conv1d_stride_padding_dilation_groups(conv: nn.Conv1d, length: int, out_len: int) -> None:
    count = count_flops(conv, torch.zeros(2, 4, length))
    macs = 2 * conv.out_channels * out_len * (4 // conv.groups) * conv.kernel_size[0]
    bias = 2 * conv.out_channels * out_len if conv.bias is not None else 0
    assert (count.macs, count.flops, count.uncounted_ops) == (macs, 2 * macs + bias, ())


def test_pooling1d_with_padding_and_stride() -> None:
    x = torch.zeros(1, 3, 10)
    # MaxPool1d(3, stride 2, padding 1) over 10: windows clipped to the input read
    # 2 (first) + 3 + 3 + 3 + 3 = 14 elements per channel; padding costs nothing.
    assert count_flops(nn.MaxPool1d(3, stride=2, padding=1), x).flops == 3 * 14
    # AvgPool1d(3, stride 3): 3 windows of 3 read 9 elements, + 3 divides, per channel.
    assert count_flops(nn.AvgPool1d(3), x).flops == 3 * (9 + 3)
    # AdaptiveMaxPool1d(1): every element compared once.
    assert count_flops(nn.AdaptiveMaxPool1d(1), x).flops == 3 * 10


def test_batchnorm1d_on_2d_input() -> None:
    bn = nn.BatchNorm1d(8).eval()
    assert count_flops(bn, torch.zeros(4, 8)).flops == 2 * 32 + 2 * 8 + 2 * 32


def test_profile_of_the_1d_model() -> None:
    p = nc.profile(cnn1d(), inputs_1d(1), latency=False, on_disk=False)
    assert p.macs == MACS + 200 * 10
    assert p.flops == CONV0 + RELU0 + BN + CONV3 + RELU4 + 400 + 4010
