"""The small op set of the cell space; every op maps C channels to C, at stride 1 or 2.

As in DARTS (Liu et al. 2019, section 3.1) but smaller: one separable conv per `sep` op
instead of two, and a strided ReLU-1x1 conv-BN where DARTS' reduction cell has a factorized
reduce (it then works for any channel count). Every op exists in 1-D (sequences, `dims=1`:
Conv1d, BatchNorm1d, pools over the last axis) and 2-D (images, `dims=2`); the kernel sizes
are the same, so "sep3" is 3 taps in 1-D and 3 x 3 in 2-D.
"""

from __future__ import annotations

from torch import nn

from netchisel.core.errors import ConfigError

CELL_OPS = ("sep3", "sep5", "conv3", "max3", "avg3", "skip")
SPATIAL_DIMS = (1, 2)

_CONV: dict[int, type[nn.Conv1d | nn.Conv2d]] = {1: nn.Conv1d, 2: nn.Conv2d}
_BN: dict[int, type[nn.BatchNorm1d | nn.BatchNorm2d]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_MAX: dict[int, type[nn.MaxPool1d | nn.MaxPool2d]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_AVG: dict[int, type[nn.AvgPool1d | nn.AvgPool2d]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d}
_GAP: dict[int, type[nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
}


def check_dims(dims: object, where: str) -> int:
    """`dims` if it is 1 or 2, else one clear error naming `where`.

    Example:
        >>> check_dims(1, "cell_net")
        1
    """
    if dims not in SPATIAL_DIMS or isinstance(dims, bool) or not isinstance(dims, int):
        raise ConfigError(f"{where} dims must be 1 (sequences) or 2 (images), got {dims!r}")
    return dims


def conv(
    dims: int, in_channels: int, channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Module:
    """A bias-free 'same'-padded Conv1d or Conv2d."""
    return _CONV[dims](
        in_channels, channels, kernel, stride, kernel // 2, groups=groups, bias=False
    )


def batch_norm(dims: int, channels: int) -> nn.Module:
    """BatchNorm1d or BatchNorm2d."""
    return _BN[dims](channels)


def global_pool(dims: int) -> nn.Module:
    """AdaptiveAvgPool1d(1) or AdaptiveAvgPool2d(1)."""
    return _GAP[dims](1)


def relu_conv_bn(
    in_channels: int,
    channels: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    dims: int = 2,
) -> list[nn.Module]:
    """ReLU, a bias-free 'same'-padded conv, BatchNorm (the DARTS op order)."""
    conv_ = conv(dims, in_channels, channels, kernel, stride, groups)
    return [nn.ReLU(), conv_, batch_norm(dims, channels)]


def cell_op(name: str, channels: int, stride: int, dims: int = 2) -> nn.Module:
    """One op of `CELL_OPS` on `channels` channels, over `dims` spatial axes (1 or 2).

    Example:
        >>> import torch
        >>> cell_op("sep5", 8, 2)(torch.zeros(1, 8, 8, 8)).shape
        torch.Size([1, 8, 4, 4])
        >>> cell_op("max3", 8, 2, dims=1)(torch.zeros(1, 8, 40)).shape
        torch.Size([1, 8, 20])
    """
    check_dims(dims, "cell_op")
    if name in ("sep3", "sep5"):
        kernel = int(name[-1])
        depthwise = relu_conv_bn(channels, channels, kernel, stride, channels, dims)
        # ReLU, depthwise k x k, pointwise 1x1, BN: the BN after the depthwise conv is dropped.
        pointwise = conv(dims, channels, channels, 1)
        return nn.Sequential(depthwise[0], depthwise[1], pointwise, depthwise[2])
    if name == "conv3":
        return nn.Sequential(*relu_conv_bn(channels, channels, 3, stride, dims=dims))
    if name == "max3":
        return _MAX[dims](3, stride, 1)
    if name == "avg3":
        return _AVG[dims](3, stride, 1, count_include_pad=False)
    if name == "skip":
        if stride == 1:
            return nn.Identity()
        return nn.Sequential(*relu_conv_bn(channels, channels, 1, stride, dims=dims))
    raise ConfigError(f"unknown cell op {name!r} (known: {', '.join(CELL_OPS)})")
