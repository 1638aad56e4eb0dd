"""Unstructured and N:M pruning of Conv1d weights."""

from __future__ import annotations

import pytest

import netchisel as nc
from netchisel.core.errors import ConfigError
from tests._models_1d import cnn1d, inputs_1d


def test_unstructured_prunes_conv1d_weights() -> None:
    net = nc.prune_(cnn1d(), nc.prune.UnstructuredConfig(sparsity=0.5))
    for i in (0, 3, 7):
        w = net[i].weight
        assert abs(int((w == 0).sum()) - w.numel() / 2) <= 1
    assert net(inputs_1d(2)).shape == (2, 10)


def test_n_of_m_on_conv1d_keeps_n_of_every_m_inputs() -> None:
    net = nc.prune_(cnn1d(), nc.prune.UnstructuredConfig(pattern="2:5", layers=("0", "3")))
    # Conv1d(25, 25, 3): 75 inputs per output channel, grouped in 5s along (in, k).
    groups = net[3].weight.detach().reshape(25, 15, 5)
    assert ((groups != 0).sum(-1) == 2).all()
    assert ((net[0].weight.detach().reshape(25, 5) != 0).sum(-1) == 2).all()
    assert int((net[7].weight == 0).sum()) == 0


def test_n_of_m_names_the_conv1d_whose_inputs_m_does_not_divide() -> None:
    with pytest.raises(ConfigError, match=r"multiples of 4; 1 layers are not: 3 \(75\)"):
        nc.prune_(cnn1d(), nc.prune.UnstructuredConfig(pattern="2:4", layers=("3",)))
