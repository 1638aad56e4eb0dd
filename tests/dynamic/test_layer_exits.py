"""dynamic.early_exit on models whose forward is not a chain: Hugging Face BERT, ViT and
GPT-2 from small configs, their exits read through hooks (`layer_exits`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ArtifactError, ConfigError
from netchisel.core.task import Task, classification_task
from netchisel.dynamic.early_exit import EarlyExitConfig, early_exit
from netchisel.dynamic.layer_exits import END, LayerExitModel, plan_layers
from netchisel.measure.flops import count_flops
from tests.dynamic._nets import Calls
from tests.dynamic.test_hostile_manifests import _edited

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

EXITS = ("bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2")


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config).eval()


def _labelled(model: nn.Module, x: torch.Tensor) -> Task:
    """`x` split in three, labelled by `model`'s own argmax (it scores 100%)."""
    with torch.no_grad():
        y = model.eval()(x).logits.argmax(-1)
    third = len(x) // 3
    splits = {
        name: TensorDataset(x[i * third : (i + 1) * third], y[i * third : (i + 1) * third])
        for i, name in enumerate(("train", "val", "test"))
    }
    return classification_task(splits, batch_size=20)


def _ids(n: int = 300) -> torch.Tensor:
    return torch.randint(0, 32, (n, 12), generator=torch.Generator().manual_seed(0))


def test_bert_takes_exits_that_really_stop_its_forward(tmp_path: Path) -> None:
    net = _bert()
    task = _labelled(net, _ids(180))
    ctx = Context(task, quiet=True)
    config = EarlyExitConfig(exits=EXITS, steps=40, lr=1e-2, max_drop=5.0)
    model = early_exit(net, config, ctx)
    r = ctx.records
    assert isinstance(model, LayerExitModel) and r["exits_read"] == "hooks"
    assert r["regroup"] is True and model.regroup  # a BERT's batch can drop exited samples
    assert model.steps == [*EXITS, END]
    # Each layer costs the same; an exit's cost is the layers up to it plus its heads.
    one = _ids(1)
    static = count_flops(net, one).macs
    assert r["static_macs"] == static
    costs = r["macs_per_exit"]
    assert costs[0] < costs[1] < costs[2] < costs[3] and costs[3] >= static
    assert r["exit_fractions"][0] > 0.0 and r["mac_reduction"] > 0.0
    assert r["calibrated_accuracy"] >= 95.0
    # At batch 1 a sample that exits at exit 0 runs nothing after layer 0: counted MACs are
    # that exit's cost, and layer 3 is never called.
    x = torch.cat([b[0] for b in task.loader("test")])
    with torch.no_grad():
        _, taken = model.exiting(x)
        early = x[taken == 0][:1]
        late = Calls(net.bert.encoder.layer[3])
        out = model(early)
        assert late.calls == 0
        assert count_flops(model, early).macs == costs[0]
        late.handle.remove()
        assert torch.equal(out, model.heads[0](model.features(early)[0]))
    # The artifact loads (the BERT class trusted) and answers the same, bit for bit.
    path = nc.save(model, tmp_path / "bert_exits")
    with pytest.raises(ArtifactError, match="not trusted"):
        nc.load(path)
    loaded = nc.load(path, trust=[transformers.BertForSequenceClassification]).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_batch_stops_when_every_sample_has_exited() -> None:
    net = _bert()
    heads = [nn.Sequential(nn.Flatten(1), nn.LazyLinear(3))]
    model = LayerExitModel(net, heads, [EXITS[0]], [0.0]).eval()  # threshold 0: all exit
    x = _ids(4)
    late = Calls(net.bert.encoder.layer[1])
    with torch.no_grad():
        model.features(x)  # materialise the lazy head
        late.calls = 0
        out, taken = model.exiting(x)
    assert late.calls == 0 and taken.tolist() == [0, 0, 0, 0] and out.shape == (4, 3)
    model.set_thresholds([1.0])  # never: the whole forward runs, the backbone's answer
    with torch.no_grad():
        out, taken = model.exiting(x)
        assert late.calls == 1
        assert torch.equal(out, net(x).logits) and taken.tolist() == [1, 1, 1, 1]


def test_mixed_batches_answer_as_each_sample_alone() -> None:
    net = _bert()
    task = _labelled(net, _ids())
    config = EarlyExitConfig(exits=EXITS[:2], steps=30, lr=1e-2, max_drop=20.0)
    model = early_exit(net, config, Context(task, quiet=True)).eval()
    x = torch.cat([b[0] for b in task.loader("test")])[:24]
    last = Calls(net.bert.encoder.layer[3])
    with torch.no_grad():
        out, taken = model.exiting(x)
        stayed = int((taken == len(EXITS[:2])).sum())
        assert last.samples == stayed  # the exited samples left the batch
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert 0 < stayed < len(x)  # the batch really mixes exits
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)
    model.regroup = False  # the whole batch runs on; the answers are the same
    with torch.no_grad():
        torch.testing.assert_close(model.exiting(x)[0], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_vit_and_gpt2_take_exits(name: str) -> None:
    torch.manual_seed(0)
    if name == "vit":
        config: Any = transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=3,
            num_attention_heads=2, intermediate_size=32, num_labels=3,
        )  # fmt: skip
        net = transformers.ViTForImageClassification(config).eval()
        x = torch.randn(150, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        exits, token = ("vit.layers.0",), "first"
    else:
        config = transformers.GPT2Config(
            vocab_size=32, n_positions=16, n_embd=16, n_layer=3, n_head=2, num_labels=3,
            pad_token_id=0,
        )  # fmt: skip
        net = transformers.GPT2ForSequenceClassification(config).eval()
        x = torch.randint(1, 32, (150, 12), generator=torch.Generator().manual_seed(0))
        exits, token = ("transformer.h.0",), "last"
    task = _labelled(net, x)
    ctx = Context(task, quiet=True)
    config_ = EarlyExitConfig(exits=exits, token=token, steps=40, lr=1e-2, max_drop=100.0)
    model = early_exit(net, config_, ctx)
    assert isinstance(model, LayerExitModel)
    assert ctx.records["macs_per_exit"][0] < ctx.records["static_macs"]
    # GPT-2's pooling reads the input's batch size after the layers: no regrouping there.
    assert model.regroup is (name == "vit")
    assert type(model.heads[0][0]).__name__ == "Token" and model.heads[0][0].how == token


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared, self.other, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.other(self.shared(self.shared(x))))


@pytest.mark.parametrize(
    ("exits", "message"),
    [
        (["nope"], "exit after 'nope': the model has no such module"),
        (["shared"], "exit after 'shared': it runs 2 times in one forward"),
        (["head", "other"], "list the exits in the order the model runs them"),
        (["head"], "exit after 'head': its output is the model's output"),
    ],
)
def test_what_hooks_cannot_read_is_named_in_one_line(exits: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_layers(_Twice(), exits, (torch.zeros(2, 4),))
    assert f"dynamic.early_exit: {message}" in str(err.value) and "\n" not in str(err.value)


def _saved(tmp: Path) -> Path:
    net = _bert()
    heads = [nn.Sequential(nn.Flatten(1), nn.Linear(12 * 32, 3))]
    return nc.save(LayerExitModel(net, heads, [EXITS[0]], [0.9]), tmp / "m")


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("steps", ["os", END], "step 'os' is not a module of the backbone"),
        ("steps", [EXITS[0], "bert"], "must end with '@end'"),
        ("steps", [EXITS[0], EXITS[0], END], "name a module twice"),
        ("steps", [EXITS[0], EXITS[1], END], r"exit_after \[0\] must be 0..1"),
        ("exit_after", [1], r"exit_after \[1\] must be 0..0"),
        ("regroup", "yes", "regroup must be a bool, got 'yes'"),
    ],
)
def test_a_hostile_layer_exit_manifest_is_refused(
    attr: str, value: Any, message: str, tmp_path: Path
) -> None:
    path = _saved(tmp_path)
    trust = [transformers.BertForSequenceClassification]
    nc.load(path, trust=trust)
    _edited(path, attr, value)
    with pytest.raises(ArtifactError, match=message) as err:
        nc.load(path, trust=trust)
    assert "\n" not in str(err.value)
