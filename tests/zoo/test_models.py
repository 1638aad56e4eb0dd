"""Zoo builders by name: parameter counts, shapes, builder marks, errors, refs that load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import build as build_from_ref
from netchisel.core.modules import builder_of
from netchisel.zoo import models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def test_build_errors_list_the_valid_choices() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown zoo model 'vgg'.*mlp, cnn, resnet, mobilenet, gpt, llama, minilm",
    ):
        models.build("vgg")
    with pytest.raises(
        ConfigError, match=r"unknown argument 'widht'.*depth, width, num_classes, in_channels"
    ):
        models.build("resnet", widht=8)
    with pytest.raises(ConfigError, match=r"unknown argument 'x'.*none"):
        models.build("minilm", x=1)


@pytest.mark.parametrize(
    "name",
    [
        *("BasicBlock", "ResNet", "InvertedResidual", "CausalSelfAttention", "MLP", "Block"),
        *("GPT", "SentenceEmbedder", "mlp", "cnn", "resnet", "mobilenet", "gpt", "minilm"),
    ],
)
def test_refs_saved_before_the_split_by_family_still_load(name: str) -> None:
    from netchisel.artifact.trust import Allowed

    kind = "class" if name[0].isupper() else "builder"
    assert Allowed().resolve(f"netchisel.zoo.models:{name}", kind) is getattr(models, name)
