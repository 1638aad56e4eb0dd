"""The blocks a macro NAS candidate is made of: conv, separable, grouped (and skip).

Every block maps (N, in, H, W) to (N, out, H / stride, W / stride) and is an ordinary module
whose attributes are plain numbers, so artifacts rebuild it and `profile` counts it exactly.

- `conv`: the ResNet basic block (He et al. 2016): two k x k convs, a shortcut (1x1 conv + bn
  where the shape changes) and a ReLU after the sum. At k = 3 it is `zoo.models.BasicBlock`.
- `separable`: the MobileNetV2 inverted residual (Sandler et al. 2018): 1x1 expansion by
  `expand` (left out at 1, which is then the depthwise-separable conv of MobileNetV1), k x k
  depthwise, 1x1 linear projection; a residual only where the shape is kept.
- `grouped`: a ResNeXt-style block (Xie et al. 2017) without the bottleneck: 1x1 conv, k x k
  grouped conv, 1x1 conv, shortcut. The groups are the largest divisor of the block's width
  that is <= the asked `groups`, so every width is valid.
- `skip`: an identity; only where the shape is kept (never the first block of a stage).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from netchisel.core.errors import ConfigError

OPS = ("conv", "separable", "grouped", "skip")
ACTIVATIONS = ("relu", "relu6")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name ("relu" or "relu6").

    Example:
        >>> activation("relu6")
        ReLU6()
    """
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    raise ConfigError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")


def conv_bn(
    in_channels: int, channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """A bias-free 'same'-padded conv and its BatchNorm."""
    conv = nn.Conv2d(in_channels, channels, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(channels)]


def _shortcut(in_channels: int, channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == channels:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_channels, channels, 1, stride))


class ConvBlock(nn.Module):
    """ResNet basic block with k x k convs: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(
        self, in_channels: int, channels: int, stride: int, kernel: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, channels, kernel, stride)
        self.relu1 = activation(act)
        self.conv2, self.bn2 = conv_bn(channels, channels, kernel)
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu2 = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))  # type: ignore[no-any-return]


class SeparableBlock(nn.Module):
    """Inverted residual: [1x1 expand, act], k x k depthwise, act, 1x1 project (linear)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        kernel: int,
        expand: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.use_residual = stride == 1 and in_channels == channels
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(in_channels, hidden, 1), activation(act)]
        layers += [*conv_bn(hidden, hidden, kernel, stride, groups=hidden), activation(act)]
        layers += conv_bn(hidden, channels, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out + x if self.use_residual else out


class GroupedBlock(nn.Module):
    """1x1 conv, k x k grouped conv (stride here), 1x1 conv, each with bn; plus a shortcut."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        kernel: int,
        groups: int = 2,
        act: str = "relu",
    ) -> None:
        super().__init__()
        groups = math.gcd(channels, groups)
        self.conv = nn.Sequential(
            *conv_bn(in_channels, channels, 1),
            activation(act),
            *conv_bn(channels, channels, kernel, stride, groups=groups),
            activation(act),
            *conv_bn(channels, channels, 1),
        )
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x) + self.shortcut(x))  # type: ignore[no-any-return]


def make_block(
    op: str,
    in_channels: int,
    channels: int,
    stride: int,
    kernel: int,
    *,
    expand: int = 1,
    groups: int = 2,
    act: str = "relu",
) -> nn.Module:
    """The block of one op; `skip` is an identity and needs a shape-keeping position.

    Example:
        >>> import torch
        >>> make_block("separable", 8, 16, 2, 3, expand=4)(torch.zeros(1, 8, 8, 8)).shape
        torch.Size([1, 16, 4, 4])
    """
    if op == "conv":
        return ConvBlock(in_channels, channels, stride, kernel, act)
    if op == "separable":
        return SeparableBlock(in_channels, channels, stride, kernel, expand, act)
    if op == "grouped":
        return GroupedBlock(in_channels, channels, stride, kernel, groups, act)
    if op == "skip":
        if stride != 1 or in_channels != channels:
            raise ConfigError(
                "op 'skip' cannot change the shape: it may not be the first block of a stage"
            )
        return nn.Identity()
    raise ConfigError(f"unknown op {op!r} (known: {', '.join(OPS)})")
