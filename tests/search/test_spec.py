"""Search specs: parsed, their template test-filled, their metrics those a profile gives."""

from __future__ import annotations

import random

import torch

from netchisel.search.spec import parse_search_spec


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
