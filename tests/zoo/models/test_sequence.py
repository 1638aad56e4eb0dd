"""zoo/models/sequence.py: the MNIST-1D paper's models (logistic, residual MLP, Conv1d CNN)
and the deeper six-layer CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.core.modules import build as build_from_ref
from netchisel.core.modules import builder_of
from netchisel.zoo import models, train

NAMES = ("mnist1d_logistic", "mnist1d_mlp", "mnist1d_cnn", "mnist1d_deep_cnn")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


PAPERS = list(zip(NAMES[:3], (410, 15_210, 5_210), strict=True))


@pytest.mark.parametrize(("name", "expected"), PAPERS)
def test_parameter_counts_are_the_papers(name: str, expected: int) -> None:
    # The paper's notebook prints 15,210 (MLPBase) and 5,210 (ConvBase) parameters.
    assert n_params(models.build(name)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_models_run_on_the_tasks_inputs_and_rebuild_from_their_mark(name: str) -> None:
    model = models.build(name)
    x = torch.randn(3, 1, 40)
    assert model(x).shape == (3, 10)
    ref, kwargs = builder_of(model) or ("", {})
    assert ref == f"netchisel.zoo.models:{name}"
    assert n_params(build_from_ref(ref, kwargs)) == n_params(model)
    assert name in models.MODEL_NAMES
    assert train.default_task(name) == ("mnist1d", {"batch_size": 100})


def test_cnn_lengths_follow_the_papers_convolutions() -> None:
    model = models.build("mnist1d_cnn")
    features = model.features(torch.zeros(1, 1, 40))  # type: ignore[operator]
    assert features.shape == (1, 25, 5)
    assert models.build("mnist1d_cnn", channels=8, length=60).classifier.in_features == 8 * 8  # type: ignore[union-attr]


def test_mlp_is_residual() -> None:
    model = models.build("mnist1d_mlp")
    x = torch.randn(4, 1, 40)
    h = model.relu1(model.fc1(x.flatten(1)))  # type: ignore[operator]
    expected = model.fc3(h + model.relu2(model.fc2(h)))  # type: ignore[operator]
    assert torch.allclose(model(x), expected)


def test_exact_macs_by_hand() -> None:
    mlp = nc.profile(models.build("mnist1d_mlp"), (torch.zeros(1, 1, 40),), latency=False)
    assert mlp.macs == 40 * 100 + 100 * 100 + 100 * 10  # 15,000
    cnn = nc.profile(models.build("mnist1d_cnn"), (torch.zeros(1, 1, 40),), latency=False)
    # output length x out channels x (in channels x kernel), per conv; then the Linear.
    assert cnn.macs == 19 * 25 * 5 + 10 * 25 * 75 + 5 * 25 * 75 + 125 * 10  # 31,750
    deep = nc.profile(models.build("mnist1d_deep_cnn"), (torch.zeros(1, 1, 40),), latency=False)
    convs = 40 * 16 * 5 + 40 * 16 * 48 + 20 * 32 * 48 + 20 * 32 * 96 + 10 * 64 * 96 + 10 * 64 * 192
    assert deep.macs == convs + 64 * 10  # 311,040


def test_deep_cnn_stages_halve_the_length_and_double_the_width() -> None:
    model = models.build("mnist1d_deep_cnn", width=8)
    x, shapes = torch.zeros(1, 1, 40), []
    for name, layer in model.features.named_children():  # type: ignore[union-attr]
        x = layer(x)
        if name.startswith("relu"):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(8, 40), (8, 40), (16, 20), (16, 20), (32, 10), (32, 10)]
    # Conv weights and biases, BatchNorm weights and biases, then the Linear.
    weights = 1 * 16 * 5 + 16 * 16 * 3 + 16 * 32 * 3 + 32 * 32 * 3 + 32 * 64 * 3 + 64 * 64 * 3
    channels = 16 + 16 + 32 + 32 + 64 + 64
    expected = weights + channels + 2 * channels + 64 * 10 + 10
    assert n_params(models.build("mnist1d_deep_cnn")) == expected == 25_210
    with pytest.raises(ConfigError, match="width=0"):
        models.build("mnist1d_deep_cnn", width=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mnist1d_mlp", {"hidden": 0}, "hidden=0"),
        ("mnist1d_cnn", {"length": 4}, "length must be >= 5"),
        ("mnist1d_logistic", {"num_classes": 0}, "num_classes=0"),
    ],
)
def test_bad_sizes_are_one_clear_error(name: str, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        models.build(name, **kwargs)


def test_recipe_refuses_shapes_the_task_does_not_have() -> None:
    with pytest.raises(ConfigError, match="length must be 40"):
        train.recipe("mnist1d_cnn", length=60)
    rec = train.recipe("mnist1d_mlp")
    assert rec.settings.lr == 1e-2 and rec.settings.steps == 6000
