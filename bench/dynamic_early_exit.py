"""Early exit (issue 19, benchmark 1): mean MACs saved within 0.5 points of accuracy, and the
measured latency of a model that really exits against the static model.

Run: .venv/bin/python bench/dynamic_early_exit.py  ->  bench/results/dynamic_early_exit.json
(or, in separate processes: `--models M --part FILE` per model, `--overhead --part FILE`, then
`--merge FILE...`, which writes the JSON from the parts).

Models: the zoo's trained `mnist1d_cnn` on MNIST-1D (3,500 / 500 / 1,000 sequences; the
paper's three-layer CNN, whose only exit points are after its first conv layer, 10.6% of its
MACs, and after its second, 66.5%), the zoo's trained `mnist1d_deep_cnn` on the same data (six
conv layers in three stages; exits after the layers at 10.9%, 40.5% and 60.3% of its MACs) and
the zoo's trained ResNet-20 on digits32 (1,257 / 270 / 270 images). For each seed (which sets the
heads' initial weights and the data order) the `dynamic.early_exit` stage attaches heads
after the named modules and trains them: by distillation from the final head with the
backbone frozen (so a sample that does not exit gets exactly the original output), or, for
`mnist1d_cnn_joint`, jointly with the backbone (weighted cross-entropies, the issue's first
training mode). Then one max-softmax threshold per exit (for `mnist1d_cnn_learned`: a threshold
on a learned decider's score, see below) is calibrated on the validation split
(`calibrate_exits`): the least mean MACs within `max_drop` = 0.5 points of the static model's
validation accuracy, judged by the stage's default "agreement" rule (the Clopper-Pearson
bound, at confidence 0.5, on the rate of early answers that differ from the final head's;
`netchisel.dynamic.thresholds`). Everything is then measured on the test split, which no
choice saw:

- `mac_reduction`: 1 - (mean MACs per test sample) / (static MACs per sample), the mean MACs
  being the exact MACs of each exit (count_flops) weighted by where the test samples left;
  `counted_macs_per_sample` re-counts them with count_flops on the real dynamic forward over
  the whole test split (the two agree exactly: nothing is simulated);
- the test accuracy drop against the static model (points);
- `accuracy`: the same heads calibrated by the point-estimate "accuracy" rule (validation
  accuracy >= static - 0.5), measured on test: what the calibration did before;
- what limits the result, on test with the labels: `threshold_oracle` (the best thresholds
  chosen on test itself, accuracy rule at 0.5 points against the static test accuracy) and
  `oracle` (the best per-sample exit policy with these heads at that budget: each sample at
  its cheapest right exit, then the largest savings spent within the budget; every choice of
  live heads tried; `agree_mac_reduction`: each sample at the first exit agreeing with the
  final head);
- latency, A/B alternating in one run (`netchisel.measure.compare_latency`, one thread), of
  the saved-and-loaded artifact against the static model: batch 1 (one call = the first 100
  test samples one at a time, so the mix of exits is the test split's) and batch 64 with
  regrouping (one call = the first 256 test samples in 4 batches). `speedup` = static time /
  dynamic time;
- `overhead_mnist1d_cnn`: where the time goes on the MNIST-1D CNN (see `overhead`);
- `layer_times_mnist1d_deep_cnn`: each conv-bn-relu layer of the deeper CNN and each of its
  exit heads timed alone at batch 1, 16 and 64 (see `layer_times`): why its MACs do not turn
  into time;
- `mnist1d_cnn_learned`: the same distilled heads (same seeds) with `criterion: learned`: a
  logistic-regression decider per exit (`netchisel.dynamic.deciders`, 22 MACs, counted in
  each exit's cost) trained on the train split to predict "this exit's answer is the final
  head's", its score calibrated by the same rule. Beside it: `max_softmax_same_heads` (these
  heads calibrated on the max softmax instead, deciders neither run nor paid),
  `threshold_oracle_own` (the threshold oracle on the learned score) and `ranking_test` (per
  exit, the AUC with which each score ranks the test samples that agree with the final head
  above those that do not). `--update` keeps the other models of the JSON already written.

Anchors: BranchyNet (Teerapittayanon et al. 2016) 2-6x on CPU at comparable accuracy;
Shallow-Deep Networks (Kaya et al. 2019) cut the average inference cost by > 50%; CALM
(Schuster et al. 2022) states early exit's risk as consistency with the full model. Target
(issue 19): `mac_reduction` >= 40% at <= 0.5 points of drop.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ab_entry,
    load_result,
    saturated_note,
    shipped,
    split_tensors,
    spread,
    write_result,
)
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.dynamic import EarlyExitConfig, EarlyExitModel, calibrate_exits
from netchisel.dynamic.chain import plan_chain
from netchisel.dynamic.confidence import score
from netchisel.dynamic.costs import ExitCosts, exit_macs
from netchisel.dynamic.early_exit import early_exit
from netchisel.dynamic.heads import make_head
from netchisel.dynamic.thresholds import Budget, calibrate
from netchisel.measure import compare_latency, count_flops
from netchisel.zoo import data, train

TARGET = 0.40
MAX_DROP = 0.5
RULE = "agreement"  # the stage's default calibration rule (netchisel.dynamic.thresholds)
# Validation budgets of the sweep (points): the same heads recalibrated, measured on test.
BUDGETS = (0.0, 0.25, 0.5, 1.0, 2.0)
MNIST1D_DISTILLED = {
    "exits": ("features.relu1", "features.relu2"),
    "pool": 4,
    "steps": 3000,
    "lr": 3e-3,
    "temperature": 2.0,
}
SETUPS: dict[str, dict[str, Any]] = {
    "mnist1d_cnn": {"zoo": "mnist1d_cnn", "task": "mnist1d", "config": MNIST1D_DISTILLED},
    # The same heads (same seeds, same distillation) with a learned exit decision: a decider
    # per exit trained on the train split to predict agreement with the final head
    # (netchisel.dynamic.deciders), its score calibrated like the max softmax.
    "mnist1d_cnn_learned": {
        "zoo": "mnist1d_cnn",
        "task": "mnist1d",
        "config": {
            **MNIST1D_DISTILLED,
            "criterion": "learned",
            "decider_hidden": 0,  # a logistic regression: 22 MACs per exit (16 hidden: 368)
            "decider_steps": 1000,
        },
    },
    # The same distillation with two-layer heads (32 hidden units): more accurate exits at a
    # higher cost per head, to see whether the heads' capacity is what limits MNIST-1D.
    "mnist1d_cnn_mlp_head": {
        "zoo": "mnist1d_cnn",
        "task": "mnist1d",
        "config": {**MNIST1D_DISTILLED, "head_hidden": 32},
    },
    "mnist1d_cnn_joint": {
        "zoo": "mnist1d_cnn",
        "task": "mnist1d",
        "config": {
            "exits": ("features.relu1", "features.relu2"),
            "pool": 4,
            "training": "joint",
            "weights": (0.5, 0.5),
            "steps": 3000,
            "lr": 1e-3,
        },
    },
    # The deeper MNIST-1D CNN (zoo `mnist1d_deep_cnn`): the same task and distillation, exits
    # at the end of its first two stages and after the first layer of the third.
    "mnist1d_deep_cnn": {
        "zoo": "mnist1d_deep_cnn",
        "task": "mnist1d",
        "config": {
            **MNIST1D_DISTILLED,
            "exits": ("features.relu2", "features.relu4", "features.relu5"),
        },
    },
    "resnet20_digits32": {
        "zoo": "resnet",
        "task": "digits32",
        "config": {
            "exits": ("layer1", "layer2"),
            "pool": 4,
            "steps": 800,
            "lr": 3e-3,
            "temperature": 2.0,
        },
    },
}


def _exits_on(model: Any, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([model.exiting(x[i : i + 64])[1] for i in range(0, len(x), 64)])


def _fractions(taken: Tensor, exits: int) -> list[float]:
    return (torch.bincount(taken, minlength=exits + 1).double() / len(taken)).tolist()


def _latency(static: nn.Module, dynamic: nn.Module, x: Tensor, rounds: int) -> dict[str, Any]:
    singles = [x[i : i + 1] for i in range(100)]
    batches = [x[i : i + 64] for i in range(0, 256, 64)]
    out: dict[str, Any] = {}
    for label, inputs in (("batch1", singles), ("batch64", batches)):

        def run(model: nn.Module, inputs: list[Tensor] = inputs) -> None:
            with torch.no_grad():
                for t in inputs:
                    model(t)

        cmp = compare_latency(
            lambda: run(static),
            lambda: run(dynamic),
            batch_size=len(inputs[0]),
            rounds=rounds,
            calls_per_round=2,
            labels=("static", "dynamic"),
        )
        samples = sum(len(t) for t in inputs)
        out[label] = {
            **ab_entry(cmp),
            "samples_per_call": samples,
            "static_us_per_sample": 1000 * cmp.a.median_ms / samples,
            "dynamic_us_per_sample": 1000 * cmp.b.median_ms / samples,
        }
    return out


def _logits(model: EarlyExitModel, x: Tensor) -> list[Tensor]:
    """Every exit's logits and the final ones on `x` (everything runs)."""
    model.eval()
    with torch.no_grad():
        parts = [model.all_outputs(x[i : i + 256]) for i in range(0, len(x), 256)]
    return [torch.cat(p) for p in zip(*parts, strict=True)]


def oracle(
    logits: list[Tensor], labels: Tensor, costs: ExitCosts, reference: float, max_drop: float
) -> dict[str, Any]:
    """The best any per-sample exit policy can do with these heads on this split, knowing the
    labels: each sample leaves at the cheapest exit that is right (a sample that no exit gets
    right, at the first exit), then the samples with the largest savings among the right
    ones are sent to the cheapest exit while the accuracy stays >= `reference` - `max_drop`
    (giving up one right answer is worth the same anywhere, so the largest savings first
    is optimal). Every choice of live heads is tried (a head that never fires costs
    nothing). Also: `agree` = each sample at the first exit whose answer is the final
    head's (no change of answer at all, no labels)."""
    exits, n = len(logits) - 1, len(labels)
    correct = torch.stack([z.argmax(-1) == labels for z in logits])
    floor = reference - max_drop
    best = (float(costs.static), [False] * exits)
    for mask in range(1 << exits):
        live = [bool(mask >> k & 1) for k in range(exits)]
        per = torch.tensor(costs.per_exit(live), dtype=torch.float64)
        options = [k for k in range(exits) if live[k]] + [exits]
        cheapest = float(per[options[0]])
        right = correct[options].any(0)
        cost = torch.full((n,), cheapest, dtype=torch.float64)
        for k in reversed(options):  # the earliest right option wins
            cost[correct[k]] = per[k]
        spare = int(right.sum()) - math.ceil(floor * n / 100.0 - 1e-9)
        saving = torch.where(right, cost - cheapest, torch.zeros_like(cost))
        if spare > 0:
            cost[saving.argsort(descending=True)[:spare]] = cheapest
        if float(cost.mean()) < best[0]:
            best = (float(cost.mean()), live)
    finals = logits[-1].argmax(-1)
    per = costs.per_exit()
    agree = torch.full((n,), float(per[-1]), dtype=torch.float64)
    for k in reversed(range(exits)):
        agree[logits[k].argmax(-1) == finals] = per[k]
    return {
        "mac_reduction": 1.0 - best[0] / costs.static,
        "live_heads": best[1],
        "agree_mac_reduction": 1.0 - float(agree.mean()) / costs.static,
    }


def threshold_oracle(
    logits: list[Tensor],
    labels: Tensor,
    costs: ExitCosts,
    reference: float,
    max_drop: float,
    model: EarlyExitModel | None = None,
) -> float | None:
    """The MAC reduction of the best thresholds chosen on this split itself with its labels
    (the point-estimate "accuracy" rule): what these heads and this criterion (max softmax,
    or `model`'s own with its deciders) can reach when the calibration has nothing to guess."""
    criterion = "max_softmax" if model is None else model.criterion
    deciders = None if model is None else list(model.deciders) or None
    budget = Budget(reference, max_drop, "accuracy")
    found = calibrate(logits, labels, criterion, costs, budget, deciders)
    return None if found is None else 1.0 - found.expected_macs / costs.static


def _auc(scores: Tensor, positive: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(above + 0.5 * ties)


def ranking(model: EarlyExitModel, logits: list[Tensor]) -> list[dict[str, float]]:
    """Per exit on this split: how well the max softmax, and the model's own criterion,
    rank the samples whose answer is the final head's above the others (AUC), and the
    share that agrees."""
    final = logits[-1].argmax(-1)
    out = []
    for k, z in enumerate(logits[:-1]):
        agree = z.argmax(-1) == final
        row = {
            "agree_share": float(agree.double().mean()),
            "auc_max_softmax": _auc(score(z, "max_softmax"), agree),
        }
        if model.criterion != "max_softmax":
            with torch.no_grad():
                own = score(z, model.criterion, model.decider(k))
            row[f"auc_{model.criterion}"] = _auc(own, agree)
        out.append(row)
    return out


def _on_test(
    model: EarlyExitModel, x: Tensor, y: Tensor, costs: list[int], static: float
) -> dict[str, Any]:
    """Where the test samples leave with the model's thresholds, its MACs and accuracy."""
    taken = _exits_on(model, x)
    fractions = _fractions(taken, len(model.heads))
    macs = sum(c * f for c, f in zip(costs, fractions, strict=True))
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 64]).argmax(-1) for i in range(0, len(x), 64)])
    accuracy = 100.0 * float((pred == y).double().mean())
    return {
        "test_exit_fractions": fractions,
        "mac_reduction": 1.0 - macs / static,
        "test_accuracy": accuracy,
    }


def overhead(rounds: int) -> dict[str, Any]:
    """Where an early-exit model's time goes on the MNIST-1D CNN, against the static model
    (A/B, one thread): the backbone run step by step with every exit off (no head runs);
    one exit's head and decision on every sample, none leaving (threshold 0.999999 on
    untrained heads, whose top probability stays far below it); every sample leaving at the
    first exit (threshold 0: the floor). The heads' weights do not change the time."""
    task = data.task("mnist1d")
    static = train.pretrained("mnist1d_cnn").eval()
    x, _ = split_tensors(task)
    exits = ["features.relu1", "features.relu2"]
    chain = plan_chain(static, exits, (x[:2],))
    heads = [make_head(f, 10, 4, n) for f, n in zip(chain.features, exits, strict=True)]
    arms = {
        "steps_only": [1.0, 1.0],
        "one_head_no_exit": [0.999999, 1.0],
        "all_exit_first": [0.0, 1.0],
    }
    out: dict[str, Any] = {}
    for arm, thresholds in arms.items():
        model = EarlyExitModel(static, heads, chain.steps, chain.exit_after, thresholds)
        with torch.no_grad():
            taken = _exits_on(model.eval(), x)
        out[arm] = {
            "thresholds": thresholds,
            "exit_fractions": _fractions(taken, len(exits)),
            **_latency(static, model, x, rounds),
        }
    return out


def _times_us(module: nn.Module, x: Tensor, batches: tuple[int, ...], calls: int) -> list[float]:
    """Median microseconds of `module` on the first b rows of `x`, for each b in `batches`."""
    out = []
    for b in batches:
        part, times = x[:b], []
        for _ in range(calls):
            t0 = time.perf_counter()
            module(part)
            times.append(time.perf_counter() - t0)
        out.append(round(1e6 * sorted(times)[calls // 2], 1))
    return out


def layer_times(calls: int = 200, batches: tuple[int, ...] = (1, 16, 64)) -> dict[str, Any]:
    """Median microseconds (one thread, `calls` calls) of each conv-bn-relu layer of the zoo
    `mnist1d_deep_cnn` alone, of an (untrained) exit head after the layers the benchmark
    exits at, and of the whole static forward, at each batch size in `batches`."""
    static = train.pretrained("mnist1d_deep_cnn").eval()
    children = list(static.features.children())  # type: ignore[union-attr]
    layers = [nn.Sequential(*children[i : i + 3]) for i in range(0, len(children), 3)]
    exits = SETUPS["mnist1d_deep_cnn"]["config"]["exits"]
    out: dict[str, Any] = {"batch_sizes": list(batches), "calls": calls, "layers": {}, "heads": {}}
    with torch.no_grad():
        x = torch.randn(max(batches), 1, 40)
        out["static"] = _times_us(static, x, batches, calls)
        for k, layer in enumerate(layers, start=1):
            out["layers"][f"layer{k}"] = _times_us(layer, x, batches, calls)
            x = layer(x)
            where = f"features.relu{k}"
            if where in exits:
                head = make_head(x, 10, MNIST1D_DISTILLED["pool"], where).eval()
                out["heads"][where] = _times_us(head, x, batches, calls)
    return out


def run_seed(name: str, seed: int, rounds: int) -> dict[str, Any]:
    setup = SETUPS[name]
    task = data.task(setup["task"])
    static = train.pretrained(setup["zoo"]).eval()
    static_test = task.evaluate(static, "test")["accuracy"]
    static_val = task.evaluate(static, "val")["accuracy"]
    backbone = train.pretrained(setup["zoo"])
    ctx = Context(task, quiet=True, seed=seed)
    # The stage itself is asked for no budget (100 points): calibration against the static
    # model follows, so that a final head moved by joint training is reported, not raised.
    config = EarlyExitConfig(**{**setup["config"], "max_drop": 100.0})
    t0 = time.perf_counter()
    model = early_exit(backbone, config, ctx)
    seconds = time.perf_counter() - t0
    x, y = split_tensors(task)
    xv, yv = split_tensors(task, "val")
    macs = exit_macs(model, x[:1])
    test_logits, val_logits = _logits(model, x), _logits(model, xv)
    final_test = 100.0 * float((test_logits[-1].argmax(-1) == y).double().mean())
    final_val = 100.0 * float((val_logits[-1].argmax(-1) == yv).double().mean())
    row: dict[str, Any] = {
        "seed": seed,
        "stage_seconds": round(seconds, 1),
        "static_test_accuracy": static_test,
        "static_val_accuracy": static_val,
        "final_head_test_accuracy": final_test,
        "final_head_val_accuracy": final_val,
        "exit_head_test_accuracy": [
            100.0 * float((z.argmax(-1) == y).double().mean()) for z in test_logits[:-1]
        ],
        "oracle": oracle(test_logits, y, macs, static_test, MAX_DROP),
        "threshold_oracle": threshold_oracle(test_logits, y, macs, static_test, MAX_DROP),
        "ranking_test": ranking(model, test_logits),
    }
    if model.criterion != "max_softmax":
        row["threshold_oracle_own"] = threshold_oracle(
            test_logits, y, macs, static_test, MAX_DROP, model
        )
    # The point-estimate rule first (what calibration did before the agreement rule), then
    # the default, whose thresholds the model keeps.
    for rule in ("accuracy", RULE):
        try:
            cal = calibrate_exits(model, task, max_drop=MAX_DROP, reference=static_val, rule=rule)
        except ConfigError as err:
            row[rule] = {"error": str(err)}
            continue
        measured = _on_test(model, x, y, cal.costs, macs.static)
        row[rule] = {
            "thresholds": cal.outcome.thresholds,
            "val_exit_fractions": cal.outcome.fractions,
            "val_accuracy": cal.outcome.accuracy,
            "val_mac_reduction": 1.0 - cal.outcome.expected_macs / cal.static_macs,
            **measured,
            "test_drop": static_test - measured["test_accuracy"],
            "macs_per_exit": cal.costs,
        }
    if model.criterion != "max_softmax":  # the same heads, the max softmax instead
        own, kept = model.criterion, (list(model.thresholds), list(model.exit_fractions))
        deciders, model.deciders = model.deciders, nn.ModuleList()  # not paid for either
        model.criterion = "max_softmax"
        try:
            cal = calibrate_exits(model, task, max_drop=MAX_DROP, reference=static_val, rule=RULE)
            measured = _on_test(model, x, y, cal.costs, macs.static)
            row["max_softmax_same_heads"] = {
                **measured,
                "test_drop": static_test - measured["test_accuracy"],
            }
        except ConfigError as err:
            row["max_softmax_same_heads"] = {"error": str(err)}
        finally:
            model.criterion, model.deciders = own, deciders
            model.set_thresholds(kept[0])
            model.exit_fractions = kept[1]
    chosen = row[RULE]
    row["meets_budget_on_val"] = "error" not in chosen
    if "error" in chosen:
        print(f"{name} seed {seed}: {chosen['error']}", flush=True)
        return {**row, "static_macs": macs.static}
    loaded, artifact_bytes = shipped(model, (x[:64],))
    fractions = _fractions(_exits_on(loaded, x), len(config.exits))
    costs = chosen["macs_per_exit"]
    test_macs = sum(c * f for c, f in zip(costs, fractions, strict=True))
    counted = sum(count_flops(loaded, x[i : i + 64]).macs for i in range(0, len(x), 64)) / len(x)
    dynamic_test = task.evaluate(loaded, "test")["accuracy"]
    thresholds, val_fractions = list(model.thresholds), list(model.exit_fractions)
    sweep = []
    for budget in BUDGETS:
        try:
            cal = calibrate_exits(model, task, max_drop=budget, reference=static_val, rule=RULE)
        except ConfigError:
            continue
        measured = _on_test(model, x, y, cal.costs, macs.static)
        sweep.append({"max_drop": budget, "val_accuracy": cal.outcome.accuracy, **measured})
    model.set_thresholds(thresholds)
    model.exit_fractions = val_fractions
    row.update(
        {
            "thresholds": thresholds,
            "val_exit_fractions": val_fractions,
            "val_mac_reduction": chosen["val_mac_reduction"],
            "never_fire": [
                n for n, f in zip(config.exits, val_fractions, strict=False) if f == 0.0
            ],
            "test_exit_fractions": fractions,
            "test_macs_per_sample": test_macs,
            "counted_macs_per_sample": counted,
            "mac_reduction": 1.0 - test_macs / macs.static,
            "dynamic_test_accuracy": dynamic_test,
            "test_drop": static_test - dynamic_test,
            "artifact_bytes": artifact_bytes,
            "latency": _latency(static, loaded, x, rounds),
            "sweep": sweep,
        }
    )
    print(
        f"{name} seed {seed}: reduction {row['mac_reduction']:.3f} (val "
        f"{row['val_mac_reduction']:.3f}), test {static_test:.2f} -> {dynamic_test:.2f}, "
        f"exits {[round(f, 3) for f in fractions]}, oracle "
        f"{row['oracle']['mac_reduction']:.3f}, threshold oracle {row['threshold_oracle']}, "
        f"accuracy rule {row['accuracy'].get('mac_reduction')} / "
        f"{row['accuracy'].get('test_drop')}, speed-up b1 "
        f"{row['latency']['batch1']['speedup']:.2f} b64 {row['latency']['batch64']['speedup']:.2f}"
        f" ({seconds:.0f} s)",
        flush=True,
    )
    return {**row, "macs_per_exit": costs, "static_macs": macs.static}


def _maybe(runs: list[dict[str, Any]], *path: str) -> dict[str, Any] | None:
    """The spread of a field over the runs that have it (None where none has)."""
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            values.append(float(v))
    return spread(values, by_seed=True) if values else None


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    setup = SETUPS[name]
    met = [r for r in runs if r["meets_budget_on_val"]]
    reduction = _maybe(runs, "mac_reduction")
    drop = _maybe(runs, "test_drop")
    out: dict[str, Any] = {
        "zoo_model": setup["zoo"],
        "task": setup["task"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in setup["config"].items()},
        "static_macs": runs[0]["static_macs"],
        "runs": runs,
        "calibrated_seeds": len(met),
        "mac_reduction": reduction,
        "test_drop": drop,
        "val_mac_reduction": _maybe(runs, "val_mac_reduction"),
        "final_head_test_accuracy": _maybe(runs, "final_head_test_accuracy"),
        "exit_head_test_accuracy": [
            spread([r["exit_head_test_accuracy"][k] for r in runs])
            for k in range(len(runs[0]["exit_head_test_accuracy"]))
        ],
        "oracle_mac_reduction": _maybe(runs, "oracle", "mac_reduction"),
        "oracle_agree_mac_reduction": _maybe(runs, "oracle", "agree_mac_reduction"),
        "threshold_oracle_mac_reduction": _maybe(runs, "threshold_oracle"),
        "criterion": setup["config"].get("criterion", "max_softmax"),
        "threshold_oracle_own_mac_reduction": _maybe(runs, "threshold_oracle_own"),
        "max_softmax_same_heads": {
            "mac_reduction": _maybe(runs, "max_softmax_same_heads", "mac_reduction"),
            "test_drop": _maybe(runs, "max_softmax_same_heads", "test_drop"),
        },
        "ranking_test": [
            {
                key: spread([r["ranking_test"][k][key] for r in runs])
                for key in runs[0]["ranking_test"][k]
            }
            for k in range(len(runs[0]["ranking_test"]))
        ],
        "accuracy_rule": {
            "mac_reduction": _maybe(runs, "accuracy", "mac_reduction"),
            "test_drop": _maybe(runs, "accuracy", "test_drop"),
        },
        "meets_target": bool(
            reduction is not None
            and drop is not None
            and len(met) == len(runs)
            and reduction["median"] >= TARGET
            and drop["max"] <= MAX_DROP
        ),
    }
    if met:
        out["macs_per_exit"] = met[0]["macs_per_exit"]
        out["speedup_batch1"] = spread([r["latency"]["batch1"]["speedup"] for r in met])
        out["speedup_batch64"] = spread([r["latency"]["batch64"]["speedup"] for r in met])
        out["sweep"] = [
            {
                "max_drop": budget,
                "mac_reduction": spread(
                    [p["mac_reduction"] for r in met for p in r["sweep"] if p["max_drop"] == budget]
                ),
                "test_drop": spread(
                    [
                        r["static_test_accuracy"] - p["test_accuracy"]
                        for r in met
                        for p in r["sweep"]
                        if p["max_drop"] == budget
                    ]
                ),
            }
            for budget in BUDGETS
            if all(any(p["max_drop"] == budget for p in r["sweep"]) for r in met)
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--part", help="write the models' summaries to this file, not the result")
    parser.add_argument("--merge", nargs="+", help="write the result from these part files")
    parser.add_argument("--overhead", action="store_true", help="only the time breakdown")
    parser.add_argument(
        "--layer-times", action="store_true", help="only the deeper CNN's per-layer times"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other models (and the time breakdown) of the JSON already written",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    breakdown: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    if args.layer_times:  # written into the JSON already there
        result = load_result("dynamic_early_exit") or {}
        for key in ("benchmark", "date", "machine"):  # write_result sets them anew
            result.pop(key, None)
        result["layer_times_mnist1d_deep_cnn"] = layer_times()
        print(f"-> {write_result('dynamic_early_exit', result)}")
        return
    if args.overhead:
        breakdown = overhead(args.rounds)
        Path(args.part).write_text(
            json.dumps({"overhead": breakdown, "seconds": time.perf_counter() - started})
        )
        return
    if args.merge:  # parts run as separate processes (each model on its own), joined here
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        models = {k: v for part in parts for k, v in part.get("models", {}).items()}
        breakdown = next((part["overhead"] for part in parts if "overhead" in part), None)
        seconds = round(sum(part["seconds"] for part in parts), 1)
    else:
        models = {
            name: summarise(name, [run_seed(name, seed, args.rounds) for seed in args.seeds])
            for name in args.models
        }
        seconds = round(time.perf_counter() - started, 1)
    old = load_result("dynamic_early_exit") if args.update and not args.part else None
    if old is not None:  # re-run some models: the others stay as they were measured
        models = {**old["models"], **models}
        breakdown = breakdown or old.get("overhead_mnist1d_cnn")
        layers = old.get("layer_times_mnist1d_deep_cnn")
        seconds = round(old.get("seconds", 0.0) + seconds, 1)
    if args.part:
        Path(args.part).write_text(json.dumps({"models": models, "seconds": seconds}))
        return
    result = {
        "setup": {
            "seeds": args.seeds,
            "max_drop_points": MAX_DROP,
            "target_mac_reduction": TARGET,
            "training": {
                name: SETUPS[name]["config"].get("training", "distill") for name in models
            },
            "criterion": {
                name: SETUPS[name]["config"].get("criterion", "max_softmax") for name in models
            },
            "calibration_split": "val",
            "calibration_rule": f"{RULE}, confidence 0.5 (netchisel.dynamic.thresholds)",
            "latency": f"compare_latency, {args.rounds} rounds x 2 calls, one thread",
            "threads": torch.get_num_threads(),
        },
        "mac_reduction": {
            name: None if m["mac_reduction"] is None else m["mac_reduction"]["median"]
            for name, m in models.items()
        },
        "models": models,
        "overhead_mnist1d_cnn": breakdown,
        "layer_times_mnist1d_deep_cnn": layers,
        "anchors": {
            "branchynet_cpu_speedup": "2-6x (Teerapittayanon et al. 2016)",
            "shallow_deep_cost_cut": "> 50% (Kaya et al. 2019)",
            "calm_consistency": "risk as consistency with the full model (Schuster et al. 2022)",
        },
        "seconds": seconds,
    }
    path = write_result("dynamic_early_exit", result)
    print(f"-> {path}")


def _cell(s: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if s is None:
        return "-"
    return (
        f"{scale * s['median']:.{digits}f} ({scale * s['min']:.{digits}f}-"
        f"{scale * s['max']:.{digits}f})"
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/dynamic_early_exit.json."""
    s = d["setup"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        "## Early exit: mean MACs and latency against the static model"
        " (`bench/dynamic_early_exit.py`)",
        "",
        f"`python bench/dynamic_early_exit.py` ({d['date']}). Heads after the named modules"
        " (distilled from the final head with the backbone frozen, or trained jointly); one"
        " threshold per exit on the criterion's score (the max softmax, or for"
        " `criterion: learned` a decider's) calibrated on the validation split to the least mean"
        f" MACs within {s['max_drop_points']} points of the static model by the"
        f" {s['calibration_rule']} rule; measured on the test split. Seeds {seeds}: median"
        " (min-max). Latency: the saved-and-loaded artifact against the static model, A/B"
        " alternating, one thread; speed-up = static time / dynamic time.",
        "",
        "| model | training | criterion | MACs per exit / static | MAC reduction % |"
        " test drop (points) | speed-up batch 1 | speed-up batch 64 |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        costs = " / ".join(f"{c:,}" for c in m.get("macs_per_exit", [])) or "-"
        lines.append(
            f"| {name} | {m['config'].get('training', 'distill')} |"
            f" {m['config'].get('criterion', 'max_softmax')} | {costs} /"
            f" {m['static_macs']:,} | {_cell(m['mac_reduction'], 100)} |"
            f" {_cell(m['test_drop'], 1, 2)} | {_cell(m.get('speedup_batch1'), 1, 2)} |"
            f" {_cell(m.get('speedup_batch64'), 1, 2)} |"
        )
    lines += [
        "",
        "What limits it, on test (MAC reduction %, median (min-max)): the point-estimate"
        " `accuracy` rule on the same heads; the best thresholds chosen on test itself"
        " (threshold oracle); the best per-sample policy knowing the labels at the same budget"
        " (oracle); each sample at the first exit that agrees with the final head (agree):",
        "",
        "| model | final head test % | exit heads test % | accuracy rule: reduction % / drop"
        " | threshold oracle | oracle | agree |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        heads = " / ".join(f"{h['median']:.1f}" for h in m["exit_head_test_accuracy"])
        rule = m["accuracy_rule"]
        lines.append(
            f"| {name} | {_cell(m['final_head_test_accuracy'], 1, 2)} | {heads} |"
            f" {_cell(rule['mac_reduction'], 100)} / {_cell(rule['test_drop'], 1, 2)} |"
            f" {_cell(m['threshold_oracle_mac_reduction'], 100)} |"
            f" {_cell(m['oracle_mac_reduction'], 100)} |"
            f" {_cell(m['oracle_agree_mac_reduction'], 100)} |"
        )
    learned = [
        (n, m) for n, m in d["models"].items() if m.get("threshold_oracle_own_mac_reduction")
    ]
    if learned:
        lines += [
            "",
            "Learned exit decision: the threshold oracle of the model's own criterion (MAC"
            " reduction %), and how well each score ranks the test samples whose exit answer is"
            " the final head's (AUC per exit, max softmax / learned):",
            "",
            "| model | max softmax, same heads: reduction % / drop | threshold oracle (own"
            " criterion) | AUC max softmax | AUC learned |",
            "|---|---|---:|---|---|",
        ]
        for name, m in learned:
            ms = " / ".join(f"{r['auc_max_softmax']['median']:.3f}" for r in m["ranking_test"])
            own = " / ".join(f"{r['auc_learned']['median']:.3f}" for r in m["ranking_test"])
            same = m.get("max_softmax_same_heads") or {}
            lines.append(
                f"| {name} | {_cell(same.get('mac_reduction'), 100)} /"
                f" {_cell(same.get('test_drop'), 1, 2)} |"
                f" {_cell(m['threshold_oracle_own_mac_reduction'], 100)} | {ms} | {own} |"
            )
    lines.append("")
    for name, m in d["models"].items():
        verdict = "meets" if m["meets_target"] else "misses"
        runs = m["runs"]
        never = "; ".join(
            f"seed {r['seed']}: {', '.join(r['never_fire'])}" for r in runs if r.get("never_fire")
        )
        failed = [r for r in runs if not r["meets_budget_on_val"]]
        static = runs[0]["static_test_accuracy"]
        lines.append(
            f"- {name}: {verdict} the target (>= {100 * s['target_mac_reduction']:.0f}% at <="
            f" {s['max_drop_points']} points); static test accuracy {static:.2f}%; exits whose"
            f" calibrated threshold never fires: {never or 'none'}"
            + (
                f"; no thresholds meet the budget on val in {len(failed)} of {len(runs)} seeds"
                " (the final head itself is below it)"
                if failed
                else ""
            )
            + "."
        )
        if m["task"] == "digits32":
            lines += [line for line in saturated_note(static) if line]
    swept = [(n, m) for n, m in d["models"].items() if m.get("sweep")]
    if swept:
        budgets = [b["max_drop"] for b in swept[0][1]["sweep"]]
        lines += [
            "",
            "The same heads recalibrated to other validation budgets (`calibrate_exits`, same"
            " rule), measured on test: MAC reduction % / test drop (points), median over seeds:",
            "",
            "| model | " + " | ".join(f"val budget {b:g}" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        for name, m in swept:
            cells = {
                b["max_drop"]: f"{100 * b['mac_reduction']['median']:.0f}% /"
                f" {b['test_drop']['median']:.2f}"
                for b in m["sweep"]
            }
            lines.append(f"| {name} | " + " | ".join(cells.get(b, "-") for b in budgets) + " |")
    lines += [
        "",
        "Anchors: BranchyNet 2-6x on CPU; Shallow-Deep Networks > 50% cost cut.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
