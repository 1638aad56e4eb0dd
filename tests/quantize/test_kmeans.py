"""quantize.kmeans: the stage, its fine-tuning, float16 and the Huffman-coded artifact."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.artifact.huffman import code_lengths
from netchisel.artifact.int_codecs import to_relative
from netchisel.artifact.store import WEIGHTS
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.task import Task
from netchisel.prune.unstructured import UnstructuredConfig, prune_unstructured
from netchisel.quantize import kmeans
from netchisel.quantize.formats import ClusteredLinear
from netchisel.quantize.kmeans import KMeansConfig, quantize_kmeans
from netchisel.zoo import data


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


@pytest.fixture(scope="module")
def task() -> Task:
    return data.task("digits")


@pytest.fixture(scope="module")
def trained(task: Task) -> nn.Module:
    """A small digits MLP trained for 200 steps, then pruned to 80%."""
    from netchisel.core.train import TrainSettings, fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    model = small_mlp()
    fit(model, task, TrainSettings(steps=200, lr=3e-3), Context(task, quiet=True))
    prune_unstructured(model, UnstructuredConfig(sparsity=0.8), Context(task, quiet=True))
    torch.set_num_threads(threads)
    return model


def fresh(trained: nn.Module) -> nn.Module:
    """A copy of the trained, pruned model with its masks (deepcopy keeps them)."""
    import copy

    return copy.deepcopy(trained)


def test_stage_clusters_every_layer_and_keeps_pruned_zeros(trained: nn.Module, task: Task) -> None:
    model = fresh(trained)
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    ctx = Context(task, quiet=True)
    quantize_kmeans(model, KMeansConfig(bits=4, per_layer_bits={"3": 3}), ctx)
    assert isinstance(model[1], ClusteredLinear) and isinstance(model[3], ClusteredLinear)
    assert masks_of(model) == {}  # the masked weights are gone; their zeros are index 0
    for name, bits in (("1", 4), ("3", 3)):
        layer = model.get_submodule(name)
        assert torch.equal(layer.weight == 0, zeros[name])
        assert torch.unique(layer.weight).numel() <= 2**bits
    assert ctx.records["layer_bits"] == {"1": 4, "3": 3}
    assert ctx.records["distinct_values"]["3"] <= 8
    assert max(ctx.records["weight_relative_error"].values()) < 0.12
    assert "no speed-up" in ctx.records["note"]


def test_centroid_finetuning_lowers_the_loss(trained: nn.Module, task: Task) -> None:
    def train_loss(model: nn.Module) -> float:
        return task.evaluate(model, "train")["loss"]

    clustered = fresh(trained)
    quantize_kmeans(clustered, KMeansConfig(bits=2), Context(task, quiet=True))
    tuned = fresh(trained)
    config = KMeansConfig(bits=2, finetune_steps=60, lr=1e-3)
    quantize_kmeans(tuned, config, Context(task, quiet=True))
    before, after = train_loss(clustered), train_loss(tuned)
    assert after < 0.9 * before
    # Fine-tuning moved the centroids but kept the sharing and the zeros.
    assert torch.equal(tuned[1].indices, clustered[1].indices)
    assert torch.equal(tuned[1].weight == 0, clustered[1].weight == 0)
    assert not torch.equal(tuned[1].codebook, clustered[1].codebook)


def _tensor_bytes(artifact: Path) -> dict[str, int]:
    """Bytes of every tensor in model.safetensors, read from its header."""
    raw = (artifact / WEIGHTS).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}


def test_artifact_round_trip_is_bit_exact_and_huffman_coded(
    trained: nn.Module, task: Task, tmp_path: Path
) -> None:
    model = fresh(trained)
    quantize_kmeans(model, KMeansConfig(bits=5), Context(task, quiet=True))
    path = nc.save(model, tmp_path / "huffman")
    loaded = nc.load(path)
    x = task.example_inputs(16)[0]
    assert torch.equal(loaded(x), model.eval()(x))
    assert torch.equal(loaded[1].indices, model[1].indices)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tensors"]["1.indices"]["codec"] == "huffman"
    # The stored indices are exactly the Huffman tables and streams of the relative layout.
    indices = model[1].indices.numpy().reshape(-1).astype(np.int64)
    meta = manifest["tensors"]["1.indices"]["meta"]
    assert meta["layout"] == "sparse"
    gaps, values = to_relative(indices, meta["index_bits"])
    alphabet = int(indices.max()) + 1
    expected = alphabet + 2 ** meta["index_bits"]
    for symbols, size in ((values, alphabet), (gaps, 2 ** meta["index_bits"])):
        freqs = np.bincount(symbols, minlength=size)
        expected += math.ceil(int((freqs * code_lengths(freqs)).sum()) / 8)
    stored = _tensor_bytes(path)
    assert stored["1.indices"] == expected
    # Stored raw, an index takes one byte; the files differ by exactly the tensor bytes saved,
    # up to a few bytes of safetensors header (shapes differ, 8-byte alignment).
    raw_model = fresh(trained)
    quantize_kmeans(raw_model, KMeansConfig(bits=5, codec="raw"), Context(task, quiet=True))
    raw_path = nc.save(raw_model, tmp_path / "raw")
    assert _tensor_bytes(raw_path)["1.indices"] == indices.size == 3072
    saved = (raw_path / WEIGHTS).stat().st_size - (path / WEIGHTS).stat().st_size
    assert abs(saved - (3072 - expected) - (480 - _tensor_bytes(path)["3.indices"])) <= 16
    assert expected < 0.25 * 3072


def test_float16_halves_codebooks_and_biases_in_the_file(
    trained: nn.Module, task: Task, tmp_path: Path
) -> None:
    full, half = fresh(trained), fresh(trained)
    quantize_kmeans(full, KMeansConfig(bits=5, finetune_steps=5), Context(task, quiet=True))
    quantize_kmeans(
        half, KMeansConfig(bits=5, finetune_steps=5, float16=True), Context(task, quiet=True)
    )
    layer, twin = half[1], full[1]
    assert layer.codebook.dtype == layer.bias.dtype == torch.float16
    # the same fine-tuning, then each value rounded to float16
    assert torch.equal(layer.codebook.float(), twin.codebook.detach().half().float())
    full_bytes, half_bytes = (
        _tensor_bytes(nc.save(full, tmp_path / "f")),
        _tensor_bytes(nc.save(half, tmp_path / "h")),
    )
    for name, tensor in half.state_dict().items():
        if name.endswith(("codebook", "bias")):
            assert half_bytes[name] == 2 * tensor.numel() == full_bytes[name] // 2
    loaded = nc.load(tmp_path / "h")
    x = task.example_inputs(16)[0]
    assert loaded[1].codebook.dtype == torch.float16
    assert torch.equal(loaded(x), half.eval()(x))
    assert (half(x) - full.eval()(x)).abs().max() < 1e-2 * full(x).abs().max()
    # later training (AdamW) still works: fit steps float16 parameters through fp32 copies
    from netchisel.core.train import TrainSettings, fit

    losses = fit(half, task, TrainSettings(steps=20), Context(task, quiet=True))
    assert all(math.isfinite(v) for v in losses) and layer.codebook.dtype == torch.float16


def test_float16_refuses_values_it_cannot_hold_and_leaves_the_model(task: Task) -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"float16 cannot hold 0.codebook .* leave float16 off"):
        quantize_kmeans(model, KMeansConfig(bits=3, float16=True), Context(task, quiet=True))
    assert isinstance(model[0], nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="float16: 'no' is not true or false"):
        KMeansConfig(float16="no")  # type: ignore[arg-type]


def test_failed_finetuning_leaves_the_model_as_it_was(
    trained: nn.Module, task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fresh(trained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {n: m.keep.clone() for n, m in masks_of(model).items()}

    def broken_fit(*args: object, **kwargs: object) -> list[float]:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(kmeans, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="interrupted"):
        quantize_kmeans(model, KMeansConfig(finetune_steps=5), Context(task, quiet=True))
    assert type(model[1]) is nn.Linear and type(model[3]) is nn.Linear
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {n: m.keep for n, m in masks_of(model).items()}.keys() == masks.keys()
    assert all(torch.equal(masks_of(model)[n].keep, k) for n, k in masks.items())


def test_config_and_model_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="bits=9 is outside 2-8"):
        KMeansConfig(bits=9)
    with pytest.raises(ConfigError, match="bits fc=1"):
        KMeansConfig(per_layer_bits={"fc": 1})
    with pytest.raises(ConfigError, match="unknown key 'huffman'"):
        KMeansConfig.from_dict({"huffman": True})
    with pytest.raises(ConfigError, match="needs a task"):
        quantize_kmeans(small_mlp(), KMeansConfig(finetune_epochs=1), Context(None, quiet=True))
    frozen = small_mlp()
    set_mask(frozen, "1.weight", torch.rand(48, 64) < 0.5, fill=frozen[1].weight.detach().clone())
    with pytest.raises(ConfigError, match="frozen entries"):
        quantize_kmeans(frozen, KMeansConfig(), Context(None, quiet=True))
    tied = small_mlp()
    tied.append(nn.Linear(64, 48))
    tied[4].weight = tied[1].weight
    with pytest.raises(ConfigError, match="tied"):
        quantize_kmeans(tied, KMeansConfig(), Context(None, quiet=True))
    with pytest.raises(ConfigError, match="no Linear or Conv"):
        quantize_kmeans(nn.Sequential(nn.ReLU()), KMeansConfig(), Context(None, quiet=True))
