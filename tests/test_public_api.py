"""The top-level names: one entry per family, and the subpackages reachable from `nc`."""

from __future__ import annotations

import types

import torch

import netchisel as nc


def test_profile_is_the_function_and_measure_the_package() -> None:
    assert callable(nc.profile)
    assert nc.profile(torch.nn.Linear(3, 2), torch.zeros(1, 3), latency=False).macs == 6
    assert isinstance(nc.measure, types.ModuleType)


def test_zoo_and_search_are_reachable_without_an_import() -> None:
    assert nc.zoo.models.build("mlp", in_features=4, hidden=(3,)).fc1.out_features == 3
    assert nc.search.__name__ == "netchisel.search"
