"""Benchmark 4 of one-shot NAS: super-net + NSGA-II against multi-trial TPE at equal CPU time.

Run: .venv/bin/python bench/nas_oneshot_vs_trials.py  ->  bench/results/nas_oneshot_vs_trials.json

An accuracy-MACs search over `tabular_space()` on digits 8x8, seeds 0-2.

- One-shot: a `SuperNet` trained as in `bench/nas_supernet.py` (SPOS, 1,000 steps), then
  NSGA-II (`make_sampler("nsga2")`) runs 200 trials of `supernet_objective` with objectives
  accuracy (inherited weights, BatchNorm re-estimated) and MACs (one 8x8 image). Its cost is
  the CPU seconds of this process for both (one thread).
- Multi-trial: multi-objective TPE where each trial trains its candidate from scratch. The
  table (`bench/data/nas_tabular_digits.json`) already holds those trainings, so a trial reads
  the val accuracy of one training (table seed = search seed) and is charged that training's
  seconds (`train_seconds`, measured on one thread when the table was built). It runs until its
  charged seconds reach the one-shot cost (`1x`), and, to show where it catches up, 4x and 16x.

Each method reports its Pareto set (non-dominated by the values it saw). Quality is measured on
the truth: each reported architecture at its table mean val accuracy (3 trainings) and exact
MACs; the hypervolume of those points (reference: 50% accuracy, the table's largest MACs),
as a fraction of the hypervolume of the table's true front.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from nas_supernet import ARMS, OPTIMISER, PRIMARY, median_range

from netchisel.core.train import TrainSettings
from netchisel.search.nas import TABULAR_KWARGS, tabular_space
from netchisel.search.nas.supernet import SuperNet
from netchisel.search.nas.supernet_train import supernet_objective, train_supernet
from netchisel.search.objectives import parse_objectives
from netchisel.search.strategies import make_sampler
from netchisel.search.tabular import TabularBenchmark, candidate_key
from netchisel.zoo import data

TABLE = Path(__file__).parent / "data" / "nas_tabular_digits.json"
STEPS = ARMS[PRIMARY]["steps"]  # the super-net of bench/nas_supernet.py's primary arm
ONESHOT_TRIALS = 200
BUDGETS = (1, 4, 16)
REFERENCE_ACCURACY = 50.0


def front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (accuracy up, MACs down), duplicates kept once."""
    keep: list[int] = []
    for i, (a, m) in enumerate(points):
        dominated = any(
            (b >= a and n <= m) and (b > a or n < m) for j, (b, n) in enumerate(points) if j != i
        )
        if not dominated and all(points[k] != (a, m) for k in keep):
            keep.append(i)
    return keep


def hypervolume(points: list[tuple[float, float]], ref_macs: float) -> float:
    """Area dominated by (accuracy, MACs) points above REFERENCE_ACCURACY, below ref_macs."""
    best = sorted((points[i] for i in front(points)), key=lambda p: p[1])
    area = 0.0
    for k, (acc, macs) in enumerate(best):
        right = best[k + 1][1] if k + 1 < len(best) else ref_macs
        area += max(0.0, acc - REFERENCE_ACCURACY) * max(0.0, right - macs)
    return area


def truth_hypervolume(candidates: list[dict[str, Any]], bench: TabularBenchmark) -> float:
    entries = [bench.lookup(c) for c in candidates]
    ref = max(e.macs for e in bench.entries)
    return hypervolume([(e.val_mean, float(e.macs)) for e in entries], ref)


def one_shot(seed: int, bench: TabularBenchmark) -> dict[str, Any]:
    task = data.task("digits")
    cpu = time.process_time()
    torch.manual_seed(seed)
    net = SuperNet(tabular_space(), **TABULAR_KWARGS)
    settings = TrainSettings(steps=STEPS, **OPTIMISER)
    train_supernet(net, task, settings, seed=seed, sandwich=ARMS[PRIMARY]["sandwich"])
    trained = time.process_time() - cpu
    goals = parse_objectives({"objectives": ["accuracy", "macs"]})
    study = optuna.create_study(
        directions=goals.directions(), sampler=make_sampler("nsga2", seed=seed)
    )
    study.optimize(supernet_objective(net, task, goals), n_trials=ONESHOT_TRIALS)
    cost = time.process_time() - cpu
    trials = [t for t in study.trials if t.values is not None]
    seen = [(t.values[0], t.values[1]) for t in trials]
    chosen = [trials[i].user_attrs["candidate"] for i in front(seen)]
    for i, candidate in zip(front(seen), chosen, strict=True):  # the profile's MACs are exact
        assert bench.lookup(candidate).macs == trials[i].values[1]
    return {
        "seed": seed,
        "cpu_seconds": round(cost, 1),
        "train_cpu_seconds": round(trained, 1),
        "front_size": len(chosen),
        "hypervolume": truth_hypervolume(chosen, bench),
        "best_truth_on_front": max(bench.lookup(c).val_mean for c in chosen),
    }


def multi_trial(
    seed: int, budget: float, bench: TabularBenchmark, rows: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """TPE charged each trial's one training from the table (`rows` by candidate key),
    until `budget` seconds."""
    spent = 0.0
    space = bench.space

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        nonlocal spent
        entry = bench.lookup(space.suggest(trial))
        row = rows[candidate_key(entry.candidate)]
        spent += row["train_seconds"][seed % 3]
        trial.set_user_attr("candidate", entry.candidate)
        if spent >= budget:
            trial.study.stop()
        return row["val"][seed % 3], float(entry.macs)

    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler("tpe", seed=seed)
    )
    study.optimize(objective, n_trials=10_000)
    trials = [t for t in study.trials if t.values is not None]
    seen = [(t.values[0], t.values[1]) for t in trials]
    chosen = [trials[i].user_attrs["candidate"] for i in front(seen)]
    return {
        "seed": seed,
        "budget_cpu_seconds": round(budget, 1),
        "trainings": len(trials),
        "front_size": len(chosen),
        "hypervolume": truth_hypervolume(chosen, bench),
        "best_truth_on_front": max(bench.lookup(c).val_mean for c in chosen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bench = TabularBenchmark.load(TABLE)
    rows = {candidate_key(r["candidate"]): r for r in json.loads(TABLE.read_text())["rows"]}
    ceiling = truth_hypervolume([e.candidate for e in bench.entries], bench)
    start = time.perf_counter()
    oneshot, trials = [], []
    for seed in args.seeds:
        shot = one_shot(seed, bench)
        shot["hypervolume_fraction"] = round(shot.pop("hypervolume") / ceiling, 4)
        oneshot.append(shot)
        print("one-shot", shot, flush=True)
        for factor in BUDGETS:
            run = multi_trial(seed, factor * shot["cpu_seconds"], bench, rows)
            run["hypervolume_fraction"] = round(run.pop("hypervolume") / ceiling, 4)
            trials.append({"budget_factor": factor, **run})
            print("tpe", factor, run, flush=True)
    payload: dict[str, Any] = {
        "setup": {
            "table": TABLE.name,
            "objectives": ["accuracy (val)", "macs (one 8x8 image)"],
            "one_shot": f"SuperNet SPOS {STEPS} steps + NSGA-II {ONESHOT_TRIALS} trials",
            "multi_trial": "multi-objective TPE, one training per trial (read from the table, "
            "charged its train_seconds)",
            "budgets": list(BUDGETS),
            "reference_point": {"accuracy": REFERENCE_ACCURACY, "macs": "table max"},
            "truth": "table mean val accuracy over 3 trainings, exact MACs",
            "seeds": args.seeds,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        "one_shot": {
            "hypervolume_fraction": spread([r["hypervolume_fraction"] for r in oneshot]),
            "cpu_seconds": spread([r["cpu_seconds"] for r in oneshot]),
            "runs": oneshot,
        },
        "multi_trial": {
            str(f): {
                "hypervolume_fraction": spread(
                    [r["hypervolume_fraction"] for r in trials if r["budget_factor"] == f]
                ),
                "trainings": spread([r["trainings"] for r in trials if r["budget_factor"] == f]),
            }
            for f in BUDGETS
        },
        "runs": trials,
    }
    one = payload["one_shot"]["hypervolume_fraction"]["median"]
    equal = payload["multi_trial"]["1"]["hypervolume_fraction"]["median"]
    payload["one_shot_better_at_equal_cpu"] = one > equal
    print(write_result("nas_oneshot_vs_trials", payload))


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/nas_oneshot_vs_trials.json)."""
    s, o = d["setup"], d["one_shot"]

    def mm(x: dict[str, Any]) -> str:
        return median_range(x, 3)

    lines = [
        "## One-shot vs multi-trial NAS at equal CPU time (`bench/nas_oneshot_vs_trials.py`)",
        "",
        f"Accuracy-MACs search over `tabular_space()` (digits 8x8), seeds {s['seeds']}. "
        f"One-shot: {s['one_shot']}; multi-trial: {s['multi_trial']}, at 1x, 4x and 16x the "
        "one-shot's CPU seconds. Quality: hypervolume of each reported Pareto set at the truth "
        f"({s['truth']}), as a fraction of the table's true front; median (min-max).",
        "",
        "| method | CPU budget | trainings | hypervolume fraction |",
        "|---|---:|---:|---:|",
        f"| super-net + NSGA-II | {o['cpu_seconds']['median']:.0f} s | 1 super-net |"
        f" {mm(o['hypervolume_fraction'])} |",
    ]
    for factor, r in d["multi_trial"].items():
        lines.append(
            f"| TPE, one training per trial | {factor}x | {r['trainings']['median']:g} |"
            f" {mm(r['hypervolume_fraction'])} |"
        )
    verdict = "better" if d["one_shot_better_at_equal_cpu"] else "not better"
    lines += ["", f"At equal CPU time the one-shot front is {verdict} (median).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
