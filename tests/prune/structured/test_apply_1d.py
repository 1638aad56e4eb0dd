"""Structured pruning of Conv1d channels: the cut, the exact MACs, and the model still runs."""

from __future__ import annotations

import torch

from netchisel.core.context import Context
from netchisel.measure import count_flops
from netchisel.prune.structured import StructuredConfig
from netchisel.prune.structured.apply import prune_structured
from tests._models_1d import cnn1d, inputs_1d, task_1d


def test_conv1d_channels_halved_with_exact_macs() -> None:
    net = cnn1d()
    ctx = Context(None, quiet=True)
    prune_structured(net, StructuredConfig(ratio=0.5, input_shape=(1, 1, 40)), ctx)
    # 25 channels keep floor(25 * 0.5) = 12; BatchNorm1d and the Linear's inputs (8 per
    # channel after the pool) follow; the classifier's 10 outputs are not a prunable group.
    assert (net[0].out_channels, net[2].num_features, net[3].in_channels) == (12, 12, 12)
    assert (net[3].out_channels, net[7].in_features, net[7].out_features) == (12, 96, 10)
    macs_before = 25 * 18 * 5 + 25 * 16 * 25 * 3 + 200 * 10
    macs_after = 12 * 18 * 5 + 12 * 16 * 12 * 3 + 96 * 10
    assert ctx.records["macs_before"] == macs_before
    assert ctx.records["macs_after"] == macs_after
    assert count_flops(net, inputs_1d(1)).macs == macs_after
    assert net(inputs_1d(4)).shape == (4, 10)


def test_target_macs_ratio_on_a_1d_model_with_a_task() -> None:
    net = cnn1d("adaptive")
    ctx = Context(task_1d(), quiet=True)
    prune_structured(net, StructuredConfig(target_macs_ratio=0.5), ctx)
    assert ctx.records["macs_after"] <= 0.5 * ctx.records["macs_before"]
    assert torch.isfinite(net(inputs_1d(4))).all()
