"""Hugging Face Conv1D (GPT-2) swapped for the nn.Linear it is: exact, marked, reversible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.conv1d import (
    FROM_CONV1D,
    conv1d_to_linear_,
    conv1d_types,
    guarded_if_conv1d,
    is_conv1d,
    linear_from_conv1d,
)
from netchisel.core.modules import build
from tests._gpt2 import PROJECTIONS, logits, projections, tiny_gpt2, tokens

transformers = pytest.importorskip("transformers")
Conv1D = transformers.pytorch_utils.Conv1D
NAMES = [f"transformer.h.{b}.{p}" for b in range(2) for p in PROJECTIONS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_layer_becomes_an_equal_linear(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = Conv1D(48, 32).to(dtype)  # 32 inputs, 48 outputs: weight stored (32, 48)
    nn.init.normal_(conv.bias)
    before = conv.weight.detach().clone()
    linear = linear_from_conv1d(conv)
    assert type(linear) is nn.Linear and getattr(linear, FROM_CONV1D) is True
    assert (linear.in_features, linear.out_features) == (32, 48)
    assert linear.weight.dtype == dtype and linear.weight.is_contiguous()
    assert torch.equal(linear.weight, conv.weight.t()) and torch.equal(linear.bias, conv.bias)
    assert linear.weight.data_ptr() != conv.weight.data_ptr()  # a copy: conv stays as it was
    with torch.no_grad():
        linear.weight.zero_()
    assert torch.equal(conv.weight, before)
    x = torch.randn(3, 5, 32).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        ref, out = conv(x), linear(x)
    # The same products summed on the other memory layout: equal up to a few roundings of the
    # sum (measured: bit-identical in float32 and bfloat16, 2 eps in float64); a wrong layout
    # would be off by the outputs' own size.
    eps = torch.finfo(dtype).eps
    assert float((out - ref).abs().max()) <= 8 * eps * float(ref.abs().max())


def test_the_model_swap_is_exact_and_names_what_it_replaced() -> None:
    model, x = tiny_gpt2(), tokens()
    ref = logits(model, x)
    assert conv1d_types(model) == (Conv1D,)
    assert conv1d_to_linear_(model) == NAMES
    assert not conv1d_types(model)
    assert all(type(m) is nn.Linear and m.from_conv1d for m in projections(model).values())
    # GPT-2's logits through the swapped layers: bit-identical on this CPU (float32).
    assert torch.equal(logits(model, x), ref)
    assert conv1d_to_linear_(model) == []  # nothing left to swap


def test_only_the_named_conv1d_are_swapped() -> None:
    model = tiny_gpt2()
    first = NAMES[0]
    assert conv1d_to_linear_(model, [first, "lm_head", "no.such.layer"]) == [first]
    layers = projections(model)
    assert type(layers[first]) is nn.Linear
    assert all(is_conv1d(m) for n, m in layers.items() if n != first)
    assert type(model.lm_head) is nn.Linear and not hasattr(model.lm_head, FROM_CONV1D)


def test_train_mode_and_requires_grad_carry_over() -> None:
    conv = Conv1D(4, 4).train()
    conv.bias.requires_grad_(False)
    linear = linear_from_conv1d(conv)
    assert linear.training and linear.weight.requires_grad and not linear.bias.requires_grad
    assert not linear_from_conv1d(conv.eval()).training


def test_the_guard_puts_the_very_conv1d_back_when_the_block_fails() -> None:
    model = tiny_gpt2()
    before = projections(model)
    with pytest.raises(RuntimeError, match="midway"), guarded_if_conv1d(model):
        conv1d_to_linear_(model)
        raise RuntimeError("midway")
    assert all(projections(model)[n] is m for n, m in before.items())


def test_a_swapped_model_saves_and_loads_bit_exactly_with_its_mark(tmp_path: Path) -> None:
    model, x = build("tests._gpt2:tiny_gpt2", {}), tokens()
    conv1d_to_linear_(model)
    nc.save(model, tmp_path / "gpt2")
    loaded = nc.load(tmp_path / "gpt2")
    assert torch.equal(logits(loaded, x), logits(model, x))
    for name, layer in projections(loaded).items():
        assert type(layer) is nn.Linear and layer.from_conv1d is True, name
        assert torch.equal(layer.weight, model.get_submodule(name).weight)
