"""The digits models: `mlp` (LeNet-300-100 shape), `cnn`, `resnet` (CIFAR ResNet, He et al.
2016, section 4.2, option-B shortcuts) and `mobilenet` (MobileNetV2 inverted residuals, cut
down for 32x32 inputs).

Written by hand rather than taken from torchvision because torchvision's ResNet/MobileNet are
ImageNet-shaped (stride-2 stem, 224x224) and torchvision is not a dependency; these are a few
dozen lines each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder
from netchisel.zoo.models._marks import marked

# -- mlp --------------------------------------------------------------------------------------


@builder
def mlp(
    in_features: int = 64, hidden: Sequence[int] = (300, 100), num_classes: int = 10
) -> nn.Module:
    """A multi-layer perceptron of LeNet-300-100 shape; flattens (N, C, H, W) inputs itself.

    Layers are named `flatten, fc1, relu1, fc2, relu2, ..., fc{len(hidden)+1}`. With 64 inputs
    (8x8 digits) it has 50,610 parameters; with 784 inputs (MNIST) the classic 266,610.

    Example:
        >>> import torch
        >>> m = mlp()
        >>> m(torch.zeros(2, 1, 8, 8)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 50610)
    """
    widths = [int(h) for h in hidden]
    if in_features < 1 or num_classes < 1 or any(h < 1 for h in widths):
        raise ConfigError(
            f"mlp sizes must be >= 1 (in_features={in_features}, hidden={widths}, "
            f"num_classes={num_classes})"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    prev = in_features
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(prev, width)
        layers[f"relu{i}"] = nn.ReLU()
        prev = width
    layers[f"fc{len(widths) + 1}"] = nn.Linear(prev, num_classes)
    kwargs = {"in_features": in_features, "hidden": widths, "num_classes": num_classes}
    return marked(nn.Sequential(layers), "mlp", kwargs)


# -- cnn --------------------------------------------------------------------------------------


@builder
def cnn(
    in_channels: int = 1, width: int = 32, num_classes: int = 10, image_size: int = 32
) -> nn.Module:
    """A small conv net: three conv3x3-bn-relu-maxpool2 stages (w, 2w, 4w channels) + Linear.

    `image_size` (a multiple of 8) fixes the Linear's input: 4w * (image_size / 8)^2.
    Submodules are `features.{conv,bn,relu,pool}{1,2,3}`, `flatten`, `classifier`.

    Example:
        >>> import torch
        >>> m = cnn(width=8)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if image_size < 8 or image_size % 8:
        raise ConfigError(f"cnn image_size must be a multiple of 8, got {image_size}")
    if in_channels < 1 or width < 1 or num_classes < 1:
        raise ConfigError(
            f"cnn sizes must be >= 1 (in_channels={in_channels}, width={width}, "
            f"num_classes={num_classes})"
        )
    features: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_channels
    for i, channels in enumerate((width, 2 * width, 4 * width), start=1):
        # No conv bias: the BatchNorm right after it has its own.
        features[f"conv{i}"] = nn.Conv2d(prev, channels, 3, padding=1, bias=False)
        features[f"bn{i}"] = nn.BatchNorm2d(channels)
        features[f"relu{i}"] = nn.ReLU()
        features[f"pool{i}"] = nn.MaxPool2d(2)
        prev = channels
    side = image_size // 8
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(features),
            flatten=nn.Flatten(),
            classifier=nn.Linear(prev * side * side, num_classes),
        )
    )
    kwargs = {
        "in_channels": in_channels,
        "width": width,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    return marked(model, "cnn", kwargs)


# -- resnet -----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two conv3x3-bn layers and a shortcut (1x1 conv + bn when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # A plain `+` (not add_) so tracers and channel-pruning graphs see the coupling.
        return self.relu2(out + identity)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of BasicBlocks (strides 1, 2, 2), pool, fc."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        prev = width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(prev, channels, stride))
                prev = channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))  # type: ignore[no-any-return]


@builder
def resnet(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 1
) -> nn.Module:
    """CIFAR ResNet-`depth` (depth = 6n + 2: 20, 32, 44, 56, ...) with base width `width`.

    Three stages of n BasicBlocks with w, 2w, 4w channels; where a block changes shape its
    shortcut is a 1x1 conv + bn (option B). Global average pooling makes it input-size agnostic.
    ResNet-20 at width 16 with one input channel has 272,186 parameters.

    Example:
        >>> import torch
        >>> m = resnet(depth=8, width=4)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}"
        )
    if width < 1 or num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"resnet sizes must be >= 1 (width={width}, num_classes={num_classes}, "
            f"in_channels={in_channels})"
        )
    kwargs = {
        "depth": depth,
        "width": width,
        "num_classes": num_classes,
        "in_channels": in_channels,
    }
    return marked(ResNet(depth, width, num_classes, in_channels), "resnet", kwargs)


# -- mobilenet --------------------------------------------------------------------------------

# (expansion t, channels c, repeats n, first stride s), as in MobileNetV2 table 2, cut down
# for 32x32 inputs: the stem keeps stride 1, the 160/320-channel stages are dropped (at 4x4 they
# add 1.5 M parameters and little accuracy on digits), so 32x32 ends at 4x4 like CIFAR nets.
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))
MOBILENET_STEM = 32
MOBILENET_LAST = 1280


def _make_divisible(value: float, divisor: int = 8) -> int:
    # MobileNet rounding: nearest multiple of 8, never more than 10 % below the target.
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when t = 1), depthwise 3x3, project 1x1 (linear bottleneck)."""

    def __init__(self, in_channels: int, channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out + x if self.use_residual else out


@builder
def mobilenet(width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """MobileNetV2-style net for 32x32 inputs (stem stride 1; 32x32 -> 4x4 -> pool -> fc).

    Channels scale with `width_mult` (rounded to multiples of 8); the last 1x1 conv keeps
    1280 channels unless width_mult > 1, as in the paper. See `MOBILENET_STAGES` for the table.

    Example:
        >>> import torch
        >>> m = mobilenet(width_mult=0.25)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if not width_mult > 0 or num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"mobilenet needs width_mult > 0 and sizes >= 1 (width_mult={width_mult}, "
            f"num_classes={num_classes}, in_channels={in_channels})"
        )
    stem = _make_divisible(MOBILENET_STEM * width_mult)
    last = _make_divisible(MOBILENET_LAST * max(1.0, width_mult))
    layers: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()
        )
    ]
    prev = stem
    for expansion, channels, repeats, stride in MOBILENET_STAGES:
        out = _make_divisible(channels * width_mult)
        for i in range(repeats):
            layers.append(InvertedResidual(prev, out, stride if i == 0 else 1, expansion))
            prev = out
    layers.append(
        nn.Sequential(nn.Conv2d(prev, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6())
    )
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(last, num_classes),
        )
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
    kwargs = {
        "width_mult": float(width_mult),
        "num_classes": num_classes,
        "in_channels": in_channels,
    }
    return marked(model, "mobilenet", kwargs)
