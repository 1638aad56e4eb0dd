"""zoo/mnist1d.py: the generated MNIST-1D arrays, their splits and their fingerprinted cache."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.zoo import cache, mnist1d
from netchisel.zoo.data import task


@pytest.fixture(autouse=True)
def package(request: pytest.FixtureRequest) -> None:
    # Every test needs the package except the one that checks the error when it is missing.
    if request.node.name != "test_a_missing_package_is_one_error_naming_the_extra":
        pytest.importorskip("mnist1d")


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    mnist1d._cached_arrays.cache_clear()
    yield cache.cache_dir()
    mnist1d._cached_arrays.cache_clear()


def _entry(directory: Path) -> tuple[Path, Path]:
    (npz,) = directory.glob("mnist1d-*.npz")
    return npz, npz.with_suffix(".json")


def test_the_package_defaults_are_the_published_data() -> None:
    args = mnist1d.generator_args()
    assert args["num_samples"] == 5000 and args["train_split"] == 0.8
    assert args["final_seq_length"] == 40 and args["seed"] == 42
    assert "url" not in args


def test_splits_have_exact_sizes_shapes_and_dtypes() -> None:
    raw = mnist1d.mnist1d_arrays()
    assert raw["x"].shape == (4000, 40) and raw["x_test"].shape == (1000, 40)
    splits = mnist1d.mnist1d_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 3500, "val": 500, "test": 1000}
    for data in splits.values():
        x, y = data.tensors
        assert x.shape[1:] == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    # val is the last 500 of the generator's train sequences, in its order.
    assert torch.equal(splits["val"].tensors[0][:, 0], torch.tensor(raw["x"][3500:]).float())
    assert torch.equal(splits["test"].tensors[1], torch.tensor(raw["y_test"]))
    labels = torch.cat([d.tensors[1] for d in splits.values()])
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_generation_is_deterministic_and_leaves_global_seeds_alone(fresh_cache: Path) -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    first = mnist1d._generate()
    assert np.random.rand() == expected
    second = mnist1d._generate()
    for name in mnist1d.ARRAY_NAMES:
        assert np.array_equal(first[name], second[name])


def test_cache_is_written_with_its_fingerprint_and_hit(fresh_cache: Path) -> None:
    fingerprint = mnist1d.mnist1d_fingerprint()
    _npz, record_path = _entry(fresh_cache)
    record = json.loads(record_path.read_text())
    assert record["sha256"][:16] == fingerprint
    assert record["identity"]["args"]["seed"] == 42
    mnist1d._cached_arrays.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good entry loads without regenerating
        assert mnist1d.mnist1d_fingerprint() == fingerprint


@pytest.mark.parametrize("damage", ["truncate", "replace", "record"])
def test_a_corrupt_cache_is_regenerated(fresh_cache: Path, damage: str) -> None:
    fingerprint = mnist1d.mnist1d_fingerprint()
    npz, record_path = _entry(fresh_cache)
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:1000])
    elif damage == "replace":
        arrays = mnist1d.mnist1d_arrays()
        arrays["x"][0, 0] += 1.0
        np.savez(
            npz, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"]
        )
    else:
        record_path.write_text("{not json")
    mnist1d._cached_arrays.cache_clear()
    with pytest.warns(RuntimeWarning, match="regenerating"):
        assert mnist1d.mnist1d_fingerprint() == fingerprint
    mnist1d._cached_arrays.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the entry was rewritten whole
        assert mnist1d.mnist1d_fingerprint() == fingerprint


def test_task_and_its_batch_size() -> None:
    t = task("mnist1d")
    assert t.name == "mnist1d" and t.primary_metric == "accuracy"
    assert next(iter(t.loader("train")))[0].shape == (100, 1, 40)
    with pytest.raises(ConfigError, match="known: batch_size"):
        task("mnist1d", size=3)


def test_a_missing_package_is_one_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d", None)
    mnist1d._cached_arrays.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'netchisel\[mnist1d\]'"):
            task("mnist1d")
    finally:
        mnist1d._cached_arrays.cache_clear()
