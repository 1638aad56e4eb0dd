from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.core.task import classification_task
from netchisel.pipeline.artifact import artifact_bytes, load, read_manifest, save
from netchisel.prune import UnstructuredConfig, prune_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def _task() -> object:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = (x[:, :4].argmax(dim=1)).long()
    return classification_task({"train": TensorDataset(x, y), "val": TensorDataset(x, y)}, 32)


def test_local_magnitude_prunes_the_smallest_in_every_layer() -> None:
    net = _net()
    before = copy.deepcopy(net)
    prune_(net, UnstructuredConfig(sparsity=0.75))
    for i in (0, 2, 4):
        w, w0 = net[i].weight, before[i].weight
        assert int((w == 0).sum()) == round(0.75 * w.numel())
        assert w0[w == 0].abs().max() <= w0[w != 0].abs().min()
        assert torch.equal(w[w != 0], w0[w != 0])


def test_global_scope_and_per_layer_override() -> None:
    net = _net()
    prune_(net, UnstructuredConfig(sparsity=0.8, scope="global", min_keep=0.05))
    weights = [net[i].weight for i in (0, 2, 4)]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.8 * total)
    assert all(int((w != 0).sum()) >= 0.05 * w.numel() for w in weights)
    net = _net()
    prune_(net, UnstructuredConfig(sparsity=0.5, per_layer={"4": 0.25}))
    assert int((net[4].weight == 0).sum()) == 32 and int((net[0].weight == 0).sum()) == 256


@pytest.mark.parametrize("importance", ["taylor", "wanda", "random", "l2"])
def test_data_criteria_run_through_the_task(importance: str) -> None:
    net = _net()
    prune_(
        net,
        UnstructuredConfig(sparsity=0.5, importance=importance, calibration_samples=64),
        _task(),
    )  # type: ignore[arg-type]
    assert int((net[2].weight == 0).sum()) == 512


def test_two_of_four_and_layer_selection() -> None:
    net = _net()
    prune_(net, UnstructuredConfig(pattern="2:4", layers=("0", "2")))
    assert (net[0].weight != 0).reshape(32, 4, 4).sum(dim=2).eq(2).all()
    assert int((net[4].weight == 0).sum()) == 0
    assert sorted(masks_of(net)) == ["0.weight", "2.weight"]


def test_freeze_mode_keeps_values_and_trains_nothing_there() -> None:
    net = _net()
    before = net[0].weight.detach().clone()
    prune_(net, UnstructuredConfig(sparsity=0.5, mode="freeze"))
    assert torch.equal(net[0].weight, before)
    assert masks_of(net)["0.weight"].fill is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.0}, r"^prune\.unstructured\.sparsity: 1\.0 is not in \[0, 1\)$"),
        ({"per_layer": {"0": 1.2}}, r"^prune\.unstructured\.per_layer: '0': 1\.2 is not in"),
        ({"importance": "snip"}, "unknown importance 'snip'"),
        ({"pattern": "4:2"}, "N:M needs 0 < N < M"),
        ({"pattern": "2:4", "scope": "global"}, "N:M pattern is per layer"),
        ({"layers": ["fc.*"]}, r"include pattern 'fc\.\*' matches no layer"),
    ],
)
def test_bad_input_is_one_clear_error(options: dict[str, object], message: str) -> None:
    net = _net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match=message):
        prune_(net, UnstructuredConfig.from_dict(options))
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.values(), strict=True)
    )


def test_data_criterion_without_a_task_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs gradients"):
        prune_(_net(), UnstructuredConfig(importance="taylor"))


def test_artifact_shrinks_and_keeps_the_mask(tmp_path: Path) -> None:
    dense = _net()
    sparse = _net()
    prune_(sparse, UnstructuredConfig(sparsity=0.9))
    d_bytes = artifact_bytes(save(dense, tmp_path / "dense"))
    s_dir = save(sparse, tmp_path / "sparse")
    codecs = {n: t["codec"] for n, t in read_manifest(s_dir)["tensors"].items()}
    assert codecs["0.weight"] == "bitmask" and "0.bias" not in codecs  # raw is the default
    weights = 16 * 32 + 32 * 32 + 32 * 4
    biases = 32 + 32 + 4
    sparse_payload = (
        round(0.1 * weights) * 4 + sum((n + 7) // 8 for n in (512, 1024, 128)) + biases * 4
    )
    # The data section of model.safetensors (after its 8-byte length and JSON header) is
    # exactly the nonzero values, one bit per weight entry, and the dense biases.
    raw = (s_dir / "model.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert len(raw) - 8 - header == sparse_payload
    assert artifact_bytes(s_dir) < 0.5 * d_bytes  # the manifest weighs ~3 KB at this tiny size
    loaded = load(s_dir)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), sparse.state_dict().values(), strict=True)
    )
    assert torch.equal(masks_of(loaded)["2.weight"].keep, sparse[2].weight != 0)


def test_wanda_on_a_depthwise_conv() -> None:
    from netchisel.core.task import classification_task as ct

    net = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    x = torch.randn(16, 4, 6, 6)
    task = ct({"train": TensorDataset(x, torch.zeros(16).long())}, 8)
    prune_(net, UnstructuredConfig(sparsity=0.5, importance="wanda", layers=("0",)), task)
    assert int((net[0].weight == 0).sum()) == 8 * 1 * 9 // 2
