from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
import netchisel.dynamic.width as width_stage
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import classification_task
from netchisel.dynamic.confidence import soft_kl
from netchisel.dynamic.width import (
    WidthConfig,
    calibrate_gate,
    dynamic_width,
    width_accuracies,
)
from netchisel.dynamic.width_gate import make_gate
from netchisel.dynamic.width_model import WidthModel
from netchisel.dynamic.width_reorder import reorder_channels_
from netchisel.dynamic.width_slim import plan_width
from tests.dynamic._nets import labelled_by
from tests.dynamic.test_width_slim import bn_chain

FAST = {"widths": (0.25, 1.0), "steps": 40, "lr": 0.01, "gate_steps": 20, "calibrate_norms": 64}
# bn_chain at width 0.25 / 1.0: conv 48 / 192, conv 96 / 1536, linear 24 / 96 MACs.
MACS = [48 + 96 + 24, 192 + 1536 + 96]
GATE = 96 + 64  # Conv1d(1, 8, 3, stride 2) on 8 steps, Linear(32, 2)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_the_widths_lifts_the_narrow_one_and_meets_the_budget() -> None:
    net = bn_chain()
    task = labelled_by(net)  # the full width scores 100% on every split
    ctx = Context(task, quiet=True)
    model = dynamic_width(net, WidthConfig(max_drop=5.0, **FAST), ctx)  # type: ignore[arg-type]
    assert isinstance(model, WidthModel) and model.backbone is net
    r = ctx.records
    assert r["steps"] == 40 and r["gate_steps"] == 20 and r["reference_accuracy"] == 100.0
    assert r["macs_per_width"] == MACS and r["gate_macs"] == GATE and r["static_macs"] == MACS[1]
    narrow, full = r["width_accuracy"]
    assert full >= 95.0 and narrow >= 70.0, r["width_accuracy"]
    assert r["calibrated_accuracy"] >= 95.0
    f = r["width_fractions"]
    assert r["expected_macs"] == pytest.approx(GATE + f[0] * MACS[0] + f[1] * MACS[1])
    assert r["mac_reduction"] == pytest.approx(1 - r["expected_macs"] / MACS[1])
    # The model as it runs reproduces the calibration on its split.
    assert task.evaluate(model, "val")["accuracy"] == pytest.approx(r["calibrated_accuracy"])
    x = torch.cat([b[0] for b in task.loader("val")])
    with torch.no_grad():
        _, choice = model.routed(x)
    shares = (torch.bincount(choice, minlength=2).double() / len(x)).tolist()
    assert shares == pytest.approx(f)
    trade = r["dynamic"]
    assert trade["kind"] == "width" and trade["histogram"] == {"width 0.25": f[0], "width 1": f[1]}
    assert trade["static"] == {"value": 100.0, "mean_macs": float(MACS[1])}
    assert trade["chosen"] == {
        "value": r["calibrated_accuracy"],
        "mean_macs": r["expected_macs"],
    }
    alone = {p["setting"]: p for p in trade["sweep"] if p["setting"].endswith("alone")}
    assert alone["width 0.25 alone"]["mean_macs"] == MACS[0]
    assert alone["width 1 alone"]["value"] == r["width_accuracy"][1]
    budgets = [p["setting"] for p in trade["sweep"] if p["setting"].startswith("max_drop")]
    assert budgets[:3] == ["max_drop 0", "max_drop 0.25", "max_drop 0.5"]


def test_the_narrow_width_untrained_is_worse_than_trained() -> None:
    net = bn_chain()
    task = labelled_by(net)
    x = torch.zeros(1, 1, 8)
    untouched = bn_chain()
    plan = plan_width(untouched, [0.25, 1.0], x)
    reorder_channels_(untouched, plan)
    untrained = width_accuracies(WidthModel(untouched, plan, [0.25, 1.0], make_gate(x, 2)), task)
    model = dynamic_width(net, WidthConfig(max_drop=100.0, **FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    trained = width_accuracies(model, task)  # type: ignore[arg-type]
    assert untrained[1] == 100.0 and trained[1] >= 95.0
    assert trained[0] >= untrained[0] + 10.0, (untrained, trained)


def test_recalibration_sweeps_budgets_and_a_given_bias_is_used() -> None:
    net = bn_chain()
    task = labelled_by(net)
    model = dynamic_width(net, WidthConfig(max_drop=100.0, **FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    assert isinstance(model, WidthModel)
    anything = calibrate_gate(model, task, max_drop=100.0)
    assert anything.fractions == [1.0, 0.0] and anything.expected_macs == GATE + MACS[0]
    strict = calibrate_gate(model, task, max_drop=0.0)
    assert strict.accuracy == 100.0 and model.width_fractions == strict.fractions
    wide = calibrate_gate(model, task, bias=1e6)
    assert wide.fractions == [0.0, 1.0] and model.gate_bias == 1e6


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"widths": [0.5, 1.5]}, "widths[1] = 1.5 is outside (0, 1]"),
        ({"widths": [0.0, 1.0]}, "widths[0] = 0.0 is outside (0, 1]"),
        ({"widths": [1.0, 0.5]}, "widths [1.0, 0.5] must be ascending and distinct"),
        ({"widths": [0.25, 0.5]}, "widths [0.25, 0.5] must end with 1.0"),
        ({"widths": [1.0]}, "widths [1.0] gives no choice"),
        ({"cost_weight": -1}, "cost_weight must be >= 0, got -1.0"),
        ({"max_drop": 101}, "max_drop must be in [0, 100] points, got 101.0"),
        ({"gate_steps": 0}, "gate_steps must be >= 1, got 0"),
        ({"training": "random"}, "training"),
        ({"distill_from": "labels"}, "distill_from: 'labels' is not one of 'original', 'widest'"),
    ],
)
def test_bad_configs(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        WidthConfig.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_failures_leave_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    net = bn_chain()
    task = labelled_by(net)
    before = _state(net)

    def midway(*args: object) -> None:
        raise RuntimeError("midway")

    # A failure after the reorder and the training of the widths: all of it is undone.
    monkeypatch.setattr(width_stage, "train_gate", midway)
    with pytest.raises(RuntimeError, match="midway"):
        dynamic_width(net, WidthConfig(**FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    assert _same(before, _state(net))
    monkeypatch.undo()
    model = dynamic_width(net, WidthConfig(max_drop=100.0, **FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    assert isinstance(model, WidthModel)
    with pytest.raises(ConfigError) as err:  # 101% cannot be met, whatever the gate does
        calibrate_gate(model, task, max_drop=0.5, reference=101.0)
    message = str(err.value)
    assert message.startswith("dynamic.width: no gate setting meets max_drop=0.5: the full width")
    assert "against 101.00% for the static model; raise max_drop" in message
    assert "\n" not in message
    odd = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(ModelError) as model_err:
        dynamic_width(odd, WidthConfig(**FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    assert str(model_err.value).startswith(
        "dynamic.width: at width 0.25 2 (LayerNorm) fails on the cut channels"
    )


def test_the_result_saves_bit_exactly_and_is_not_slimmed_twice(tmp_path: Path) -> None:
    net = bn_chain()
    task = labelled_by(net)
    model = dynamic_width(net, WidthConfig(max_drop=2.0, **FAST), Context(task, quiet=True))  # type: ignore[arg-type]
    loaded = nc.load(nc.save(model, tmp_path / "width"))
    x = torch.cat([b[0] for b in task.loader("test")])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded(x[:1]), model(x[:1]))
    assert loaded.gate_bias == model.gate_bias  # type: ignore[attr-defined]
    assert loaded.width_fractions == model.width_fractions  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="already has widths"):
        dynamic_width(model, WidthConfig(**FAST), Context(task, quiet=True))  # type: ignore[arg-type]


def test_a_recipe_names_the_stage() -> None:
    from netchisel.pipeline.recipe import parse_recipe
    from netchisel.stages import get_stage

    assert get_stage("dynamic.width").config_class is WidthConfig
    recipe = parse_recipe(
        {
            "model": "cnn",
            "task": "digits32",
            "stages": [{"dynamic.width": {"widths": [0.5, 1.0], "steps": 200, "max_drop": 1}}],
        }
    )
    name, config = recipe.stages[0]
    assert name == "dynamic.width" and isinstance(config, WidthConfig)
    assert (config.widths, config.steps, config.max_drop) == ((0.5, 1.0), 200, 1.0)


def test_sandwich_runs_the_widest_the_narrowest_and_random_others() -> None:
    from netchisel.dynamic.width import _order

    sandwich = WidthConfig(widths=(0.25, 0.5, 0.75, 1.0), training="sandwich")
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        order = _order(sandwich, 4)
        assert order[:2] == [3, 0] and len(order) == 3 and order[2] in (1, 2)
        seen.add(order[2])
    assert seen == {1, 2}  # both middle widths get their turn
    two = WidthConfig(widths=(0.25, 0.5, 0.75, 1.0), training="sandwich", sandwich_random=2)
    assert sorted(_order(two, 4)) == [0, 1, 2, 3]
    assert _order(WidthConfig(), 4) == [3, 2, 1, 0]  # "all": widest first, it teaches


def test_sandwich_without_distillation_trains() -> None:
    net = bn_chain()
    task = labelled_by(net)
    config = WidthConfig(
        max_drop=100.0,
        training="sandwich",
        distill=False,
        **{**FAST, "widths": (0.25, 0.5, 1.0)},  # type: ignore[arg-type]
    )
    ctx = Context(task, quiet=True)
    model = dynamic_width(net, config, ctx)
    assert isinstance(model, WidthModel) and ctx.records["steps"] == 40
    assert ctx.records["macs_per_width"][0] == MACS[0] and ctx.records["width_accuracy"][2] >= 95.0


def test_the_original_teacher_keeps_the_full_width_near_the_model_handed_in() -> None:
    # Labels drawn at random, unrelated to the model: the widest learning them moves the full
    # width away from the model handed in; with `distill_from: original` it learns that model's
    # soft outputs instead, and the labels are not used.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(192, 1, 8, generator=g)
    y = torch.randint(0, 3, (192,), generator=g)
    splits = {
        name: torch.utils.data.TensorDataset(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64])
        for i, name in enumerate(("train", "val", "test"))
    }
    task = classification_task(splits, batch_size=32)
    drift = {}
    for teacher in ("widest", "original"):
        net = bn_chain()
        before = copy.deepcopy(net).eval()
        config = WidthConfig(max_drop=100.0, distill_from=teacher, **FAST)  # type: ignore[arg-type]
        model = dynamic_width(net, config, Context(task, quiet=True))
        assert isinstance(model, WidthModel)
        with torch.no_grad():
            drift[teacher] = float(soft_kl(model.eval().run_width(x, 1), before(x)))
    assert drift["original"] < 0.1 * drift["widest"], drift
