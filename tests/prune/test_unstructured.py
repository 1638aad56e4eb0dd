from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.artifact.store import artifact_bytes, load, read_manifest, save
from netchisel.core.errors import ConfigError
from netchisel.core.masks import masks_of
from netchisel.core.task import classification_task
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"per_layer": {"fc9": 0.3}},
            r"per_layer: 'fc9' matches none of the 3 chosen layers \(0, 2, 4\)",
        ),
        ({"scope": "global", "per_layer": {"0": 0.3}}, "per_layer and group: row are for"),
        ({"scope": "global", "group": "row"}, "per_layer and group: row are for scope local"),
    ],
)
def test_options_that_would_be_ignored_are_errors(options: dict[str, object], message: str) -> None:
    net = _net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ConfigError, match=message):
        prune_(net, UnstructuredConfig.from_dict({"sparsity": 0.5, **options}))
    assert all(torch.equal(a, net.state_dict()[k]) for k, a in before.items())
    assert not masks_of(net)


@pytest.mark.parametrize("mode", ["zero", "freeze"])
def test_a_second_stage_prunes_what_the_first_held_before_anything_else(mode: str) -> None:
    net = _net()
    prune_(net, UnstructuredConfig(sparsity=0.5, mode=mode))  # type: ignore[arg-type]
    first = masks_of(net)["2.weight"].keep.clone()
    prune_(net, UnstructuredConfig(sparsity=0.5, importance="random"))
    keep = masks_of(net)["2.weight"].keep
    assert int((~keep).sum()) == 512 and torch.equal(keep, first)  # nothing new: already 50 %
    prune_(net, UnstructuredConfig(sparsity=0.75, importance="random"))
    keep = masks_of(net)["2.weight"].keep
    assert int((~keep).sum()) == 768 and not (keep & ~first).any()


def test_taylor_sums_the_absolute_products_over_batches_and_restores_grads() -> None:
    from netchisel.prune.importance import collect_stats

    net, task = _net(), _task()
    marker = torch.full_like(net[2].weight, 7.0)
    net[2].weight.grad = marker
    stats = collect_stats(net, {"2": net[2]}, task, "gradients", 96)  # type: ignore[arg-type]
    expected = torch.zeros_like(net[2].weight)
    batches = task.calibration_batches(96)  # type: ignore[attr-defined]
    assert len(batches) == 3
    for x, y in batches:
        w = net[2].weight.detach().clone().requires_grad_(True)
        h = torch.relu(net[0](x)).detach()
        out = net[4](torch.relu(nn.functional.linear(h, w, net[2].bias.detach())))
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), w)
        expected += (w.detach() * grad).abs()
    assert torch.allclose(stats["2"].taylor, expected, rtol=1e-5, atol=1e-8)  # type: ignore[arg-type]
    assert net[2].weight.grad is marker and net[0].weight.grad is None


def test_taylor_restores_grads_when_the_loss_fails() -> None:
    import dataclasses

    from netchisel.prune.importance import collect_stats

    net, task = _net(), _task()
    calls = []

    def failing(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("loss failed")
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    broken = dataclasses.replace(task, loss_fn=failing)  # type: ignore[type-var]
    with pytest.raises(RuntimeError, match="loss failed"):
        collect_stats(net, {"2": net[2]}, broken, "gradients", 96)
    assert all(p.grad is None for p in net.parameters()) and net.training


def test_random_is_seeded_by_the_context_and_leaves_the_callers_rng_alone() -> None:
    from netchisel.core.context import Context
    from netchisel.prune.unstructured import score_layers

    net = _net()
    layers = {"2": net[2]}
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = score_layers(net, layers, "random", Context(None, seed=1))["2"]
    assert torch.equal(torch.get_rng_state(), state)
    b = score_layers(net, layers, "random", Context(None, seed=1))["2"]
    c = score_layers(net, layers, "random", Context(None, seed=2))["2"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_l2_ranks_like_l1_by_the_square() -> None:
    from netchisel.prune.importance import LayerStats, l1, l2

    w = torch.tensor([[-3.0, 0.5], [2.0, -1.0]])
    assert torch.equal(l2(w, LayerStats()), w**2) and torch.equal(l1(w, LayerStats()), w.abs())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"per_layer": {"fc[": 0.5}}, r"^prune\.unstructured\.per_layer: 'fc\[' is not a valid"),
        ({"pattern": "4:4"}, r"^prune\.unstructured\.pattern: pattern '4:4': N:M needs 0 < N < M"),
        ({"pattern": "2:4", "sparsity": 0.9}, r"'2:4' prunes 2 of every 4, not sparsity 0\.9"),
    ],
)
def test_config_errors_name_the_stage_and_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UnstructuredConfig.from_dict(options)


def test_every_layer_an_n_of_m_pattern_cannot_fit_is_named_at_once() -> None:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(10, 2))
    with pytest.raises(ConfigError, match=r"of 4; 2 layers are not: 0 \(6\), 4 \(10\): exclude"):
        prune_(net, UnstructuredConfig(pattern="2:4"))
    assert not masks_of(net)


def test_no_layer_left_to_prune_says_why() -> None:
    with pytest.raises(ConfigError, match=r"layers/exclude leave no Linear or Conv layer to prune"):
        prune_(_net(), UnstructuredConfig(exclude=(".*",)))
    with pytest.raises(ConfigError, match=r"the model is itself one Linear; wrap it"):
        prune_(nn.Linear(4, 4), UnstructuredConfig())
    with pytest.raises(ConfigError, match=r"the model has no Linear or Conv layer to prune"):
        prune_(nn.Sequential(nn.ReLU()), UnstructuredConfig())


def test_n_of_m_sparsity_agreement_is_to_three_decimals() -> None:
    assert UnstructuredConfig(pattern="1:3", sparsity=2 / 3).sparsity == 2 / 3
    assert UnstructuredConfig(pattern="1:3", sparsity=0.667).sparsity == 0.667
    with pytest.raises(ConfigError, match=r"prunes 2 of every 3, not sparsity 0\.6"):
        UnstructuredConfig(pattern="1:3", sparsity=0.6)


def test_a_per_layer_key_that_is_not_a_string_says_quote_it() -> None:
    with pytest.raises(ConfigError, match=r"per_layer: key 0 is not a layer-name regex: quote it"):
        UnstructuredConfig.from_dict({"per_layer": {0: 0.5}})
