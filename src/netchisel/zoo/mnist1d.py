"""MNIST-1D (Greydanus & Kobak, ICML 2024): ten digit templates turned into 1-D sequences.

The data are generated on this machine by the `mnist1d` package's own generator
(`mnist1d.data.make_dataset` with the package's default arguments `get_dataset_args()`,
seed 42): 5,000 sequences of length 40, 10 classes, the first 4,000 train and the last 1,000
test, exactly as the authors split them. The package's `get_dataset` is never called (it
downloads a pickle). The generator centres and scales the whole set to mean 0 and std 1; the
sequences are used as it gives them. Checked once by hand, not by a test (mnist1d 0.0.2.post1,
numpy 2.4, scipy 1.17), against the authors' published `mnist1d_data.pkl`: labels identical,
sequences equal within 9e-16 (float rounding).

Splits (`mnist1d_splits()`): the generator already shuffles the sequences, so the **last 500 of its
4,000 train sequences are held out as validation**: 3,500 train / 500 val / 1,000 test. The
published numbers (logistic 32 %, MLP 68 %, CNN 94 %) train on all 4,000; `mnist1d_arrays()`
gives the generator's own split for that. Inputs are float32 (N, 1, 40): one channel, 40
steps, so Conv1d runs on them as they are and an MLP flattens them; labels are int64.

The generated arrays are cached as `mnist1d-<key>.npz` (loaded with `allow_pickle=False`) under
`zoo.cache_dir()`, with a `.json` record holding the generator arguments, the package version
and the SHA-256 of the arrays. `<key>` hashes the arguments; a cache entry that cannot be read
or whose arrays or arguments do not match the record is regenerated with a warning.

Needs the optional `mnist1d` extra (`pip install 'netchisel[mnist1d]'`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from netchisel.core.errors import ConfigError
from netchisel.zoo.cache import atomic_write, cache_dir

MNIST1D_VAL = 500
"""Validation sequences: the last 500 of the generator's 4,000 train sequences."""
MNIST1D_LENGTH = 40
MNIST1D_CLASSES = 10
ARRAY_NAMES = ("x", "y", "x_test", "y_test")
FORMAT_VERSION = 1
"""Bump when the cache layout changes; old entries are then regenerated."""

Arrays = dict[str, np.ndarray[Any, Any]]


def _package() -> Any:
    try:
        from mnist1d import data  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise ConfigError(
            "zoo task 'mnist1d' needs the mnist1d package (it generates the data): "
            "pip install 'netchisel[mnist1d]'"
        ) from e
    return data


def generator_args() -> dict[str, Any]:
    """The package's default generator arguments (its download `url` left out: never used).

    Example:
        >>> a = generator_args()  # doctest: +SKIP
        >>> a["num_samples"], a["final_seq_length"], a["seed"]  # doctest: +SKIP
        (5000, 40, 42)
    """
    args = dict(_package().get_dataset_args(as_dict=True))
    args.pop("url", None)
    return args


def _arrays_sha256(arrays: Arrays) -> str:
    digest = hashlib.sha256()
    for name in ARRAY_NAMES:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _identity() -> dict[str, Any]:
    args = generator_args()  # first: a missing package is the ConfigError naming the extra
    return {
        "format": FORMAT_VERSION,
        "generator": "mnist1d.data.make_dataset",
        "package_version": metadata.version("mnist1d"),
        "args": args,
    }


def _paths(identity: dict[str, Any]) -> tuple[Path, Path]:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    arrays = cache_dir() / f"mnist1d-{key}.npz"
    return arrays, arrays.with_suffix(".json")


def _generate() -> Arrays:
    data = _package()
    args = data.get_dataset_args()  # the package wants its own ObjectView
    # make_dataset seeds the global `random` and `numpy.random` streams: give them back.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        out = data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {name: np.asarray(out[name]) for name in ARRAY_NAMES}


def _load(identity: dict[str, Any], arrays_path: Path, record_path: Path) -> Arrays:
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or record.get("identity") != identity:
        raise ValueError("record does not describe these generator arguments")
    with np.load(arrays_path, allow_pickle=False) as f:
        arrays = {name: np.array(f[name]) for name in ARRAY_NAMES}
    if _arrays_sha256(arrays) != record.get("sha256"):
        raise ValueError("arrays do not match their record (truncated or replaced)")
    return arrays


def _store(arrays: Arrays, identity: dict[str, Any], arrays_path: Path, record_path: Path) -> None:
    def write_npz(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(
                f, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"]
            )

    atomic_write(arrays_path, write_npz)
    record = {"identity": identity, "sha256": _arrays_sha256(arrays)}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(record_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def mnist1d_arrays() -> Arrays:
    """The generator's arrays, from the cache or generated (about 1 s) and cached.

    Returns `x` (4000, 40) and `x_test` (1000, 40) float64, `y` and `y_test` int64: the
    authors' 4,000 / 1,000 split, before netchisel holds out validation. Copies: changing
    them does not change the cache.

    Example:
        >>> a = mnist1d_arrays()  # doctest: +SKIP
        >>> a["x"].shape, a["x_test"].shape  # doctest: +SKIP
        ((4000, 40), (1000, 40))
    """
    return {k: v.copy() for k, v in _cached_arrays().items()}


@functools.cache
def _cached_arrays() -> Arrays:
    identity = _identity()
    arrays_path, record_path = _paths(identity)
    if arrays_path.exists() or record_path.exists():
        try:
            return _load(identity, arrays_path, record_path)
        except Exception as e:  # any corruption: say so, then regenerate
            warnings.warn(
                f"mnist1d cache {arrays_path.name} is unusable ({type(e).__name__}: {e}); "
                "regenerating",
                RuntimeWarning,
                stacklevel=3,
            )
    arrays = _generate()
    _store(arrays, identity, arrays_path, record_path)
    return arrays


def mnist1d_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the generated arrays: which data a number was
    measured on.

    Example:
        >>> len(mnist1d_fingerprint())  # doctest: +SKIP
        16
    """
    return _arrays_sha256(_cached_arrays())[:16]


def mnist1d_splits() -> dict[str, TensorDataset]:
    """The MNIST-1D splits as float32 (N, 1, 40) sequences and int64 labels.

    Returns:
        {"train", "val", "test"} -> TensorDataset(x, y); 3,500 / 500 / 1,000 sequences (val
        is the last 500 of the generator's 4,000 train sequences).

    Example:
        >>> d = mnist1d_splits()  # doctest: +SKIP
        >>> d["train"].tensors[0].shape, len(d["val"]), len(d["test"])  # doctest: +SKIP
        (torch.Size([3500, 1, 40]), 500, 1000)
    """
    a = _cached_arrays()

    def pair(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> TensorDataset:
        xs = torch.tensor(x, dtype=torch.float32)[:, None, :]
        return TensorDataset(xs.contiguous(), torch.tensor(y, dtype=torch.int64))

    n_train = len(a["y"]) - MNIST1D_VAL
    return {
        "train": pair(a["x"][:n_train], a["y"][:n_train]),
        "val": pair(a["x"][n_train:], a["y"][n_train:]),
        "test": pair(a["x_test"], a["y_test"]),
    }
