"""Units: coupled channels are one decision, and groups left alone say why."""

from __future__ import annotations

import torch

from netchisel.prune.structured import StructuredConfig, channel_groups
from netchisel.zoo import models


def test_residual_adds_couple_a_stage_into_one_group() -> None:
    net = models.resnet(depth=8, width=4)
    groups = channel_groups(net, (torch.zeros(1, 1, 16, 16),))
    # The stem and the first block's second conv meet at an identity shortcut; the later
    # stages' second convs meet their 1x1 shortcut convs; each first conv is alone; fc's
    # outputs are the model's output.
    assert groups == {
        "conv1": ("conv1", "layer1.0.conv2"),
        "layer1.0.conv1": ("layer1.0.conv1",),
        "layer2.0.conv1": ("layer2.0.conv1",),
        "layer2.0.shortcut.0": ("layer2.0.shortcut.0", "layer2.0.conv2"),
        "layer3.0.conv1": ("layer3.0.conv1",),
        "layer3.0.shortcut.0": ("layer3.0.shortcut.0", "layer3.0.conv2"),
    }


def test_excluding_one_member_protects_its_whole_group() -> None:
    net = models.resnet(depth=8, width=4)
    config = StructuredConfig(exclude=("layer1.0.conv2",))
    groups = channel_groups(net, (torch.zeros(1, 1, 16, 16),), config)
    assert "conv1" not in groups and "layer1.0.conv1" in groups
