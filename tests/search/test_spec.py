"""Recipe templates: placeholders filled from a candidate."""

from __future__ import annotations

import random

import torch

from netchisel.search.space import Space, categorical
from netchisel.search.spec import fill, parse_search_spec, placeholders

SPACE = Space(
    {
        "op": categorical("conv", "skip"),
        "kernel": categorical(3, 5, when={"op": "conv"}),
        "bits/fc1": categorical(4, 8),
        "bits/fc2": categorical(4, 8),
    }
)


def test_values_groups_and_inactive_dimensions() -> None:
    template = {"a": "$op", "k": "$kernel", "bits": "$bits", "list": ["$kernel", 1]}
    candidate = {"op": "skip", "bits/fc1": 4, "bits/fc2": 8}
    assert fill(template, candidate, SPACE) == {
        "a": "skip",
        "bits": {"fc1": 4, "fc2": 8},
        "list": [1],
    }


def test_a_placeholder_key_merges_and_fixed_keys_win() -> None:
    template = {"kwargs": {"$candidate": "merge", "kernel": 7, "width": 16}}
    candidate = {"op": "conv", "kernel": 3, "bits/fc1": 4, "bits/fc2": 4}
    filled = fill(template, candidate, SPACE)
    assert filled["kwargs"] == {
        "op": "conv",
        "kernel": 7,
        "bits/fc1": 4,
        "bits/fc2": 4,
        "width": 16,
    }
    assert placeholders(template) == {"candidate"}


def test_a_cell_search_runs_small_with_fixed_builder_arguments() -> None:
    spec = parse_search_spec(
        {
            "space": {"nas": "cells"},
            "recipe": {
                "model": {
                    "builder": "netchisel.search.nas:cell_net",
                    "kwargs": {"$candidate": "merge", "width": 8, "image_size": 8},
                },
                "task": "digits",
                "stages": [{"finetune": {"steps": 1}}],
            },
        }
    )
    candidate = spec.space.sample(random.Random(0))
    kwargs = spec.recipe(candidate, spec.output).model.kwargs
    assert kwargs == {**candidate, "width": 8, "image_size": 8}
    assert "normal1_op1" in kwargs


def test_the_profile_metrics_a_spec_may_name_are_those_a_profile_gives() -> None:
    from torch import nn

    from netchisel.measure import profile
    from netchisel.search.spec import PROFILE_METRICS

    measured = profile(nn.Linear(4, 2), torch.zeros(1, 4), latency=False, on_disk=False)
    assert set(PROFILE_METRICS) == set(measured.summary())
