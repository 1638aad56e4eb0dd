"""quantize.dynamic_int8: every chosen Linear becomes DynamicInt8Linear with its modes."""

import copy

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.quantize import DynamicInt8Config, quantize_
from netchisel.quantize.formats import DynamicInt8Linear
from netchisel.quantize.primitives import QuantSpec, choose_qparams
from tests.quantize.test_rtn import mlp as _mlp


def test_dynamic_int8_replaces_every_linear():
    net = quantize_(_mlp(), DynamicInt8Config(exclude=("4",)))
    assert [type(net[i]) for i in (0, 2, 4)] == [DynamicInt8Linear, DynamicInt8Linear, nn.Linear]


def test_dynamic_int8_modes_reach_the_layers_and_bad_modes_are_one_line():
    net = quantize_(_mlp(), DynamicInt8Config(activations="per_tensor", weights="per_tensor"))
    assert net[0].activations == "per_tensor" and net[0].weight_scale.unique().numel() == 1
    reference = _mlp()
    with torch.no_grad():
        reference[0].weight[0, 0] = 5.0  # an outlier that mse clips
    scales = []
    for method in ("minmax", "mse"):
        config = DynamicInt8Config(weights="per_tensor", scale_method=method)
        net = quantize_(copy.deepcopy(reference), config)
        scale, _ = choose_qparams(reference[0].weight, QuantSpec(8, granularity="tensor"), method)
        assert torch.equal(net[0].weight_scale, scale.reshape(-1).expand(net[0].out_features))
        scales.append(scale)
    assert not torch.equal(*scales)  # so the method did reach the layer
    with pytest.raises(ConfigError, match="activations"):
        DynamicInt8Config(activations="per_row")
    with pytest.raises(ConfigError, match="scale_method"):
        DynamicInt8Config(scale_method="max")
