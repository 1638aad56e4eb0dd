"""The MNIST-1D models of Greydanus & Kobak (ICML 2024, `notebooks/models.py` of
github.com/greydanus/mnist1d), written again here with netchisel's layer names.

All three take the task's (N, 1, 40) sequences (one channel, 40 steps): the CNN runs Conv1d
on them as they are (no reshape inside `forward`, so tracers and channel pruning see plain
layers), the others flatten them first.

- `mnist1d_logistic`: Flatten, Linear(40, 10): logistic regression (the paper's LinearBase).
- `mnist1d_mlp`: Linear(40, 100)-ReLU, a residual Linear(100, 100)-ReLU
  (h + relu(fc2(h)), as the paper's MLPBase), Linear(100, 10): 15,210 parameters.
- `mnist1d_cnn`: three Conv1d-ReLU layers (25 channels; kernel 5, 3, 3; stride 2; padding 1;
  no BatchNorm, no pooling, as the paper's ConvBase), which take 40 steps to 19, 10, 5;
  Flatten and Linear(125, 10): 5,210 parameters.
- `mnist1d_deep_cnn`: not the paper's; six Conv1d-BatchNorm-ReLU layers in three stages of
  two (widths w, 2w, 4w; the first conv of stages 2 and 3 has stride 2), global average
  pooling and Linear(4w, 10): with w = 16, 25,210 parameters and 311,040 MACs. A deeper
  network whose compute grows towards the end, as ResNets' does, for methods that need more
  than three layers to act on (early exits at its stage boundaries).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder
from netchisel.zoo.models._marks import marked


def _check(name: str, **sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        listed = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ConfigError(f"{name} sizes must be >= 1 ({listed})")


@builder
def mnist1d_logistic(length: int = 40, num_classes: int = 10) -> nn.Module:
    """Logistic regression over the flattened sequence: Flatten, Linear(length, num_classes).

    Example:
        >>> import torch
        >>> m = mnist1d_logistic()
        >>> m(torch.zeros(2, 1, 40)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 410)
    """
    _check("mnist1d_logistic", length=length, num_classes=num_classes)
    model = nn.Sequential(
        OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(length, num_classes)),
    )
    return marked(model, "mnist1d_logistic", {"length": length, "num_classes": num_classes})


class ResidualMLP(nn.Module):
    """fc1-relu1, then h + relu2(fc2(h)), then fc3 (the paper's MLPBase)."""

    def __init__(self, length: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(length, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.fc1(self.flatten(x)))
        # A plain `+` (not add_) so tracers and channel-pruning graphs see the coupling.
        h = h + self.relu2(self.fc2(h))
        return self.fc3(h)  # type: ignore[no-any-return]


@builder
def mnist1d_mlp(length: int = 40, hidden: int = 100, num_classes: int = 10) -> nn.Module:
    """The paper's MLP: Linear(length, hidden)-ReLU, residual Linear(hidden, hidden)-ReLU,
    Linear(hidden, num_classes). Submodules `flatten, fc1, relu1, fc2, relu2, fc3`.

    Example:
        >>> import torch
        >>> m = mnist1d_mlp()
        >>> m(torch.zeros(2, 1, 40)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 15210)
    """
    _check("mnist1d_mlp", length=length, hidden=hidden, num_classes=num_classes)
    kwargs = {"length": length, "hidden": hidden, "num_classes": num_classes}
    return marked(ResidualMLP(length, hidden, num_classes), "mnist1d_mlp", kwargs)


CNN_LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))
"""(kernel, stride, padding) of the CNN's three Conv1d layers, as in the paper."""


def _conv_length(length: int) -> int:
    for kernel, stride, padding in CNN_LAYERS:
        length = (length + 2 * padding - kernel) // stride + 1
    return length


@builder
def mnist1d_cnn(
    in_channels: int = 1, channels: int = 25, length: int = 40, num_classes: int = 10
) -> nn.Module:
    """The paper's CNN: three Conv1d-ReLU (kernel 5, 3, 3; stride 2; padding 1), Flatten, Linear.

    `length` (>= 5) fixes the Linear's input: channels * 5 for 40 steps.
    Submodules are `features.{conv,relu}{1,2,3}`, `flatten`, `classifier`.

    Example:
        >>> import torch
        >>> m = mnist1d_cnn()
        >>> m(torch.zeros(2, 1, 40)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 5210)
    """
    _check(
        "mnist1d_cnn",
        in_channels=in_channels,
        channels=channels,
        length=length,
        num_classes=num_classes,
    )
    if length < 5:
        raise ConfigError(f"mnist1d_cnn length must be >= 5, got {length}")
    features: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_channels
    for i, (kernel, stride, padding) in enumerate(CNN_LAYERS, start=1):
        features[f"conv{i}"] = nn.Conv1d(prev, channels, kernel, stride=stride, padding=padding)
        features[f"relu{i}"] = nn.ReLU()
        prev = channels
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(features),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels * _conv_length(length), num_classes),
        )
    )
    kwargs = {
        "in_channels": in_channels,
        "channels": channels,
        "length": length,
        "num_classes": num_classes,
    }
    return marked(model, "mnist1d_cnn", kwargs)


@builder
def mnist1d_deep_cnn(in_channels: int = 1, width: int = 16, num_classes: int = 10) -> nn.Module:
    """Six Conv1d-BatchNorm1d-ReLU (widths w, w, 2w, 2w, 4w, 4w; kernel 5 first, then 3;
    stride 2 at the third and fifth; 'same' padding), global average pooling, Linear.

    Submodules are `features.{conv,bn,relu}{1..6}`, `pool`, `flatten`, `classifier`; any
    length >= 4 runs.

    Example:
        >>> import torch
        >>> m = mnist1d_deep_cnn()
        >>> m(torch.zeros(2, 1, 40)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 25210)
    """
    _check("mnist1d_deep_cnn", in_channels=in_channels, width=width, num_classes=num_classes)
    widths = (width, width, 2 * width, 2 * width, 4 * width, 4 * width)
    features: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_channels
    for i, out in enumerate(widths, start=1):
        kernel, stride = (5 if i == 1 else 3), (2 if i in (3, 5) else 1)
        features[f"conv{i}"] = nn.Conv1d(prev, out, kernel, stride, padding=kernel // 2)
        features[f"bn{i}"] = nn.BatchNorm1d(out)
        features[f"relu{i}"] = nn.ReLU()
        prev = out
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(features),
            pool=nn.AdaptiveAvgPool1d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(prev, num_classes),
        )
    )
    kwargs = {"in_channels": in_channels, "width": width, "num_classes": num_classes}
    return marked(model, "mnist1d_deep_cnn", kwargs)
