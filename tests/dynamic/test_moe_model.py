from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ArtifactError
from netchisel.core.task import language_model_task
from netchisel.dynamic.moe import MoEConfig, moe
from netchisel.dynamic.moe_layer import MoEFeedForward
from netchisel.dynamic.moe_model import MoEModel
from netchisel.zoo import data, gpt


def _switch_gpt() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = gpt(n_layer=2, n_head=2, n_embd=16, block_size=16)
    splits = data.text(block_size=16)
    task = language_model_task(
        {"train": Subset(splits["train"], range(64)), "val": Subset(splits["val"], range(32))},
        batch_size=16,
    )
    config = MoEConfig(
        method="switch",
        init="scratch",
        experts=4,
        top_k=2,
        expert_hidden=8,
        capacity_factor=1.0,
        jitter=0.01,
        z_loss=1e-3,
        steps=3,
    )
    return moe(model, config, Context(task, quiet=True)), task


def test_save_and_load_round_trip_bit_exactly(tmp_path: Path) -> None:
    dyn, task = _switch_gpt()
    assert isinstance(dyn, MoEModel)
    x = task.example_inputs(4)  # type: ignore[attr-defined]
    with torch.no_grad():
        want = dyn.eval()(*x)
    loaded = nc.load(nc.save(dyn, tmp_path / "moe"))
    assert isinstance(loaded, MoEModel) and loaded.layers == dyn.layers
    assert loaded.routing == dyn.routing
    layer = loaded.model.blocks[0].mlp
    assert isinstance(layer, MoEFeedForward)
    assert (layer.top_k, layer.capacity_factor, layer.gating) == (2, 1.0, "renorm")
    assert layer.jitter == 0.01
    with torch.no_grad():
        assert torch.equal(loaded(*x), want)
    assert layer.stats == dyn.model.blocks[0].mlp.stats
    assert float(layer.balance_loss()) == 0.0  # training state is not saved
    assert float(layer.z_loss()) == 0.0


def test_a_hostile_jitter_is_refused_at_load(tmp_path: Path) -> None:
    dyn, _ = _switch_gpt()
    path = nc.save(dyn, tmp_path / "moe")
    manifest = path / "manifest.json"
    text = manifest.read_text()
    assert text.count('"jitter":0.01') == 2  # one per layer
    manifest.write_text(text.replace('"jitter":0.01', '"jitter":7.0'))
    with pytest.raises(ArtifactError, match=r"jitter must be in \[0, 1\), got 7.0") as err:
        nc.load(path)
    assert "\n" not in str(err.value)


def test_profile_reports_the_expected_macs() -> None:
    dyn, task = _switch_gpt()
    x = task.example_inputs(2)  # type: ignore[attr-defined]
    p = nc.profile(dyn, x, latency=False)
    assert p.dynamic is not None
    layers = p.dynamic["layers"]
    assert list(layers) == ["model.blocks.0.mlp", "model.blocks.1.mlp"]
    row = layers["model.blocks.0.mlp"]
    assert row["expert_macs_per_token"] == [2 * 16 * 8] * 4 and row["router_macs_per_token"] == 64
    assert row["active_macs_per_token"] == 64 + 2 * 256
    # capacity 1.0 with top-2 of 4 drops some of the 32 val windows' tokens, never adds any
    served = sum(row["served_tokens_per_sample"])
    assert 0 < served <= 2 * 16 and row["dropped_fraction"] == 1 - served / 32
    both = sum(sum(r["served_tokens_per_sample"]) for r in layers.values())
    assert p.dynamic["expected_macs"] == p.dynamic["macs_outside_experts"] + 256 * both
