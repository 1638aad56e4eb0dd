"""Every quantize stage on a 1-D CNN: the Conv1d layers are quantized (k-means, QAT, binary:
`ClusteredConv`, `PackedConv1d`) or left in float with a warning naming them (the weight-only
RTN and dynamic int8 formats have Linear kernels only, as for Conv2d)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.quantize.formats import (
    ClusteredConv,
    Int4WeightOnlyLinear,
    PackedConv1d,
    quantized_layer,
)
from netchisel.quantize.primitives import QuantSpec, choose_qparams, quantize
from tests._models_1d import cnn1d, inputs_1d, relative_error, task_1d


def _run(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = net.eval()(inputs_1d(16))
    return out


def _round_trip(net: nn.Module, tmp_path: Path) -> None:
    nc.save(net, tmp_path / "a")
    assert torch.equal(_run(nc.load(tmp_path / "a")), _run(net))


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_leaves_conv1d_in_float_and_says_so(bits: int) -> None:
    net, ref = cnn1d(), _run(cnn1d())
    with pytest.warns(UserWarning, match=r"they stay in float: 0 \(Conv1d\), 3 \(Conv1d\)"):
        nc.quantize_(net, nc.quantize.RTNConfig(bits=bits, group_size=32 if bits == 4 else None))
    assert type(net[0]) is nn.Conv1d and type(net[3]) is nn.Conv1d
    assert relative_error(_run(net), ref) < (0.05 if bits == 4 else 0.01)


def test_dynamic_int8_leaves_conv1d_in_float_and_says_so() -> None:
    net, ref = cnn1d(), _run(cnn1d())
    with pytest.warns(UserWarning, match=r"they stay in float: 0 \(Conv1d\), 3 \(Conv1d\)"):
        nc.quantize_(net, nc.quantize.DynamicInt8Config())
    assert type(net[3]) is nn.Conv1d
    assert relative_error(_run(net), ref) < 0.02


def test_kmeans_clusters_conv1d_weights(tmp_path: Path) -> None:
    net, ref = cnn1d(), _run(cnn1d())
    nc.quantize_(net, nc.quantize.KMeansConfig(bits=5))
    assert isinstance(net[0], ClusteredConv) and isinstance(net[3], ClusteredConv)
    assert net[3].dequantized_weight().unique().numel() <= 32
    assert relative_error(_run(net), ref) < 0.05
    _round_trip(net, tmp_path)


@pytest.mark.parametrize(("bits", "bound"), [(8, 0.01), (4, 0.15)])
def test_qat_without_training_packs_conv1d(bits: int, bound: float, tmp_path: Path) -> None:
    net, ref = cnn1d(), _run(cnn1d())
    nc.quantize_(net, nc.quantize.QATConfig(bits=bits, steps=0), task_1d())
    assert isinstance(net[0], PackedConv1d) and isinstance(net[3], PackedConv1d)
    assert net[3].bits == bits and net[3].weight_shape() == (25, 25, 3)
    assert relative_error(_run(net), ref) < bound
    count = nc.count_flops(net, inputs_1d(1))  # packed convs compute in float: same FLOPs
    assert (count.flops_by_module["0"], count.flops_by_module["3"]) == (4950, 60400)
    _round_trip(net, tmp_path)


def test_qat_trains_a_1d_model_at_4_bits(tmp_path: Path) -> None:
    net = cnn1d()
    nc.quantize_(net, nc.quantize.QATConfig(bits=4, steps=3), task_1d())
    assert isinstance(net[3], PackedConv1d) and isinstance(net[7], Int4WeightOnlyLinear)
    assert torch.isfinite(_run(net)).all()
    _round_trip(net, tmp_path)


def test_qat_group_size_that_does_not_divide_a_conv1d_row_is_named() -> None:
    with pytest.raises(nc.ConfigError, match="layer 0: group_size 32 does not divide its 5 inputs"):
        nc.quantize_(cnn1d(), nc.quantize.QATConfig(bits=4, group_size=32, steps=0), task_1d())


def test_binary_packs_the_middle_conv1d() -> None:
    net = cnn1d()
    nc.quantize_(net, nc.quantize.BinaryConfig(steps=0), task_1d())
    assert isinstance(net[3], PackedConv1d) and net[3].bits == 1
    assert type(net[0]) is nn.Conv1d  # first and last layers stay float by default
    assert torch.isfinite(_run(net)).all()


def test_packed_conv1d_computes_with_the_dequantized_weight() -> None:
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    spec = QuantSpec(bits=3, symmetric=False, granularity="channel")
    scale, zero = choose_qparams(conv.weight, spec)
    layer = quantized_layer(conv, spec, quantize(conv.weight, scale, zero, spec), scale, zero)
    assert isinstance(layer, PackedConv1d)
    x = torch.randn(2, 4, 17)
    with torch.no_grad():
        expected = nn.functional.conv1d(x, layer.dequantized_weight(), conv.bias, 2, 1, 2, 2)
        assert torch.equal(layer(x), expected)
        assert relative_error(layer(x), conv(x)) < 0.2
