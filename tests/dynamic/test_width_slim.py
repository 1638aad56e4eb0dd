from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError, ModelError
from netchisel.dynamic.width_reorder import reorder_channels_, why_not_reorderable
from netchisel.dynamic.width_slim import (
    check_width,
    kept,
    plan_width,
    slice_forward,
)
from netchisel.zoo.models.sequence import mnist1d_cnn
from netchisel.zoo.models.vision import cnn, mlp


def bn_chain(seed: int = 0) -> nn.Sequential:
    """(N, 1, 8) -> Conv1d(1, 8, 3) BN ReLU Conv1d(8, 8, 3) BN ReLU MaxPool(2) Flatten
    Linear(32, 3), with BatchNorm statistics and scales made unequal (as trained ones are).

    MACs per sample at width 0.5 / 1.0: conv 96 / 192, conv 384 / 1536, linear 48 / 96.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net.eval()


def test_kept_channels_and_width_range() -> None:
    assert [kept(w, 32) for w in (0.25, 0.5, 0.75, 1.0)] == [8, 16, 24, 32]
    assert [kept(w, 25) for w in (0.25, 0.5, 0.75, 1.0)] == [6, 13, 19, 25]
    assert kept(1e-6, 25) == 1
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ConfigError) as err:
            check_width(bad, "widths[0]")
        assert str(err.value).startswith(f"dynamic.width: widths[0] = {bad} is outside (0, 1]")
        assert "\n" not in str(err.value)


def test_plan_of_the_zoo_cnn_and_mnist1d_cnn() -> None:
    widths = [0.25, 0.5, 0.75, 1.0]
    plan = plan_width(cnn(), widths, torch.zeros(2, 1, 32, 32))
    assert plan.steps[:3] == ["features.conv1", "features.bn1", "features.conv2"]
    assert plan.steps[-1] == "classifier" and plan.weights == [0, 2, 4, 6]
    assert [plan.channels_out[j] for j in plan.weights] == [
        [8, 16, 24, 32],
        [16, 32, 48, 64],
        [32, 64, 96, 128],
        [10, 10, 10, 10],  # the classes are never cut
    ]
    # The Linear after Flatten reads the first c * 4 * 4 features: the first c channels.
    assert plan.channels_in[6] == [512, 1024, 1536, 2048]
    one_d = plan_width(mnist1d_cnn(), widths, torch.zeros(1, 1, 40))
    assert [one_d.channels_out[j] for j in one_d.weights] == [[6, 13, 19, 25]] * 3 + [[10] * 4]
    assert one_d.channels_in[-1] == [30, 65, 95, 125]  # 5 positions per channel
    flat = plan_width(mlp(), [0.5, 1.0], torch.zeros(1, 1, 8, 8))
    assert flat.kinds == ["linear", "linear", "linear"]
    assert [flat.channels_in[j] for j in flat.weights] == [[64, 64], [150, 300], [50, 100]]


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.gamma, self.head = (
            nn.Linear(4, 4),
            nn.Parameter(torch.ones(4)),
            nn.Linear(4, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(x) * self.gamma)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.fc(x)))


class _Skip(nn.Module):
    """A second output that passes no layer after `fc`: its hidden features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.fc(x)
        return self.head(hidden), hidden


@pytest.mark.parametrize(
    ("net", "x", "message"),
    [
        (
            nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
            torch.zeros(1, 4),
            "at width 0.5 1 (LayerNorm) fails on the cut channels: Given normalized_shape=[4]",
        ),
        (
            _Scaled(),
            torch.zeros(1, 4),
            "at width 0.5 <root> (_Scaled) fails on the cut channels: The size of tensor a (2)",
        ),
        (
            nn.Sequential(nn.Conv1d(4, 8, 3, groups=4), nn.Flatten(), nn.Linear(48, 2)),
            torch.zeros(1, 4, 8),
            "cannot slim 0 (Conv1d): groups=4 ties its channels to its inputs'",
        ),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(4, 2)),
            torch.zeros(1, 4),
            "cannot slim a model with 1 conv/linear layer(s)",
        ),
        (_Twice(), torch.zeros(1, 4), "cannot slim fc (Linear): it runs more than once"),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (2, 2)), nn.Linear(2, 2)),
            torch.zeros(1, 4),
            "at width 0.5 1 (Unflatten) fails on the cut channels: unflatten",
        ),
    ],
)
def test_what_cannot_be_slimmed_is_named_in_one_line(
    net: nn.Module, x: torch.Tensor, message: str
) -> None:
    with pytest.raises(ModelError) as err:
        plan_width(net, [0.5, 1.0], x)
    assert f"dynamic.width: {message}" in str(err.value) and "\n" not in str(err.value)


def test_a_path_around_the_last_layer_is_refused() -> None:
    with pytest.raises(ModelError) as err:
        plan_width(_Skip(), [0.5, 1.0], torch.zeros(1, 4))
    assert str(err.value).startswith(
        "dynamic.width: at width 0.5 the model's outputs are [(1, 4), (1, 2)], not [(1, 4), "
        "(1, 4)]: a path reaches the output without passing a layer kept whole;"
    )


def test_only_a_chain_is_reordered() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Softmax(-1), nn.Linear(4, 2))
    plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
    assert why_not_reorderable(net, plan) == "1 (Softmax) mixes channels"
    with pytest.raises(
        ConfigError, match=r"cannot reorder channels: 1 \(Softmax\) mixes channels; s"
    ):
        reorder_channels_(net, plan)
    chain = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    assert why_not_reorderable(_Skip(), plan_width(chain, [1.0], torch.zeros(1, 4))) == (
        "the model (_Skip) is not a chain of nn.Sequential"
    )


def test_reorder_keeps_the_function_and_puts_the_largest_scales_first() -> None:
    net = bn_chain()
    x = torch.randn(16, 1, 8)
    with torch.no_grad():
        before = net(x)
    scales = [net[1].weight.detach().abs().clone(), net[4].weight.detach().abs().clone()]
    plan = plan_width(net, [0.5, 1.0], x)
    orders = reorder_channels_(net, plan)
    assert orders == [torch.argsort(s, descending=True, stable=True).tolist() for s in scales]
    for bn in (net[1], net[4]):
        s = bn.weight.detach().abs()
        assert bool((s[:-1] >= s[1:]).all())
    with torch.no_grad():
        after = net(x)
    assert orders[0] != list(range(8))  # the test reorders something
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_reorder_without_norms_uses_the_weights_l1_norm() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(8, 4)
    with torch.no_grad():
        before = net(x)
        l1 = net[0].weight.abs().sum(1)
    orders = reorder_channels_(net, plan_width(net, [0.5, 1.0], x))
    assert orders[0] == torch.argsort(l1, descending=True, stable=True).tolist()
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


def test_slice_forward_is_the_narrow_layer() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    narrow = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        narrow.weight.copy_(conv.weight[:2, :3])
        narrow.bias.copy_(conv.bias[:2])
        assert torch.equal(slice_forward(conv, "conv", x, 3, 2), narrow(x))
