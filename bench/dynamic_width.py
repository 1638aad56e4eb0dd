"""Per-sample width (issue 19, benchmark 3): accuracy against mean MACs of a slimmable network
with a gate choosing the width per input, its measured speed-up on sliced weights, and a
masking control showing that masks alone give none.

Run: .venv/bin/python bench/dynamic_width.py  ->  bench/results/dynamic_width.json

Models: the zoo's trained `cnn` on digits32 (1,257 / 270 / 270 images; widths 0.25 / 0.5 /
0.75 / 1.0 of 32 / 64 / 128 channels) and the zoo's trained `mnist1d_cnn` on MNIST-1D (3,500 /
500 / 1,000 sequences; widths 0.5 / 0.75 / 1.0 of 25 channels: at 0.25, 6 channels, it scores
about a third), and the zoo's trained `mnist1d_deep_cnn` on the same data (widths 0.25 / 0.5 /
0.75 / 1.0 of 16 / 32 / 64 channels). Each also as `<model>_original`: `distill_from: original`
(a frozen copy of the trained model teaches every width, the widest included, instead of the
widest learning the labels), lr 5e-4 instead of 2e-3. For each seed (the gate's initial
weights and the data order) the `dynamic.width` stage sorts channels by importance, trains
all widths together (switchable BatchNorm, in-place distillation from the widest or the
original), re-estimates each width's BatchNorm statistics, trains the gate, and calibrates
the gate's bias on the validation split to the least mean MACs within `max_drop` = 0.5
points of the static model, by the stage's default "agreement" rule (the Clopper-Pearson
bound, at confidence 0.5, on the rate of samples sent to a narrower width whose answer differs
from the widest's; `netchisel.dynamic.thresholds`); the point-estimate "accuracy" rule is
recorded beside it (`accuracy_rule`). Measured on the test split, which no choice saw, with
the saved-and-loaded artifact:

- accuracy of each width alone (no gate) and of the gated model, against mean MACs per sample
  (exact count_flops per width, weighted by where the gate sent the test samples;
  `counted_macs_per_sample` re-counts the real gated forward over the whole test split);
- `oracle`: each test sample at the narrowest width that gets it right (the widest if none):
  what a perfect gate could reach with these widths, an upper bound; `budget_mac_reduction`:
  the same, then spending the 0.5-point budget (the right samples with the largest savings
  sent to the narrowest width): the best any per-sample width policy can do at the target;
- latency, one thread, round-robin in one run (`measure.latency.round_robin`): the static
  model, the sliced gated model, and the masking control (the same gate and widths computed at
  full width with the other channels zeroed, `width_masking.MaskedWidth`), at batch 1 (one call
  = the first 100 test samples one at a time) and batch 64 (the first 256 test samples in 4
  batches); each width alone (sliced, and masked) at batch 64. `speedup` = static time / time.

Anchors: Slimmable Networks (Yu et al. 2018) and US-Nets (Yu & Huang 2019) keep ImageNet
accuracy within about 1-2 points per width at 0.25-1.0x; gated/dynamic slimmable networks
(Li et al. 2021, "Dynamic Slimmable Network") report 1.5-2x mean MAC cuts at equal accuracy.
Target (issue 19): mean MACs below the static model at <= 0.5 points of test drop, a measured
speed-up from sliced compute, and none from masks.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
from typing import Any

import torch
from common import (
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
from netchisel.dynamic.thresholds import Budget
from netchisel.dynamic.width import WidthConfig, calibrate_gate, dynamic_width
from netchisel.dynamic.width_gate import calibrate_bias, outcome
from netchisel.dynamic.width_masking import MaskedWidth
from netchisel.dynamic.width_model import width_macs
from netchisel.measure import count_flops
from netchisel.measure.latency import round_robin
from netchisel.zoo import data, train

MAX_DROP = 0.5
RULE = "agreement"  # the stage's default calibration rule (netchisel.dynamic.thresholds)
# Validation budgets of the sweep (points): the same gate recalibrated, measured on test.
BUDGETS = (0.0, 0.5, 1.0, 2.0, 5.0)
SETUPS: dict[str, dict[str, Any]] = {
    "cnn_digits32": {
        "zoo": "cnn",
        "task": "digits32",
        "config": {
            "widths": (0.25, 0.5, 0.75, 1.0),
            "steps": 200,
            "lr": 2e-3,
            "gate_steps": 200,
            "distill_from": "widest",
        },
    },
    "mnist1d_cnn": {
        "zoo": "mnist1d_cnn",
        "task": "mnist1d",
        "config": {
            "widths": (0.5, 0.75, 1.0),
            "steps": 3000,
            "lr": 2e-3,
            "gate_steps": 600,
            "distill_from": "widest",
        },
    },
    # The deeper MNIST-1D CNN (six conv-BN-ReLU layers of 16 / 32 / 64 channels).
    "mnist1d_deep_cnn": {
        "zoo": "mnist1d_deep_cnn",
        "task": "mnist1d",
        "config": {
            "widths": (0.25, 0.5, 0.75, 1.0),
            "steps": 3000,
            "lr": 2e-3,
            "gate_steps": 600,
            "distill_from": "widest",
        },
    },
    # A residual network (the zoo's ResNet-20, 16 / 32 / 64 channels): the adds tie every
    # layer of a stage to one prefix; its channels are not reordered (not a chain).
    "resnet_digits32": {
        "zoo": "resnet",
        "task": "digits32",
        "config": {
            "widths": (0.25, 0.5, 0.75, 1.0),
            "steps": 200,
            "lr": 2e-3,
            "gate_steps": 200,
            "distill_from": "widest",
        },
    },
}
# The same four with `distill_from: original` (the stage's default since these runs): a frozen copy
# of the trained model teaches every width, the widest included, at a fine-tuning rate.
for _name in list(SETUPS):
    _setup = SETUPS[_name]
    SETUPS[f"{_name}_original"] = {
        **_setup,
        "config": {**_setup["config"], "distill_from": "original", "lr": 5e-4},
    }


def _split(task: Any, split: str) -> tuple[Tensor, Tensor]:
    batches = list(task.loader(split))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _sweep(model: Any, task: Any, reference: float, costs: list[int], gate: int) -> list[Any]:
    """The gate calibrated on val at each budget of BUDGETS (the stage's own calibration,
    `calibrate_bias`), each measured on test: accuracy and mean MACs per sample."""
    out = []
    sides = {}
    for split in ("val", "test"):
        x, y = _split(task, split)
        preds, _ = _per_width(model, x)
        with torch.no_grad():
            logits = torch.cat([model.gate(x[i : i + 64]) for i in range(0, len(x), 64)])
        sides[split] = (logits, preds == y, preds != preds[-1])
    for budget in BUDGETS:
        logits, right, differs = sides["val"]
        found = calibrate_bias(logits, right, costs, gate, Budget(reference, budget), differs)
        if found is None:
            continue
        test = outcome(*sides["test"][:2], costs, gate, found.bias)
        out.append(
            {
                "max_drop": budget,
                "val_accuracy": found.accuracy,
                "test_accuracy": test.accuracy,
                "test_fractions": test.fractions,
                "test_macs_per_sample": test.expected_macs,
            }
        )
    return out


def budget_oracle(right: Tensor, costs: list[int], reference: float, max_drop: float) -> float:
    """The least mean MACs any per-sample width choice reaches within `max_drop` points of
    `reference` percent, knowing the labels: each sample at its narrowest right width (the
    narrowest where none is right), then the right samples with the largest savings sent to
    the narrowest width while the accuracy stays within the budget (giving up one right
    answer is worth the same anywhere, so the largest savings first is optimal)."""
    n = right.shape[1]
    per = torch.tensor(costs, dtype=torch.float64)
    cost = torch.full((n,), float(per[0]), dtype=torch.float64)
    for k in reversed(range(len(costs))):
        cost[right[k]] = per[k]
    any_right = right.any(0)
    spare = int(any_right.sum()) - math.ceil((reference - max_drop) * n / 100.0 - 1e-9)
    if spare > 0:
        saving = torch.where(any_right, cost - per[0], torch.zeros_like(cost))
        cost[saving.argsort(descending=True)[:spare]] = per[0]
    return float(cost.mean())


def _per_width(model: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Each width's predictions (widths, N) and the gate's choice (N,) on `x`."""
    with torch.no_grad():
        preds = torch.stack(
            [
                torch.cat(
                    [model.run_width(x[i : i + 64], k).argmax(-1) for i in range(0, len(x), 64)]
                )
                for k in range(len(model.widths))
            ]
        )
        choice = torch.cat([model.routed(x[i : i + 64])[1] for i in range(0, len(x), 64)])
    return preds, choice


def _timed(runs: dict[str, Any], inputs: list[Tensor], rounds: int) -> dict[str, Any]:
    def call(model: nn.Module) -> Any:
        def run() -> None:
            with torch.no_grad():
                for t in inputs:
                    model(t)

        return run

    names = list(runs)
    samples, _ = round_robin([call(runs[n]) for n in names], threads=1, rounds=rounds, calls=2)
    medians = {n: statistics.median(s) for n, s in zip(names, samples, strict=True)}
    count = sum(len(t) for t in inputs)
    return {
        n: {
            "median_ms": medians[n],
            "p10_p90_ms": [sorted(s)[len(s) // 10], sorted(s)[(9 * len(s)) // 10]],
            "us_per_sample": 1000 * medians[n] / count,
            "speedup": medians["static"] / medians[n],
        }
        for n, s in zip(names, samples, strict=True)
    }


class _Fixed(nn.Module):
    """One width of a width model (or its masking control) for every sample, no gate."""

    def __init__(self, run: Any, k: int) -> None:
        super().__init__()
        self.run, self.k = run, k

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, self.k)  # type: ignore[no-any-return]


def _latency(static: nn.Module, model: Any, x: Tensor, rounds: int) -> dict[str, Any]:
    masked = MaskedWidth(model).eval()
    singles = [x[i : i + 1] for i in range(100)]
    batches = [x[i : i + 64] for i in range(0, 256, 64)]
    gated = {"static": static, "sliced": model, "masked": masked}
    fixed: dict[str, Any] = {"static": static}
    for k, w in enumerate(model.widths[:-1]):
        fixed[f"width {w:g} sliced"] = _Fixed(model.run_width, k)
        fixed[f"width {w:g} masked"] = _Fixed(masked.run_masked, k)
    return {
        "batch1": _timed(gated, singles, rounds),
        "batch64": _timed(gated, batches, rounds),
        "fixed_batch64": _timed(fixed, batches, rounds),
    }


def run_seed(name: str, seed: int, rounds: int, smoke: bool = False) -> dict[str, Any]:
    setup = SETUPS[name]
    options = {**setup["config"], **({"steps": 3, "gate_steps": 3} if smoke else {})}
    task = data.task(setup["task"])
    static = train.pretrained(setup["zoo"]).eval()
    static_test = task.evaluate(static, "test")["accuracy"]
    ctx = Context(task, quiet=True, seed=seed)
    # The stage calibrates at max_drop 100 (never refuses), then `calibrate_gate` at MAX_DROP,
    # the stage's own calibration: a seed whose widest width misses the budget is recorded
    # (all samples at the widest width) instead of stopping the benchmark.
    config = WidthConfig(max_drop=100.0, **options)
    t0 = time.perf_counter()
    model = dynamic_width(train.pretrained(setup["zoo"]), config, ctx)
    r = ctx.records
    # The point-estimate rule first (what calibration did before the agreement rule), for
    # comparison; then the default, which the model keeps.
    try:
        point = calibrate_gate(
            model, task, max_drop=MAX_DROP, reference=r["reference_accuracy"], rule="accuracy"
        )
        point_bias: float | None = point.bias
    except ConfigError:
        point_bias = None
    try:
        found = calibrate_gate(model, task, max_drop=MAX_DROP, reference=r["reference_accuracy"])
        budget_met = True
    except ConfigError:
        found = calibrate_gate(model, task, bias=1e9)
        budget_met = False
    seconds = time.perf_counter() - t0
    x, y = split_tensors(task)
    loaded, artifact_bytes = shipped(model, (x[:64],))
    per_width, gate, static_macs = width_macs(loaded, x)
    preds, choice = _per_width(loaded, x)
    right = preds == y
    k = len(per_width)
    fractions = (torch.bincount(choice, minlength=k).double() / len(x)).tolist()
    test_macs = gate + sum(m * f for m, f in zip(per_width, fractions, strict=True))
    counted = sum(count_flops(loaded, x[i : i + 64]).macs for i in range(0, len(x), 64)) / len(x)
    gated_test = task.evaluate(loaded, "test")["accuracy"]
    # The oracle: the narrowest right width per sample, the widest where none is right.
    first_right = torch.where(right.any(0), right.double().argmax(0), torch.full_like(y, k - 1))
    oracle_macs = sum(per_width[int(i)] for i in first_right) / len(x)
    oracle_acc = 100.0 * float(right.any(0).double().mean())
    width_test = [100.0 * float(c.double().mean()) for c in right]
    sweep = _sweep(loaded, task, r["reference_accuracy"], per_width, gate)
    budget_macs = budget_oracle(right, per_width, static_test, MAX_DROP)
    accuracy_rule: dict[str, Any] = {"error": "no gate setting meets the budget"}
    if point_bias is not None:
        with torch.no_grad():
            z = torch.cat([loaded.gate(x[i : i + 64]) for i in range(0, len(x), 64)])
        point_test = outcome(z, right, per_width, gate, point_bias)
        accuracy_rule = {
            "gate_bias": point_bias,
            "test_accuracy": point_test.accuracy,
            "test_drop": static_test - point_test.accuracy,
            "mac_reduction": 1.0 - point_test.expected_macs / static_macs,
        }
    row = {
        "seed": seed,
        "static_test_accuracy": static_test,
        "val_reference_accuracy": r["reference_accuracy"],
        "val_width_accuracy": r["width_accuracy"],
        "val_budget_met": budget_met,
        "val_accuracy": found.accuracy,
        "val_width_fractions": found.fractions,
        "val_mac_reduction": 1.0 - found.expected_macs / r["static_macs"],
        "gate_bias": found.bias,
        "test_width_accuracy": width_test,
        "test_width_drop": [static_test - a for a in width_test],
        "test_width_fractions": fractions,
        "gated_test_accuracy": gated_test,
        "test_drop": static_test - gated_test,
        "test_macs_per_sample": test_macs,
        "counted_macs_per_sample": counted,
        "mac_reduction": 1.0 - test_macs / static_macs,
        "oracle": {
            "test_accuracy": oracle_acc,
            "macs_per_sample": oracle_macs,
            "mac_reduction": 1.0 - oracle_macs / static_macs,
            "budget_mac_reduction": 1.0 - budget_macs / static_macs,
        },
        "accuracy_rule": accuracy_rule,
        "sweep": [
            {
                **b,
                "test_drop": static_test - b["test_accuracy"],
                "mac_reduction": 1.0 - b["test_macs_per_sample"] / static_macs,
            }
            for b in sweep
        ],
        "artifact_bytes": artifact_bytes,
        "stage_seconds": round(seconds, 1),
        "latency": _latency(static, loaded, x, rounds),
    }
    lat = row["latency"]
    print(
        f"{name} seed {seed}: widths test {[round(a, 2) for a in width_test]}, gated"
        f" {gated_test:.2f} (static {static_test:.2f}), reduction {row['mac_reduction']:.3f},"
        f" widths {[round(f, 3) for f in fractions]}, speed-up b1 sliced"
        f" {lat['batch1']['sliced']['speedup']:.2f} masked"
        f" {lat['batch1']['masked']['speedup']:.2f},"
        f" b64 sliced {lat['batch64']['sliced']['speedup']:.2f} masked"
        f" {lat['batch64']['masked']['speedup']:.2f} ({seconds:.0f} s)",
        flush=True,
    )
    return {**row, "macs_per_width": per_width, "gate_macs": gate, "static_macs": static_macs}


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    setup = SETUPS[name]
    widths = list(setup["config"]["widths"])
    first = runs[0]
    reduction = spread([r["mac_reduction"] for r in runs], by_seed=True)
    drop = spread([r["test_drop"] for r in runs], by_seed=True)

    def lat(key: str, arm: str) -> dict[str, Any]:
        return spread([r["latency"][key][arm]["speedup"] for r in runs])

    fixed_arms = list(first["latency"]["fixed_batch64"])[1:]
    return {
        "zoo_model": setup["zoo"],
        "task": setup["task"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in setup["config"].items()},
        "macs_per_width": first["macs_per_width"],
        "gate_macs": first["gate_macs"],
        "static_macs": first["static_macs"],
        "runs": runs,
        "width_test_accuracy": [
            spread([r["test_width_accuracy"][k] for r in runs]) for k in range(len(widths))
        ],
        "width_test_drop": [
            spread([r["test_width_drop"][k] for r in runs]) for k in range(len(widths))
        ],
        "gated_test_accuracy": spread([r["gated_test_accuracy"] for r in runs]),
        "mac_reduction": reduction,
        "val_mac_reduction": spread([r["val_mac_reduction"] for r in runs]),
        "test_drop": drop,
        "oracle_mac_reduction": spread([r["oracle"]["mac_reduction"] for r in runs]),
        "oracle_budget_mac_reduction": spread([r["oracle"]["budget_mac_reduction"] for r in runs]),
        "accuracy_rule": {
            key: spread([r["accuracy_rule"][key] for r in runs if key in r["accuracy_rule"]])
            for key in ("mac_reduction", "test_drop")
            if any(key in r["accuracy_rule"] for r in runs)
        },
        "oracle_test_accuracy": spread([r["oracle"]["test_accuracy"] for r in runs]),
        "speedup_batch1": {"sliced": lat("batch1", "sliced"), "masked": lat("batch1", "masked")},
        "speedup_batch64": {
            "sliced": lat("batch64", "sliced"),
            "masked": lat("batch64", "masked"),
        },
        "speedup_fixed_batch64": {arm: lat("fixed_batch64", arm) for arm in fixed_arms},
        "budget_missed_seeds": [r["seed"] for r in runs if not r["val_budget_met"]],
        "sweep": [
            {
                "max_drop": budget,
                "seeds": len(points),
                "mac_reduction": spread([p["mac_reduction"] for p in points]),
                "test_drop": spread([p["test_drop"] for p in points]),
            }
            for budget in BUDGETS
            if (points := [b for r in runs for b in r["sweep"] if b["max_drop"] == budget])
        ],
        "meets_target": bool(
            reduction["median"] > 0
            and drop["median"] <= MAX_DROP
            and lat("batch64", "sliced")["median"] > 1.0
            and lat("batch64", "masked")["median"] <= 1.0
        ),
    }


def _one_thread() -> None:
    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="3 training steps, no JSON")
    parser.add_argument(
        "--jobs", type=int, default=1, help="(model, seed) runs at once, one thread each"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other models of the existing JSON as they were (each says its run)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    pairs = [(name, seed, args.rounds, args.smoke) for name in args.models for seed in args.seeds]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_one_thread) as pool:
            rows = pool.starmap(run_seed, pairs)
    else:
        rows = [run_seed(*p) for p in pairs]
    models = {
        name: {
            **summarise(name, [row for (n, *_), row in zip(pairs, rows, strict=True) if n == name]),
            "run": {"date": time.strftime("%Y-%m-%d %H:%M"), "calibration_rule": RULE},
        }
        for name in args.models
    }
    old = load_result("dynamic_width") if args.update else None
    if old is not None:  # the models not run now, as the earlier run measured them
        kept = {
            name: {"run": {"date": old["date"], "calibration_rule": "accuracy"}, **m}
            for name, m in old["models"].items()
            if name not in models
        }
        models = {**kept, **models}
    result = {
        "setup": {
            "seeds": args.seeds,
            "max_drop_points": MAX_DROP,
            "training": "all widths each step, in-place distillation from the widest,"
            " switchable BatchNorm re-estimated on 1,024 training samples",
            "gate": "strided conv (8 channels) + pooling + Linear on the input, targets"
            " (1 - p_label) + 0.1 * MACs share, bias calibrated on val",
            "calibration_split": "val",
            "calibration_rule": f"{RULE}, confidence 0.5 (netchisel.dynamic.thresholds),"
            " unless a model's `run` says otherwise",
            "latency": f"round_robin, {args.rounds} rounds x 2 calls, one thread",
            "jobs": args.jobs,
            "threads": torch.get_num_threads(),
        },
        "mac_reduction": {name: m["mac_reduction"]["median"] for name, m in models.items()},
        "models": models,
        "anchors": {
            "slimmable_networks": "within ~1-2 points per width, 0.25-1.0x (Yu et al. 2018)",
            "dynamic_slimmable": "1.5-2x mean MAC cut at equal accuracy (Li et al. 2021)",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.smoke:
        print(render({"date": "smoke", **result}))
        return
    path = write_result("dynamic_width", result)
    print(f"-> {path}")


def _cell(s: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return (
        f"{scale * s['median']:.{digits}f} ({scale * s['min']:.{digits}f}-"
        f"{scale * s['max']:.{digits}f})"
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/dynamic_width.json."""
    s = d["setup"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        "## Per-sample width: accuracy against mean MACs, sliced vs masked latency"
        " (`bench/dynamic_width.py`)",
        "",
        f"`python bench/dynamic_width.py` ({d['date']}). All widths trained together"
        " (switchable BatchNorm, in-place distillation), a gate on the input choosing the width,"
        f" its bias calibrated on the validation split to the least mean MACs within"
        f" {s['max_drop_points']} points of the static model; measured on the test split with the"
        f" saved-and-loaded artifact. Seeds {seeds}: median (min-max). Speed-up = static time /"
        " time, one thread, round-robin in one run. Arms named `*_original` train with"
        " `distill_from: original` (a frozen copy of the trained model teaches every width, the"
        " widest included) at lr 5e-4.",
        "",
        "| model | width | MACs / sample | test accuracy % | drop (points) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        static = m["runs"][0]["static_test_accuracy"]
        lines.append(f"| {name} | static | {m['static_macs']:,} | {static:.2f} | - |")
        for k, w in enumerate(m["config"]["widths"]):
            lines.append(
                f"| {name} | {w:g} alone | {m['macs_per_width'][k]:,} |"
                f" {_cell(m['width_test_accuracy'][k], 1, 2)} |"
                f" {_cell(m['width_test_drop'][k], 1, 2)} |"
            )
        mean = statistics.median(r["test_macs_per_sample"] for r in m["runs"])
        lines.append(
            f"| {name} | gated (gate {m['gate_macs']:,}) | {mean:,.0f} (median) |"
            f" {_cell(m['gated_test_accuracy'], 1, 2)} | {_cell(m['test_drop'], 1, 2)} |"
        )
    lines += [
        "",
        "| model | MAC reduction % (gated) | accuracy rule: reduction % / drop |"
        " oracle at 0.5 points % | oracle, any right % | speed-up b1 sliced |"
        " b1 masked | b64 sliced | b64 masked |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        b1, b64 = m["speedup_batch1"], m["speedup_batch64"]
        rule = m.get("accuracy_rule", {})
        point = (
            f"{_cell(rule['mac_reduction'], 100)} / {_cell(rule['test_drop'], 1, 2)}"
            if "mac_reduction" in rule
            else "-"
        )
        budget = m.get("oracle_budget_mac_reduction")
        lines.append(
            f"| {name} | {_cell(m['mac_reduction'], 100)} | {point} |"
            f" {_cell(budget, 100) if budget else '-'} |"
            f" {_cell(m['oracle_mac_reduction'], 100)}"
            f" | {_cell(b1['sliced'], 1, 2)} | {_cell(b1['masked'], 1, 2)} |"
            f" {_cell(b64['sliced'], 1, 2)} | {_cell(b64['masked'], 1, 2)} |"
        )
    lines.append("")
    for name, m in d["models"].items():
        fixed = ", ".join(
            f"{arm} {_cell(v, 1, 2)}" for arm, v in m["speedup_fixed_batch64"].items()
        )
        verdict = "meets" if m["meets_target"] else "misses"
        missed = ", ".join(str(x) for x in m["budget_missed_seeds"]) or "none"
        lines.append(
            f"- {name}: {verdict} the target"
            + (
                f" (run {m['run']['date']}, calibration rule {m['run']['calibration_rule']})"
                if "run" in m
                else ""
            )
            + f"; each width alone at batch 64, speed-up: {fixed};"
            f" seeds whose widest width missed the validation budget (all samples sent there):"
            f" {missed}."
        )
        if m["task"] == "digits32":
            lines += [line for line in saturated_note(m["runs"][0]["static_test_accuracy"]) if line]
    lines += [
        "",
        "The same gate recalibrated on val at other budgets (`calibrate_bias`), measured on"
        " test: MAC reduction % / test drop (points), median over seeds:",
        "",
        "| model | " + " | ".join(f"val budget {b:g}" for b in BUDGETS) + " |",
        "|---|" + "---:|" * len(BUDGETS),
    ]
    for name, m in d["models"].items():
        found = {p["max_drop"]: p for p in m["sweep"]}
        cells = [
            f"{100 * found[b]['mac_reduction']['median']:.0f}% /"
            f" {found[b]['test_drop']['median']:.2f}"
            if b in found
            else "not met"
            for b in BUDGETS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Anchors: Slimmable Networks within ~1-2 points per width; Dynamic Slimmable Network"
        " 1.5-2x mean MAC cut.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
