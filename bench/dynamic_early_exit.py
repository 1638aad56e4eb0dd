"""Early exit (issue 19, benchmark 1): mean MACs saved within 0.5 points of accuracy, and the
measured latency of a model that really exits against the static model.

Run: .venv/bin/python bench/dynamic_early_exit.py  ->  bench/results/dynamic_early_exit.json

Models: the zoo's trained `mnist1d_cnn` on MNIST-1D (3,500 / 500 / 1,000 sequences) and the
zoo's trained ResNet-20 on digits32 (1,257 / 270 / 270 images). For each seed (which sets the
heads' initial weights and the data order) the `dynamic.early_exit` stage attaches heads
after the named modules, trains them by distillation from the final head with the backbone
frozen (so a sample that does not exit gets exactly the original output), and calibrates one
max-softmax threshold per exit on the validation split: the least mean MACs with validation
accuracy >= the static model's minus `max_drop` = 0.5 points. Everything is then measured on
the test split, which no choice saw:

- `mac_reduction`: 1 - (mean MACs per test sample) / (static MACs per sample), the mean MACs
  being the exact MACs of each exit (count_flops) weighted by where the test samples left;
  `counted_macs_per_sample` re-counts them with count_flops on the real dynamic forward over
  the whole test split (the two agree exactly: nothing is simulated);
- the test accuracy drop against the static model (points);
- latency, A/B alternating in one run (`netchisel.measure.compare_latency`, one thread), of
  the saved-and-loaded artifact against the static model: batch 1 (one call = the first 100
  test samples one at a time, so the mix of exits is the test split's) and batch 64 with
  regrouping (one call = the first 256 test samples in 4 batches). `speedup` = static time /
  dynamic time.

Anchors: BranchyNet (Teerapittayanon et al. 2016) 2-6x on CPU at comparable accuracy;
Shallow-Deep Networks (Kaya et al. 2019) cut the average inference cost by > 50%. Target
(issue 19): `mac_reduction` >= 40% at <= 0.5 points of drop.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import ab_entry, saturated_note, shipped, split_tensors, spread, write_result
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.dynamic import EarlyExitConfig, calibrate_exits
from netchisel.dynamic.early_exit import early_exit
from netchisel.measure import compare_latency, count_flops
from netchisel.zoo import data, train

TARGET = 0.40
MAX_DROP = 0.5
# Validation budgets of the sweep (points): the same heads recalibrated, measured on test.
BUDGETS = (0.0, 0.25, 0.5, 1.0, 2.0)
SETUPS: dict[str, dict[str, Any]] = {
    "mnist1d_cnn": {
        "zoo": "mnist1d_cnn",
        "task": "mnist1d",
        "config": {
            "exits": ("features.relu1", "features.relu2"),
            "pool": 4,
            "steps": 3000,
            "lr": 3e-3,
            "temperature": 2.0,
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


def run_seed(name: str, seed: int, rounds: int) -> dict[str, Any]:
    setup = SETUPS[name]
    task = data.task(setup["task"])
    static = train.pretrained(setup["zoo"]).eval()
    static_test = task.evaluate(static, "test")["accuracy"]
    backbone = train.pretrained(setup["zoo"])
    ctx = Context(task, quiet=True, seed=seed)
    config = EarlyExitConfig(max_drop=MAX_DROP, **setup["config"])
    t0 = time.perf_counter()
    model = early_exit(backbone, config, ctx)
    seconds = time.perf_counter() - t0
    r = ctx.records
    x, _ = split_tensors(task)
    loaded, artifact_bytes = shipped(model, (x[:64],))
    fractions = _fractions(_exits_on(loaded, x), len(config.exits))
    costs = r["macs_per_exit"]
    test_macs = sum(c * f for c, f in zip(costs, fractions, strict=True))
    counted = sum(count_flops(loaded, x[i : i + 64]).macs for i in range(0, len(x), 64)) / len(x)
    dynamic_test = task.evaluate(loaded, "test")["accuracy"]
    sweep = []
    for budget in BUDGETS:
        cal = calibrate_exits(model, task, max_drop=budget, reference=r["reference_accuracy"])
        f = _fractions(_exits_on(model, x), len(config.exits))
        macs = sum(c * share for c, share in zip(cal.costs, f, strict=True))
        sweep.append(
            {
                "max_drop": budget,
                "val_accuracy": cal.outcome.accuracy,
                "test_accuracy": task.evaluate(model, "test")["accuracy"],
                "test_exit_fractions": f,
                "mac_reduction": 1.0 - macs / r["static_macs"],
            }
        )
    row = {
        "seed": seed,
        "thresholds": r["thresholds"],
        "val_exit_fractions": r["exit_fractions"],
        "val_accuracy": r["calibrated_accuracy"],
        "val_reference_accuracy": r["reference_accuracy"],
        "val_mac_reduction": r["mac_reduction"],
        "never_fire": r["never_fire"],
        "test_exit_fractions": fractions,
        "test_macs_per_sample": test_macs,
        "counted_macs_per_sample": counted,
        "mac_reduction": 1.0 - test_macs / r["static_macs"],
        "static_test_accuracy": static_test,
        "dynamic_test_accuracy": dynamic_test,
        "test_drop": static_test - dynamic_test,
        "artifact_bytes": artifact_bytes,
        "stage_seconds": round(seconds, 1),
        "latency": _latency(static, loaded, x, rounds),
        "sweep": sweep,
    }
    print(
        f"{name} seed {seed}: reduction {row['mac_reduction']:.3f} (val "
        f"{row['val_mac_reduction']:.3f}), test {static_test:.2f} -> {dynamic_test:.2f}, "
        f"exits {[round(f, 3) for f in fractions]}, speed-up b1 "
        f"{row['latency']['batch1']['speedup']:.2f} b64 {row['latency']['batch64']['speedup']:.2f}"
        f" ({seconds:.0f} s)",
        flush=True,
    )
    return {**row, "macs_per_exit": costs, "static_macs": r["static_macs"]}


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    setup = SETUPS[name]
    reduction = spread([r["mac_reduction"] for r in runs], by_seed=True)
    drop = spread([r["test_drop"] for r in runs], by_seed=True)
    return {
        "zoo_model": setup["zoo"],
        "task": setup["task"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in setup["config"].items()},
        "macs_per_exit": runs[0]["macs_per_exit"],
        "static_macs": runs[0]["static_macs"],
        "runs": runs,
        "mac_reduction": reduction,
        "val_mac_reduction": spread([r["val_mac_reduction"] for r in runs]),
        "test_drop": drop,
        "speedup_batch1": spread([r["latency"]["batch1"]["speedup"] for r in runs]),
        "speedup_batch64": spread([r["latency"]["batch64"]["speedup"] for r in runs]),
        "meets_target": bool(reduction["median"] >= TARGET and drop["median"] <= MAX_DROP),
        "sweep": [
            {
                "max_drop": budget,
                "mac_reduction": spread([r["sweep"][i]["mac_reduction"] for r in runs]),
                "test_drop": spread(
                    [r["static_test_accuracy"] - r["sweep"][i]["test_accuracy"] for r in runs]
                ),
            }
            for i, budget in enumerate(BUDGETS)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    models = {
        name: summarise(name, [run_seed(name, seed, args.rounds) for seed in args.seeds])
        for name in args.models
    }
    result = {
        "setup": {
            "seeds": args.seeds,
            "max_drop_points": MAX_DROP,
            "target_mac_reduction": TARGET,
            "training": "distill (backbone frozen, heads learn the final head's soft targets)",
            "criterion": "max_softmax",
            "calibration_split": "val",
            "latency": f"compare_latency, {args.rounds} rounds x 2 calls, one thread",
            "threads": torch.get_num_threads(),
        },
        "mac_reduction": {name: m["mac_reduction"]["median"] for name, m in models.items()},
        "models": models,
        "anchors": {
            "branchynet_cpu_speedup": "2-6x (Teerapittayanon et al. 2016)",
            "shallow_deep_cost_cut": "> 50% (Kaya et al. 2019)",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result("dynamic_early_exit", result)
    print(f"-> {path}")


def _cell(s: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return (
        f"{scale * s['median']:.{digits}f} ({scale * s['min']:.{digits}f}-"
        f"{scale * s['max']:.{digits}f})"
    )


def _first_sweep(d: dict[str, Any]) -> list[dict[str, Any]]:
    return next(iter(d["models"].values()))["sweep"]  # type: ignore[no-any-return]


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/dynamic_early_exit.json."""
    s = d["setup"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        "## Early exit: mean MACs and latency against the static model"
        " (`bench/dynamic_early_exit.py`)",
        "",
        f"`python bench/dynamic_early_exit.py` ({d['date']}). Heads after the named modules,"
        " trained by distillation from the final head with the backbone frozen; one max-softmax"
        f" threshold per exit calibrated on the validation split to the least mean MACs within"
        f" {s['max_drop_points']} points of the static model; measured on the test split."
        f" Seeds {seeds}: median (min-max). Latency: the saved-and-loaded artifact against the"
        " static model, A/B alternating, one thread; speed-up = static time / dynamic time.",
        "",
        "| model | exits | MACs per exit / static | test exits (seed 0) | MAC reduction % |"
        " test drop (points) | speed-up batch 1 | speed-up batch 64 |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        costs = " / ".join(f"{c:,}" for c in m["macs_per_exit"])
        fractions = " / ".join(f"{100 * f:.0f}%" for f in m["runs"][0]["test_exit_fractions"])
        lines.append(
            f"| {name} | {', '.join(m['config']['exits'])} | {costs} / {m['static_macs']:,} |"
            f" {fractions} | {_cell(m['mac_reduction'], 100)} | {_cell(m['test_drop'], 1, 2)} |"
            f" {_cell(m['speedup_batch1'], 1, 2)} | {_cell(m['speedup_batch64'], 1, 2)} |"
        )
    lines.append("")
    for name, m in d["models"].items():
        verdict = "meets" if m["meets_target"] else "misses"
        never = "; ".join(
            f"seed {r['seed']}: {', '.join(r['never_fire'])}" for r in m["runs"] if r["never_fire"]
        )
        static = m["runs"][0]["static_test_accuracy"]
        lines.append(
            f"- {name}: {verdict} the target (>= {100 * s['target_mac_reduction']:.0f}% at <="
            f" {s['max_drop_points']} points); static test accuracy {static:.2f}%; validation"
            f" reduction {_cell(m['val_mac_reduction'], 100)}%; exits whose calibrated threshold"
            f" never fires: {never or 'none'}."
        )
        if m["task"] == "digits32":
            lines += [line for line in saturated_note(static) if line]
    lines += [
        "",
        "The same heads recalibrated to other validation budgets (`calibrate_exits`), measured"
        " on test: MAC reduction % / test drop (points), median over seeds:",
        "",
        "| model | " + " | ".join(f"val budget {b['max_drop']:g}" for b in _first_sweep(d)) + " |",
        "|---|" + "---:|" * len(_first_sweep(d)),
    ]
    for name, m in d["models"].items():
        cells = [
            f"{100 * b['mac_reduction']['median']:.0f}% / {b['test_drop']['median']:.2f}"
            for b in m["sweep"]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Anchors: BranchyNet 2-6x on CPU; Shallow-Deep Networks > 50% cost cut.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
