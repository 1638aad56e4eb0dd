"""Learned exit decisions: the decider's inputs, a case where the max softmax ranks the wrong
samples first and a trained decider does not, its MACs in the costs, save/load, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ArtifactError, ConfigError
from netchisel.core.task import Task, classification_task
from netchisel.dynamic import EarlyExitConfig, EarlyExitModel, calibrate_exits
from netchisel.dynamic.costs import exit_macs
from netchisel.dynamic.deciders import decider_inputs, input_size, make_decider
from netchisel.dynamic.early_exit import train_deciders
from netchisel.dynamic.thresholds import Budget, calibrate
from netchisel.measure import count_flops
from tests.dynamic._nets import conv_chain, labelled_by


def test_decider_inputs_are_sorted_probabilities_entropy_margin_and_class_probabilities() -> None:
    logits = torch.tensor([[math.log(1.0), math.log(3.0), math.log(4.0), math.log(2.0)]])
    x = decider_inputs(logits)[0].tolist()
    p = [0.1, 0.3, 0.4, 0.2]
    entropy = -sum(q * math.log(q) for q in p) / math.log(4)
    expected = [0.4, 0.3, 0.2, 0.1, entropy, 0.1, *p]
    assert len(x) == input_size(4) == 10
    assert x == pytest.approx(expected, abs=1e-6)


def _trap() -> tuple[EarlyExitModel, Task]:
    """An exit whose confident answers are the wrong ones.

    Inputs are a * e0 (kind A) or b * e1 (kind B), a and b in [1, 2]. The exit head answers
    class 0 for A with logit 6a (top probability >= 0.995) and class 1 for B with logit b
    (top probability 0.58-0.79); the final layer answers class 2 for A and class 1 for B, and
    the labels are the final answers. So the exit agrees with the end exactly on B, and every
    B sample is less sure by max softmax than every A sample.
    """
    g = torch.Generator().manual_seed(0)
    n = 300
    kind_b = torch.arange(n) % 2 == 1
    scale = 1.0 + torch.rand(n, generator=g)
    x = torch.zeros(n, 3)
    x[~kind_b, 0] = scale[~kind_b]
    x[kind_b, 1] = scale[kind_b]
    first = nn.Linear(3, 3, bias=False)
    wide = nn.Linear(3, 100, bias=False)  # the costly rest: 300 + 300 MACs
    final = nn.Linear(100, 3, bias=False)
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.eye(3))
        wide.weight.zero_()
        wide.weight[:3].copy_(torch.eye(3))
        final.weight.zero_()
        final.weight[:, :3].copy_(torch.tensor([[0.0, 0, 0], [0, 5, 0], [5, 0, 0]]))
        head.weight.copy_(torch.tensor([[6.0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    net = nn.Sequential(first, wide, final)
    with torch.no_grad():
        y = net(x).argmax(-1)
    splits = {
        name: TensorDataset(x[i * 100 : (i + 1) * 100], y[i * 100 : (i + 1) * 100])
        for i, name in enumerate(("train", "val", "test"))
    }
    task = classification_task(splits, batch_size=25)
    torch.manual_seed(0)
    decider = [make_decider(3, 0)]
    model = EarlyExitModel(net, [head], ["0", "1", "2"], [0], [], "learned", 3, decider)
    return model, task


def test_a_learned_decider_exits_the_agreeing_samples_the_max_softmax_cannot() -> None:
    model, task = _trap()
    config = EarlyExitConfig(decider_steps=300, lr=0.05)
    losses = train_deciders(model, task, config, Context(task, quiet=True))
    assert len(losses) == 300 and losses[-1] < 0.1 < losses[0]
    val = next(iter(task.loader("val", batch_size=100)))
    logits = model.eval().all_outputs(val[0])
    # 1 point on 100 samples: 0 disagreements allowed (bound 0.69%), 1 is too many (1.67%).
    costs_of = calibrate_exits(model, task, max_drop=1.0).costs
    # Max softmax: letting any B sample out lets every A sample (surer, all disagreeing) out
    # first, so nothing exits.
    soft = calibrate(logits, val[1], "max_softmax", exit_macs(model, val[0]), Budget(100.0, 1.0))
    assert soft is not None and soft.fractions == [0.0, 1.0]
    # The learned score separates them: 49 of the 50 B samples of val leave (the search's
    # thresholds are 64 quantiles of the scores), none of A: a mean of 0.49 * 26 + 0.51 *
    # 626 = 332 MACs against 609 static.
    assert model.exit_fractions == [0.49, 0.51]
    with torch.no_grad():
        out, taken = model.exiting(val[0])
    kind_b = val[0][:, 1] > 0
    assert int((taken == 0).sum()) == 49 and bool(kind_b[taken == 0].all())
    assert torch.equal(out.argmax(-1), val[1])  # still 100%: only agreeing answers left early
    # The exit costs the first step (9), the head (9) and the decider (8 inputs -> 1: 8).
    assert costs_of == [9 + 9 + 8, 9 + 600 + 9 + 8]


def test_the_decider_runs_only_on_the_live_samples_and_counts() -> None:
    model, task = _trap()
    train_deciders(
        model, task, EarlyExitConfig(decider_steps=300, lr=0.05), Context(task, quiet=True)
    )
    calibrate_exits(model, task, max_drop=1.0)
    x = next(iter(task.loader("test", batch_size=100)))[0]
    seen: list[int] = []
    model.deciders[0].register_forward_hook(lambda m, a, o: seen.append(int(a[0].shape[0])))
    model.eval()
    with torch.no_grad():
        _, taken = model.exiting(x)
    assert seen == [100]
    left = int((taken == 0).sum())
    kind_b = x[:, 1] > 0
    assert left >= 40 and bool(kind_b[taken == 0].all())  # of 50 B; no A
    # count_flops on the real forward: everyone pays step 0, head, decider; those that stay
    # pay the rest.
    assert count_flops(model, x).macs == 100 * (9 + 9 + 8) + (100 - left) * 600
    # Batch 1 returns at the exit for a B sample, goes through for an A sample.
    b, a = x[(taken == 0).nonzero()[0]], x[(taken == 1).nonzero()[0]]
    assert count_flops(model, b).macs == 26 and count_flops(model, a).macs == 626


def test_the_stage_trains_saves_and_loads_bit_exactly(tmp_path: Path) -> None:
    net = conv_chain()
    task = labelled_by(net)
    config = EarlyExitConfig(
        exits=("1",), steps=20, criterion="learned", decider_hidden=4, decider_steps=5,
        max_drop=100.0,
    )  # fmt: skip
    dyn = nc.dynamic_(net, config, task)
    assert isinstance(dyn, EarlyExitModel) and len(dyn.deciders) == 1
    # (2 C + 2) * hidden + hidden * 1 MACs = 8 * 4 + 4 = 36 beside the head's 4 * 3 = 12
    costs = dyn.dynamic_costs(task.example_inputs(1))
    assert [e["macs"] for e in costs["exits"]] == [96 + 12 + 36, 96 + 384 + 96 + 12 + 36]
    loaded = nc.load(nc.save(dyn, tmp_path / "learned"))
    assert isinstance(loaded, EarlyExitModel) and loaded.criterion == "learned"
    assert loaded.thresholds == dyn.thresholds and loaded.exit_fractions == dyn.exit_fractions
    for key, value in dyn.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(64, 1, 8)
    with torch.no_grad():
        a, ta = dyn.exiting(x)
        b, tb = loaded.exiting(x)
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_a_manifest_whose_deciders_disagree_is_refused(tmp_path: Path) -> None:
    net = conv_chain()
    task = labelled_by(net)
    config = EarlyExitConfig(exits=("1",), steps=3, criterion="learned", decider_steps=2)
    path = nc.save(nc.dynamic_(net, config, task, seed=0), tmp_path / "a")
    manifest = json.loads((path / "manifest.json").read_text())
    text = json.dumps(manifest).replace('"criterion": "learned"', '"criterion": "max_softmax"')
    assert text != json.dumps(manifest)
    (path / "manifest.json").write_text(text)
    with pytest.raises((ArtifactError, ConfigError), match="needs 0 deciders, got 1"):
        nc.load(path)


def test_an_artifact_saved_before_deciders_existed_still_loads(tmp_path: Path) -> None:
    net = conv_chain()
    config = EarlyExitConfig(exits=("1",), steps=3, max_drop=100.0)
    dyn = nc.dynamic_(net, config, labelled_by(net))
    path = nc.save(dyn, tmp_path / "old")
    manifest = json.loads((path / "manifest.json").read_text())

    def drop(node: object) -> int:
        if isinstance(node, dict):
            return int(node.pop("deciders", None) is not None) + sum(map(drop, node.values()))
        return sum(map(drop, node)) if isinstance(node, list) else 0

    assert drop(manifest) == 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = nc.load(path)
    assert isinstance(loaded, EarlyExitModel) and len(loaded.deciders) == 0
    x = torch.randn(16, 1, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), dyn.eval()(x))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"criterion": "margin"}, "'margin' is not one of 'max_softmax', 'entropy', 'learned'"),
        ({"decider_hidden": -1}, "decider_hidden must be >= 0, got -1"),
        ({"decider_steps": 0}, "decider_steps must be >= 1, got 0"),
        ({"criterion": "learned", "thresholds": [1.5]}, r"thresholds\[0\] = 1.5 is outside"),
    ],
)
def test_bad_configs(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        EarlyExitConfig.from_dict({"exits": ["1"], **data})
    assert "\n" not in str(err.value)


def test_models_refuse_missing_or_misshapen_deciders() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="'learned' with 1 exits needs 1 deciders, got 0"):
        EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [], "learned", 3)
    with pytest.raises(ConfigError, match=r"deciders\[0\] does not map 8 inputs to 1 score"):
        EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [], "learned", 3, [nn.Linear(5, 1)])
