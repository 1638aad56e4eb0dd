"""Factorization on 1-D models: SVD of the Linear layers works; the Conv2d rewrites (Tucker,
CP, separable) refuse a model with only Conv1d layers in one line that names them."""

from __future__ import annotations

import pytest
import torch

import netchisel as nc
from tests._models_1d import cnn1d, inputs_1d, relative_error


def test_svd_factorizes_the_linear_of_a_1d_model() -> None:
    net = cnn1d()
    with torch.no_grad():
        ref = net(inputs_1d(8))
    nc.factorize_(net, nc.factorize.SVDConfig(rank=10, layers=("7",)))
    with torch.no_grad():
        assert relative_error(net(inputs_1d(8)), ref) < 1e-4  # rank 10 of a 10-row weight


@pytest.mark.parametrize(
    "config",
    [nc.factorize.TuckerConfig(), nc.factorize.CPConfig(rank=4), nc.factorize.SeparableConfig()],
)
def test_conv2d_rewrites_name_the_conv1d_layers_they_do_not_support(
    config: nc.StageConfig,
) -> None:
    with pytest.raises(
        nc.ConfigError,
        match=r"no nn.Conv2d layer to rewrite; its 0 \(Conv1d\), 3 \(Conv1d\) are not supported",
    ):
        nc.factorize_(cnn1d(), config)
