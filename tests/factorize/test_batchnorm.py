from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import Task, classification_task
from netchisel.factorize import SeparableConfig, TuckerConfig, factorize_
from netchisel.factorize.separable import factorize_separable


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _task() -> Task:
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(40, 4, 6, 6), torch.randint(0, 3, (40,)))
    return classification_task({"train": data, "val": data}, batch_size=16)


@torch.no_grad()
def test_statistics_are_the_exact_average_over_the_samples() -> None:
    task = _task()
    net = _net()
    ctx = Context(task, quiet=True)
    factorize_separable(net, SeparableConfig(recalibrate_bn=32), ctx)
    assert ctx.records["recalibrated_bn_samples"] == 32
    # Two batches of 16: the cumulative average of the per-batch mean and (unbiased) variance.
    features = [net[0](b[0]) for b in task.calibration_batches(32)]
    assert [len(f) for f in features] == [16, 16]
    mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    var = torch.stack([f.var((0, 2, 3)) for f in features]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(net[1].running_var, var, atol=1e-6)
    assert net[1].momentum == 0.1 and net.training  # momentum and train mode restored


def test_recalibration_without_a_task_is_an_error_and_leaves_the_model() -> None:
    net = _net()
    before = copy.deepcopy(net)
    with pytest.raises(ConfigError, match=r"'factorize\.tucker' needs a task"):
        factorize_(net, TuckerConfig(ranks=(2, 4), recalibrate_bn=16))
    assert str(net) == str(before)
    assert all(
        torch.equal(a, b)
        for a, b in zip(net.state_dict().values(), before.state_dict().values(), strict=True)
    )


def test_negative_samples_rejected() -> None:
    with pytest.raises(ConfigError, match="recalibrate_bn must be >= 0 samples, got -1"):
        SeparableConfig(recalibrate_bn=-1)


def test_an_interrupted_recalibration_puts_the_conv_and_statistics_back() -> None:
    net = _net()
    conv, stats = net[0], {k: v.clone() for k, v in net.state_dict().items()}

    def stop(*_: object) -> None:  # after the BatchNorm saw the first batch
        raise KeyboardInterrupt

    handle = net[5].register_forward_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        factorize_separable(net, SeparableConfig(recalibrate_bn=32), Context(_task(), quiet=True))
    handle.remove()
    assert net[0] is conv and net[1].momentum == 0.1 and net.training
    assert net.state_dict().keys() == stats.keys()
    assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items())
