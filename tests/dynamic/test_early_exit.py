from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.dynamic import EarlyExitConfig, EarlyExitModel, dynamic_
from netchisel.dynamic.early_exit import early_exit
from netchisel.stages import get_stage
from tests.dynamic._nets import conv_chain, labelled_by

FAST = {"steps": 30, "lr": 0.02}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_keeps_the_backbone_and_meets_the_budget() -> None:
    net = conv_chain()
    task = labelled_by(net)  # the backbone scores 100% on every split
    before = _state(net)
    ctx = Context(task, quiet=True)
    config = EarlyExitConfig(exits=("1", "3"), max_drop=2.0, **FAST)  # type: ignore[arg-type]
    model = early_exit(net, config, ctx)
    assert isinstance(model, EarlyExitModel) and model.backbone is net
    assert _same(before, _state(net))  # frozen: the samples that stay get the original outputs
    r = ctx.records
    assert r["steps"] == 30 and r["reference_accuracy"] == 100.0
    # The first head learns the backbone's labels perfectly on val: every sample may leave
    # there, so the second exit is switched off ("never"), its head does not run, and it is
    # reported as never firing.
    assert r["calibrated_accuracy"] == 100.0
    assert r["exit_fractions"] == [1.0, 0.0, 0.0] and r["never_fire"] == ["3"]
    assert r["thresholds"][1] == 1.0
    assert r["macs_per_exit"] == [108, 492, 588] and r["static_macs"] == 576
    assert r["expected_macs"] == 108.0 and r["mac_reduction"] == 1 - 108 / 576
    # What the report draws. The agreement rule on 64 validation samples: below 2 points not
    # even zero disagreements bound the drop (0.995**64 = 0.73 > 0.5), so budgets 0-1 take no
    # exit (576 MACs); from 2 points on (0.98**64 = 0.27) every sample leaves at 108 MACs.
    d = r["dynamic"]
    assert d["metric"] == "accuracy (%)"
    assert d["static"] == {"value": 100.0, "mean_macs": 576.0}
    assert d["chosen"] == {"value": 100.0, "mean_macs": 108.0}
    assert [p["setting"] for p in d["sweep"]][:3] == ["max_drop 0", "max_drop 0.25", "max_drop 0.5"]
    assert [p["mean_macs"] for p in d["sweep"]] == [576.0] * 4 + [108.0] * 3
    assert {p["value"] for p in d["sweep"]} == {100.0}
    assert d["histogram"] == {"exit after 1": 1.0, "exit after 3": 0.0, "end": 0.0}
    # The model as it runs reproduces the calibration on the split it was calibrated on.
    assert task.evaluate(model, "val")["accuracy"] == pytest.approx(r["calibrated_accuracy"])
    x = torch.cat([b[0] for b in task.loader("val")])
    with torch.no_grad():
        _, taken = model.exiting(x)
    counts = torch.bincount(taken, minlength=3).double() / len(x)
    assert counts.tolist() == pytest.approx(r["exit_fractions"])


def test_joint_training_trains_everything_through_fit() -> None:
    net = conv_chain()
    task = labelled_by(net)
    before = _state(net)
    config = EarlyExitConfig(
        exits=("1",),
        training="joint",
        weights=(0.5,),
        max_drop=100.0,
        **FAST,  # type: ignore[arg-type]
    )
    model = dynamic_(net, config, task)
    assert not _same(before, _state(net))
    assert isinstance(model, EarlyExitModel) and len(model.heads) == 1


def test_given_thresholds_are_used_and_never_firing_exits_reported() -> None:
    net = conv_chain()
    task = labelled_by(net)
    ctx = Context(task, quiet=True)
    config = EarlyExitConfig(exits=("1", "3"), thresholds=(1.0, 0.0), **FAST)  # type: ignore[arg-type]
    model = early_exit(net, config, ctx)
    assert model.thresholds == [1.0, 0.0]  # type: ignore[attr-defined]
    assert ctx.records["exit_fractions"] == [0.0, 1.0, 0.0]
    assert ctx.records["never_fire"] == ["1"]
    # The first exit's head does not run at all: 96 + 384 MACs and the second head's 12.
    assert ctx.records["macs_per_exit"] == [96, 492, 588]
    assert ctx.records["expected_macs"] == 492.0


def test_an_unmet_budget_is_one_line_and_leaves_the_model_as_it_was() -> None:
    net = conv_chain()
    task = labelled_by(net)
    before = _state(net)
    # Joint training with the final head's loss switched off and a large step wrecks the final
    # head: even with no exit taken, the model is far below the original's 100%.
    config = EarlyExitConfig(
        exits=("1",), training="joint", final_weight=0.0, steps=30, lr=0.5, max_drop=0.0
    )
    with pytest.raises(ConfigError) as err:
        dynamic_(net, config, task)
    message = str(err.value)
    assert message.startswith("dynamic.early_exit: no thresholds meet max_drop=0.0: with no exit")
    assert "against 100.00% without exits" in message and "\n" not in message
    assert _same(before, _state(net))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"exits": ["1"], "thresholds": [1.5]}, "thresholds[0] = 1.5 is outside [0, 1]"),
        ({"exits": ["1"], "thresholds": [0.5, 0.5]}, "2 thresholds for 1 exits"),
        ({"exits": ["1"], "weights": [1, 1]}, "2 weights for 1 exits"),
        ({"exits": ["1"], "max_drop": -1}, "max_drop must be in [0, 100] points, got -1.0"),
        ({"exits": ["1"], "pool": 0}, "pool must be >= 1"),
        ({"exits": ["1"], "head_hidden": -1}, "head_hidden must be >= 0, got -1"),
        ({"exits": ["1"], "criterion": "margin"}, "criterion"),
    ],
)
def test_bad_configs(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        EarlyExitConfig.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_exits_and_thresholds_leave_the_model_unchanged() -> None:
    net = conv_chain()
    task = labelled_by(net)
    before = _state(net)
    for config, message in [
        (EarlyExitConfig(), "dynamic.early_exit: exits is empty: name the modules to exit after"),
        (EarlyExitConfig(exits=("conv9",)), "exit after 'conv9': the model has no such module"),
        (
            EarlyExitConfig(exits=("1",), criterion="entropy", thresholds=(1.2,)),
            "thresholds[0] = 1.2 is outside [0, 1.099] for entropy",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            dynamic_(net, config, task)
        assert message in str(err.value), str(err.value)
        assert _same(before, _state(net))
    five_d = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 2, 2, 2)), nn.Flatten(), net[5])
    five_d[3] = nn.Linear(8, 3)
    with pytest.raises(ConfigError) as err:
        dynamic_(five_d, EarlyExitConfig(exits=("1",)), task)
    assert "the output of '1' has shape (2, 1, 2, 2, 2), which cannot feed an exit head" in str(
        err.value
    )


def test_the_stage_is_in_the_table_and_the_result_saves(tmp_path: Path) -> None:
    assert get_stage("dynamic.early_exit").config_class is EarlyExitConfig
    net = conv_chain()
    task = labelled_by(net)
    model = nc.dynamic_(net, EarlyExitConfig(exits=("1",), max_drop=2.0, **FAST), task)  # type: ignore[arg-type]
    loaded = nc.load(nc.save(model, tmp_path / "ee"))
    x = torch.cat([b[0] for b in task.loader("test")])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.exit_fractions == model.exit_fractions  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="already has exits"):
        dynamic_(model, EarlyExitConfig(exits=("backbone.1",)), task)
    with pytest.raises(ConfigError, match="prune_ got EarlyExitConfig, a dynamic stage: call"):
        nc.prune_(net, EarlyExitConfig(exits=("1",)))  # type: ignore[arg-type]


def test_a_recipe_names_the_stage() -> None:
    from netchisel.pipeline.recipe import parse_recipe

    recipe = parse_recipe(
        {
            "model": "mnist1d_cnn",
            "task": "mnist1d",
            "stages": [
                {
                    "dynamic.early_exit": {
                        "exits": ["features.relu1", "features.relu2"],
                        "pool": 4,
                        "max_drop": 0.5,
                        "criterion": "entropy",
                    }
                }
            ],
        }
    )
    name, config = recipe.stages[0]
    assert name == "dynamic.early_exit" and isinstance(config, EarlyExitConfig)
    assert config.exits == ("features.relu1", "features.relu2")
    assert (config.pool, config.max_drop, config.criterion) == (4, 0.5, "entropy")


def test_recalibrating_sweeps_budgets_without_retraining() -> None:
    from netchisel.dynamic import calibrate_exits

    net = conv_chain()
    task = labelled_by(net)
    model = dynamic_(net, EarlyExitConfig(exits=("1", "3"), max_drop=2.0, **FAST), task)  # type: ignore[arg-type]
    assert isinstance(model, EarlyExitModel)
    heads = _state(model.heads)
    anything = calibrate_exits(model, task, max_drop=100.0)
    # Any accuracy will do: everything leaves at the cheapest exit.
    assert anything.outcome.fractions == [1.0, 0.0, 0.0]
    assert anything.outcome.expected_macs == 108.0 and anything.static_macs == 576
    assert model.exit_fractions == [1.0, 0.0, 0.0]
    strict = calibrate_exits(model, task, max_drop=0.0)
    assert strict.outcome.accuracy == 100.0
    assert strict.outcome.expected_macs >= anything.outcome.expected_macs
    assert task.evaluate(model, "val")["accuracy"] == 100.0
    assert _same(heads, _state(model.heads))


def test_the_sweep_meets_each_budget_and_costs_no_more_than_the_static_model() -> None:
    net = conv_chain()
    task = labelled_by(net)
    ctx = Context(task, quiet=True)
    # Two steps of training: the heads are poor, so the budgets give different thresholds.
    early_exit(net, EarlyExitConfig(exits=("1", "3"), steps=2, lr=0.02), ctx)
    d = ctx.records["dynamic"]
    assert len(d["sweep"]) == 7
    for point in d["sweep"]:
        budget = float(point["setting"].split()[1])
        assert point["value"] >= d["static"]["value"] - budget
        assert point["mean_macs"] <= d["static"]["mean_macs"]
    assert sum(d["histogram"].values()) == pytest.approx(1.0)


def test_a_backbone_that_flattens_in_its_forward_exits_saves_and_loads(tmp_path: Path) -> None:
    # torchvision's classifiers call torch.flatten between their pooling and classifier in
    # forward: every exit in them was refused before the FLATTEN step.
    from tests.dynamic.test_chain import Flattening

    net = Flattening()
    task = labelled_by(net)
    config = EarlyExitConfig(exits=("conv",), thresholds=(0.0,), **FAST)  # type: ignore[arg-type]
    model = nc.dynamic_(net, config, task)
    assert isinstance(model, EarlyExitModel)
    assert model.steps == ["conv", "pool", "@flatten", "fc"]
    x = torch.cat([b[0] for b in task.loader("test")])
    model.set_thresholds([1.0])  # never exits: exactly the backbone
    with torch.no_grad():
        assert torch.equal(model.eval()(x), net(x))
    p = nc.profile(model, x[:1], latency=False)
    assert p.dynamic is not None
    # conv 2*1*3*8 = 48, pool and flatten 0, fc 8*3 = 24; the head is off (threshold 1)
    assert p.dynamic["static_macs"] == 72
    assert [e["macs"] for e in p.dynamic["exits"]] == [48, 72]
    model.set_thresholds([0.0])
    loaded = nc.load(nc.save(model, tmp_path / "ee"), trust=[Flattening])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
