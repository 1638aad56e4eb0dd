"""The small op set of the cell space; every op maps C channels to C, at stride 1 or 2.

As in DARTS (Liu et al. 2019, section 3.1) but smaller: one separable conv per `sep` op
instead of two, and a strided ReLU-1x1 conv-BN where DARTS' reduction cell has a factorized
reduce (it then works for any channel count).
"""

from __future__ import annotations

from torch import nn

from netchisel.core.errors import ConfigError

CELL_OPS = ("sep3", "sep5", "conv3", "max3", "avg3", "skip")


def relu_conv_bn(
    in_channels: int, channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """ReLU, a bias-free 'same'-padded conv, BatchNorm (the DARTS op order)."""
    conv = nn.Conv2d(in_channels, channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [nn.ReLU(), conv, nn.BatchNorm2d(channels)]


def cell_op(name: str, channels: int, stride: int) -> nn.Module:
    """One op of `CELL_OPS` on `channels` channels.

    Example:
        >>> import torch
        >>> cell_op("sep5", 8, 2)(torch.zeros(1, 8, 8, 8)).shape
        torch.Size([1, 8, 4, 4])
    """
    if name in ("sep3", "sep5"):
        kernel = int(name[-1])
        depthwise = relu_conv_bn(channels, channels, kernel, stride, groups=channels)
        # ReLU, depthwise k x k, pointwise 1x1, BN: the BN after the depthwise conv is dropped.
        pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        return nn.Sequential(depthwise[0], depthwise[1], pointwise, depthwise[2])
    if name == "conv3":
        return nn.Sequential(*relu_conv_bn(channels, channels, 3, stride))
    if name == "max3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip":
        if stride == 1:
            return nn.Identity()
        return nn.Sequential(*relu_conv_bn(channels, channels, 1, stride))
    raise ConfigError(f"unknown cell op {name!r} (known: {', '.join(CELL_OPS)})")
