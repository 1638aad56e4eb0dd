from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.chain import FLATTEN, plan_chain, run_steps
from netchisel.zoo.models import resnet
from tests.dynamic._nets import conv_chain

X = (torch.randn(2, 1, 8),)


class Stem(nn.Module):
    """Not an nn.Sequential, but its forward is its children in order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flat(self.act(self.conv(x))))  # type: ignore[no-any-return]


class Reshaping(nn.Module):
    """Reshapes between its children (positions first: not `torch.flatten(x, 1)`): not a
    chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).transpose(1, 2).reshape(len(x), -1))  # type: ignore[no-any-return]


class Flat(nn.Module):
    """Asserts its input is flat, as torchvision's ViT encoder asserts its input's shape."""

    def forward(self, x: Tensor) -> Tensor:
        assert x.dim() == 2, f"expected (N, features), got {tuple(x.shape)}"
        return x


class Asserting(nn.Module):
    """A child that raises AssertionError when called out of the forward's order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.flat = Flat()

    def forward(self, x: Tensor) -> Tensor:
        return self.flat(self.conv(x).transpose(1, 2).reshape(len(x), -1))  # type: ignore[no-any-return]


class Flattening(nn.Module):
    """torchvision's classifiers: children conv, pool, fc, and `torch.flatten(x, 1)` in the
    forward between the pool and the fc."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))  # type: ignore[no-any-return]


class Meaning(Flattening):
    """torchvision's ShuffleNetV2 / MNASNet: x.mean over the positions in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.conv(x)).mean([2]))  # type: ignore[no-any-return]


class Pooling(Meaning):
    """torchvision's MobileNetV2: adaptive average pooling and a flatten in forward."""

    def forward(self, x: Tensor) -> Tensor:
        pooled = nn.functional.adaptive_avg_pool1d(self.pool(self.conv(x)), 1)
        return self.fc(torch.flatten(pooled, 1))  # type: ignore[no-any-return]


class FlattenLast(Flattening):
    """SqueezeNet's shape: the flatten after the last child."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.conv(x)), 1)


def test_sequential_opens_only_where_an_exit_lies() -> None:
    net = nn.Sequential(conv_chain()[:2], conv_chain()[2:])
    chain = plan_chain(net, ["0.1"], X)
    assert chain.steps == ["0.0", "0.1", "1"]
    assert chain.exit_after == [1]
    assert tuple(chain.features[0].shape) == (2, 4, 8)
    assert torch.equal(run_steps(net, chain.steps, X[0]), net(X[0]))


def test_a_module_whose_forward_is_its_children_in_order_opens() -> None:
    chain = plan_chain(Stem(), ["act"], X)
    assert chain.steps == ["conv", "act", "flat", "fc"]
    assert chain.exit_after == [1]


def test_resnet_splits_at_stages_but_not_inside_a_block() -> None:
    net = resnet(depth=8, width=4).eval()
    x = (torch.randn(2, 1, 16, 16),)
    chain = plan_chain(net, ["layer1", "layer2.0"], x)
    assert chain.steps == [
        "conv1", "bn1", "relu", "layer1", "layer2.0", "layer3", "pool", "flatten", "fc"
    ]  # fmt: skip
    assert chain.exit_after == [3, 4]
    assert torch.equal(run_steps(net, chain.steps, x[0]), net(x[0]))
    with pytest.raises(ConfigError) as err:
        plan_chain(net, ["layer1.0.conv1"], x)
    assert str(err.value) == (
        "dynamic.early_exit: cannot exit after 'layer1.0.conv1': the forward of 'layer1.0' "
        "(BasicBlock) is not its children run in order (running them one after the other does "
        "not give its output); exit after 'layer1.0' or another module that runs on the "
        "model's main path"
    )


@pytest.mark.parametrize(
    ("net", "exits", "message"),
    [
        (conv_chain(), ["9"], "exit after '9': the model has no such module"),
        (conv_chain(), ["5"], "exit after '5': it is the model's last module"),
        (conv_chain(), ["3", "1"], "list the exits in the order the model runs them: ['1', '3']"),
        (conv_chain(), ["1", "1"], "exits ['1', '1'] name a module twice"),
        (
            Reshaping(),
            ["conv"],
            "the model's forward (Reshaping) is not its top-level modules run in order ('fc' "
            "fails on 'conv''s output (RuntimeError)), so it cannot be split anywhere",
        ),
        (nn.Sequential(Stem()), ["0", "0.act"], "exit after '0.act' lies inside exit '0'"),
        (Asserting(), ["conv"], "('flat' fails on 'conv''s output (AssertionError))"),
    ],
)
def test_bad_exits_are_one_line(net: nn.Module, exits: list[str], message: str) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        plan_chain(net, exits, X)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_flatten_or_pooling_in_the_forward_between_children_is_a_step() -> None:
    # torchvision's ResNet, VGG, MobileNetV3, EfficientNet and RegNet call torch.flatten(x, 1)
    # in forward between their pooling and their classifier, ShuffleNetV2 and MNASNet
    # x.mean([2, 3]), MobileNetV2 F.adaptive_avg_pool2d and a flatten: each was refused at
    # every exit.
    net = Flattening().eval()
    chain = plan_chain(net, ["conv"], X)
    assert (chain.steps, chain.exit_after) == (["conv", "pool", FLATTEN, "fc"], [0])
    assert torch.equal(run_steps(net, chain.steps, X[0]), net(X[0]))
    for net in (Meaning().eval(), Pooling().eval()):  # the two glues agree exactly here
        chain = plan_chain(net, ["conv"], X)
        assert chain.steps == ["conv", "pool", "@mean", "fc"]
        assert torch.equal(run_steps(net, chain.steps, X[0]), net(X[0]))
    last = FlattenLast().eval()
    chain = plan_chain(last, ["conv"], X)
    assert chain.steps == ["conv", "pool", FLATTEN]
    assert torch.equal(run_steps(last, chain.steps, X[0]), last(X[0]))


def test_models_with_several_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="takes 2 inputs"):
        plan_chain(conv_chain(), ["1"], (X[0], X[0]))
