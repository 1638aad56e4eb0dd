"""Compression-policy spaces: one dimension per channel group / Linear layer, applied exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import load
from netchisel.core.errors import ConfigError
from netchisel.search.evaluate import evaluate_candidate
from netchisel.search.policy import policy_space
from netchisel.search.spec import parse_search_spec

CNN = {"zoo": "cnn", "pretrained": False, "kwargs": {"width": 8}}


def policy_spec(**changes: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "space": {"policy": "sparsity", "choices": [0.0, 0.25, 0.5, 0.75]},
        "recipe": {
            "model": CNN,
            "task": "digits32",
            "stages": [{"prune.structured": {"per_layer": "$sparsity", "ratio": 0.0}}],
            "profile": {"batch_size": 1, "latency": False},
        },
        "objectives": ["accuracy", "macs"],
    }
    spec.update(changes)
    return spec


def test_a_coupled_group_is_one_dimension() -> None:
    # a residual pair: conv a's output channels are added to conv b's, so they prune together
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x) + self.b(x))

    space = policy_space(Residual(), "sparsity", [0, 0.5], (torch.zeros(1, 3, 4, 4),))
    assert list(space.dimensions) == ["sparsity/a"]
    assert space.size() == 2


def test_the_searched_ratios_are_the_ones_applied(tmp_path: Path) -> None:
    spec = parse_search_spec(policy_spec())
    assert list(spec.space.dimensions) == [
        "sparsity/features\\.conv1",
        "sparsity/features\\.conv2",
        "sparsity/features\\.conv3",
    ]
    candidate = {
        "sparsity/features\\.conv1": 0.5,
        "sparsity/features\\.conv2": 0.0,
        "sparsity/features\\.conv3": 0.75,
    }
    evaluation = evaluate_candidate(spec, candidate, tmp_path / "t")
    model = load(evaluation.artifact)
    convs = (model.features.conv1, model.features.conv2, model.features.conv3)
    assert [conv.out_channels for conv in convs] == [4, 16, 8]
    # MACs at batch 1, 32x32: conv k*k*cin*cout*H*W, then the classifier
    macs = 9 * 1 * 4 * 32 * 32 + 9 * 4 * 16 * 16 * 16 + 9 * 16 * 8 * 8 * 8 + 8 * 4 * 4 * 10
    assert evaluation.metrics["macs"] == macs


def test_bits_policy_names_linear_layers() -> None:
    spec = parse_search_spec(
        policy_spec(
            space={"policy": "bits", "choices": [4, 8]},
            recipe={
                "model": CNN,
                "task": "digits32",
                "stages": [{"quantize.rtn": {"per_layer_bits": "$bits", "group_size": 32}}],
            },
        )
    )
    assert list(spec.space.dimensions) == ["bits/classifier"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"policy": "rank", "choices": [1]}, "unknown policy 'rank'"),
        ({"policy": "sparsity"}, "choices: expected a non-empty list"),
        ({"policy": "sparsity", "choices": [0.5], "layers": ["nothing"]}, "no prunable"),
        ({"policy": "sparsity", "choices": [0.5], "depth": 2}, "unknown key 'depth'"),
    ],
)
def test_bad_policies_are_one_clear_error(space: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_search_spec(policy_spec(space=space))
