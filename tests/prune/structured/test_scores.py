"""Scores: a channel's score sums its criterion over every weight slice removed with it."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from netchisel.prune.structured import CriterionImportance, StructuredConfig
from netchisel.prune.structured.scores import block_score


def _group(net: nn.Sequential) -> object:
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 1, 8, 8))
    return dg.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2, 3])


def test_l1_sums_the_filter_and_the_input_columns_that_read_it() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
    expected = net[0].weight.abs().sum(dim=(1, 2, 3)) + net[2].weight.abs().sum(dim=(0, 2, 3))
    assert torch.allclose(CriterionImportance("l1")(_group(net)), expected)


def test_bn_scale_is_the_batchnorm_gammas() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.25]))
    scores = CriterionImportance("bn_scale")(_group(net))
    assert scores.tolist() == [0.5, 2.0, 1.0, 0.25]


def test_a_block_scores_the_mean_element_of_its_weights() -> None:
    block = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        block[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        block[2].weight.copy_(torch.tensor([[-6.0, 0.0]]))
    # (1 + 2 + 3 + 0 + 6 + 0) / 6 weights
    assert block_score("b", block, StructuredConfig(), {}).tolist() == [2.0]
