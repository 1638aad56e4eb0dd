"""The weight pruners treat GPT-2's Conv1D projections as Linears (`select_prunable`).

Error bound (relative L2 error of the tiny GPT-2's logits on held-out tokens): zeroing the
smallest half of Gaussian weights (|w| < 0.674 sigma) removes sqrt(0.0715) = 0.27 of their L2
norm; 2 of every 4 removes a little more, sqrt(0.10) = 0.32 in expectation. Each projection's
output moves by about that fraction and the residual stream carries the unpruned embeddings
past them, so the logits move by less: bound 0.27 at 50%, 0.32 at 2:4; measured 0.128 and
0.165 (magnitude at 50% and 2:4), 0.125 (Wanda), 0.101 and 0.121 (SparseGPT). A pruner that
skipped the projections would show 0 zeros there.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.config import StageConfig
from netchisel.core.conv1d import is_conv1d
from netchisel.prune import prune_
from netchisel.prune.sparsegpt import SparseGPTConfig
from netchisel.prune.unstructured import UnstructuredConfig
from tests._gpt2 import logits, projections, relative_error, tiny_gpt2, tokens
from tests._models import lm_task

pytest.importorskip("transformers")

HEAD = ("lm_head",)
HALF = 0.27  # see the module docstring
TWO_OF_FOUR = 0.32
CASES = [
    (UnstructuredConfig(sparsity=0.5, exclude=HEAD), HALF),
    (UnstructuredConfig(pattern="2:4", exclude=HEAD), TWO_OF_FOUR),
    (UnstructuredConfig(sparsity=0.5, importance="wanda", group="row", exclude=HEAD), HALF),
]
SPARSEGPT = [
    (SparseGPTConfig(sparsity=0.5, exclude=HEAD), HALF),
    (SparseGPTConfig(pattern="2:4", exclude=HEAD), TWO_OF_FOUR),
]


def check_half_pruned(model: nn.Module, config: StageConfig) -> None:
    """Every projection a Linear (marked) with exactly half its weights zero (2 of every 4
    consecutive inputs for 2:4)."""
    layers = projections(model)
    assert len(layers) == 8
    for name, layer in layers.items():
        assert type(layer) is nn.Linear and layer.from_conv1d is True, name
        zero = layer.weight == 0
        assert int(zero.sum()) * 2 == zero.numel(), name
        if getattr(config, "pattern", "") == "2:4":
            assert bool((zero.reshape(zero.shape[0], -1, 4).sum(-1) == 2).all()), name
    assert int((model.lm_head.weight == 0).sum()) == 0


@pytest.mark.parametrize(("config", "bound"), CASES, ids=["magnitude", "2:4", "wanda"])
def test_every_projection_is_pruned(config: UnstructuredConfig, bound: float) -> None:
    x = tokens()
    model = tiny_gpt2()
    ref = logits(model, x)
    prune_(model, config, task=lm_task())
    check_half_pruned(model, config)
    assert 0.0 < relative_error(logits(model, x), ref) < bound


@pytest.mark.parametrize(("config", "bound"), SPARSEGPT, ids=["50%", "2:4"])
def test_sparsegpt_prunes_the_projections(config: SparseGPTConfig, bound: float) -> None:
    """SparseGPT chooses GPT-2's Conv1D projections itself; it must not lose to magnitude."""
    x = tokens()
    model = tiny_gpt2()
    ref = logits(model, x)
    prune_(model, config, task=lm_task())
    check_half_pruned(model, config)
    error = relative_error(logits(model, x), ref)
    magnitude = tiny_gpt2()
    magnitude_config = UnstructuredConfig(sparsity=0.5, pattern=config.pattern, exclude=HEAD)
    prune_(magnitude, magnitude_config, task=lm_task())
    assert 0.0 < error < min(bound, relative_error(logits(magnitude, x), ref))


def test_a_failing_sparsegpt_leaves_the_conv1d_modules() -> None:
    model = tiny_gpt2()
    before = projections(model)
    with pytest.raises(nc.NetChiselError, match="2:5"):
        prune_(model, SparseGPTConfig(pattern="2:5", exclude=HEAD), task=lm_task())
    assert all(projections(model)[n] is m for n, m in before.items())


def test_an_excluded_conv1d_stays_conv1d() -> None:
    model = tiny_gpt2()
    config = dataclasses.replace(CASES[0][0], exclude=(*HEAD, r".*\.attn\.c_attn"))
    prune_(model, config, task=lm_task())
    for name, layer in projections(model).items():
        assert is_conv1d(layer) == name.endswith("attn.c_attn"), name
        assert bool((layer.weight == 0).any()) != is_conv1d(layer), name


def test_a_failing_prune_leaves_the_conv1d_modules() -> None:
    model = tiny_gpt2()
    before = {n: (m, m.weight.detach().clone()) for n, m in projections(model).items()}
    config = UnstructuredConfig(sparsity=0.5, importance="wanda", exclude=HEAD)
    with pytest.raises(nc.NetChiselError, match="criterion needs activations"):
        prune_(model, config, task=None)  # fails after the swap, when Wanda asks for data
    for name, (layer, weight) in before.items():
        assert projections(model)[name] is layer and torch.equal(layer.weight, weight), name


def test_a_trained_pruner_failing_after_its_choice_leaves_the_conv1d_modules() -> None:
    # prune.gradual chooses (swapping the Conv1D) before it checks per_layer and enters its
    # own guard; the stage call's guard puts the Conv1D back.
    from netchisel.prune import GradualConfig

    model = tiny_gpt2()
    before = projections(model)
    config = GradualConfig(sparsity=0.5, steps=4, exclude=HEAD, per_layer={"nowhere": 0.5})
    with pytest.raises(nc.NetChiselError, match="nowhere"):
        prune_(model, config, task=lm_task())
    assert all(projections(model)[n] is m for n, m in before.items())
