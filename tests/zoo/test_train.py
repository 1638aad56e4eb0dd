"""Reference training and its cache: determinism, cache hits, corrupt entries, recipes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder_of
from netchisel.zoo import train

TINY_MLP = {"hidden": [16]}
TINY_CNN = {"width": 4, "image_size": 8}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP
    # spin-waiting makes their steps several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(train.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "zoo"


def _no_training(*args: object, **kwargs: object) -> list[float]:
    raise AssertionError("a cache hit must not train")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrained_trains_caches_and_records(tmp_cache: Path) -> None:
    model = train.pretrained("mlp", **TINY_MLP)
    assert not model.training
    assert builder_of(model) == (
        "netchisel.zoo.models:mlp",
        {"in_features": 64, "hidden": [16], "num_classes": 10},
    )
    files = sorted(p.name for p in tmp_cache.iterdir())
    assert len(files) == 2
    assert files[0].startswith("mlp-") and files[0].endswith(".json")
    assert files[1].endswith(".safetensors")
    record = json.loads((tmp_cache / files[0]).read_text())
    assert record["identity"]["kwargs"] == {"in_features": 64, "hidden": [16], "num_classes": 10}
    assert record["identity"]["recipe"]["task"] == "digits"
    metrics = record["metrics"]
    assert metrics["steps"] == 30 * 20  # 30 epochs of ceil(1257 / 64) batches
    assert metrics["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert metrics["test"]["accuracy"] > 90.0
    assert train.reference_metrics("mlp", **TINY_MLP) == metrics
    # The recorded metric is the model's real metric.
    from netchisel.zoo.data import task

    assert task("digits").evaluate(model, "test")["accuracy"] == metrics["test"]["accuracy"]


def test_cache_hit_does_not_retrain(monkeypatch: pytest.MonkeyPatch) -> None:
    first = train.pretrained("mlp", **TINY_MLP)
    monkeypatch.setattr(train, "fit", _no_training)
    second = train.pretrained("mlp", **TINY_MLP)
    assert _same_weights(first, second)
    train.reference_metrics("mlp", **TINY_MLP)


def test_other_kwargs_are_another_entry(tmp_cache: Path) -> None:
    train.pretrained("mlp", hidden=[8])
    train.pretrained("mlp", hidden=[9])
    assert len(list(tmp_cache.glob("mlp-*.safetensors"))) == 2


def test_same_seed_gives_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = train.pretrained("cnn", **TINY_CNN)
    monkeypatch.setenv(train.CACHE_ENV, str(tmp_path / "elsewhere"))
    second = train.pretrained("cnn", **TINY_CNN)
    assert _same_weights(first, second)
    assert any("running_mean" in k for k in first.state_dict())  # BatchNorm buffers too


def test_callers_random_state_is_left_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train.pretrained("mlp", **TINY_MLP)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("target", ["safetensors", "json"])
def test_corrupt_cache_is_retrained(tmp_cache: Path, target: str) -> None:
    first = train.pretrained("mlp", **TINY_MLP)
    (path,) = tmp_cache.glob(f"mlp-*.{target}")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.warns(RuntimeWarning, match=r"unusable.*retraining") as caught:
        second = train.pretrained("mlp", **TINY_MLP)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert _same_weights(first, second)
    # Repaired: the next call is a clean hit.
    train.pretrained("mlp", **TINY_MLP)


def test_weights_swapped_under_a_record_are_detected(tmp_cache: Path) -> None:
    train.pretrained("mlp", hidden=[8])
    train.pretrained("mlp", hidden=[9])
    by_width = {
        json.loads(p.read_text())["identity"]["kwargs"]["hidden"][0]: p.with_suffix(".safetensors")
        for p in tmp_cache.glob("mlp-*.json")
    }
    by_width[8].write_bytes(by_width[9].read_bytes())
    with pytest.warns(RuntimeWarning, match="does not match its record"):
        model = train.pretrained("mlp", hidden=[8])
    assert model.fc1.out_features == 8


def test_no_temp_files_are_left(tmp_cache: Path) -> None:
    train.pretrained("mlp", **TINY_MLP)
    assert not [p for p in tmp_cache.iterdir() if p.name.startswith(".")]


def test_recipe_follows_the_model() -> None:
    assert train.recipe("mlp").task == "digits"
    assert train.recipe("mlp", in_features=1024).task == "digits32"
    assert train.recipe("cnn").task == "digits32"
    assert train.recipe("cnn", image_size=8).task == "digits"
    assert train.recipe("resnet").task == "digits32"
    gpt = train.recipe("gpt", block_size=32)
    assert (gpt.task, gpt.task_kwargs["block_size"]) == ("text", 32)
    assert gpt.settings.steps is not None


def test_recipe_errors() -> None:
    with pytest.raises(ConfigError, match="in_features must be 64 or 1024"):
        train.recipe("mlp", in_features=100)
    with pytest.raises(ConfigError, match="num_classes must be 10"):
        train.recipe("resnet", num_classes=100)
    with pytest.raises(ConfigError, match="vocab_size must be 256"):
        train.recipe("gpt", vocab_size=512)
    with pytest.raises(ConfigError, match="does not train it"):
        train.reference_metrics("minilm")
    with pytest.raises(ConfigError, match="unknown zoo model"):
        train.pretrained("vgg")


def test_tiny_gpt_reports_bits_per_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real recipe with fewer steps, so the test stays fast.
    base = train._RECIPES["gpt"]
    short = train.Recipe(
        base.task, train.TrainSettings(steps=30, lr=3e-3), base.task_kwargs, base.seed
    )
    monkeypatch.setitem(train._RECIPES, "gpt", short)
    model = train.pretrained("gpt", n_layer=1, n_head=2, n_embd=16, block_size=16)
    metrics = train.reference_metrics("gpt", n_layer=1, n_head=2, n_embd=16, block_size=16)
    assert metrics["steps"] == 30
    val = metrics["val"]
    assert val["bits_per_byte"] == val["bits_per_token"]
    assert val["bits_per_char"] > val["bits_per_byte"]
    assert val["perplexity"] < 256  # better than uniform over bytes after 30 steps
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 256)
