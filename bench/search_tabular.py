"""Benchmark 1 of search: every strategy on the tabular NAS benchmark, regret vs evaluations.

Run: .venv/bin/python bench/search_tabular.py [--seeds 50] [--evaluations 100] [--workers 2]
  ->  bench/results/search_tabular.json and search_tabular.svg

The table (`bench/data/nas_tabular_digits.json`, built by `bench/search_tabular_build.py`)
holds every one of the 288 architectures of `tabular_space()` trained on digits with three
seeds. Each strategy of `STRATEGIES` (grid excluded: the space has conditional dimensions,
which Optuna's GridSampler cannot enumerate, and a fixed enumeration order says nothing about
a strategy) searches it with its default options for `--evaluations` trials, once per seed
(0 .. seeds-1). An evaluation is one trial: a lookup of the candidate's mean val accuracy over
the three training seeds; a repeated candidate counts again, as it would cost a training.

Regret is in points of mean val accuracy, the value the search maximises: the table's best
minus the best found so far. The test accuracy of the incumbent (the best-by-val architecture
found so far) is reported beside it, never used to select. Target: TPE, regularized evolution
and the GA reach within 0.3 points of the optimum in fewer evaluations (median over seeds)
than random search; runs that never get there count as not reached (above every number).
Random search's median over 50 seeds is noisy (evaluations to a hit are geometric), so the
reference is random search over 500 seeds (`--random-seeds`; its first 50 are its table row).
Beside the median: a one-sided Mann-Whitney U p-value against those 500 runs, the distinct
architectures evaluated until then (what a search that caches results would train), and
random search's theoretical median (Optuna's RandomSampler draws each active dimension
uniformly).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from common import RESULTS, write_result  # bench/ is on sys.path when a script in it runs
from scipy.stats import mannwhitneyu

from netchisel.search.strategies import STRATEGIES, make_sampler
from netchisel.search.tabular import (
    TabularBenchmark,
    candidate_key,
    evaluations_to_reach,
    incumbent_test_regret,
    regret_curve,
)

TABLE = Path(__file__).parent / "data" / "nas_tabular_digits.json"
TOLERANCE = 0.3
TARGETED = ("tpe", "evolution", "ga")
CHECKPOINTS = (10, 25, 50, 100)


def run(job: tuple[str, int, int, str]) -> dict[str, Any]:
    """One search: strategy, seed, evaluations; returns its value and test sequences."""
    name, seed, evaluations, table = job
    torch.set_num_threads(1)  # the GP sampler fits with torch; one thread per worker
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")  # experimental-feature and fallback notes, per trial
    bench = TabularBenchmark.load(table)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=seed))
    start = time.perf_counter()
    study.optimize(bench.objective, n_trials=evaluations)
    seconds = time.perf_counter() - start
    trials = study.trials
    return {
        "strategy": name,
        "seed": seed,
        "values": [t.value for t in trials],
        "tests": [t.user_attrs["test_accuracy"] for t in trials],
        "keys": [candidate_key(t.params) for t in trials],
        "seconds": seconds,
    }


def summarise(runs: list[dict[str, Any]], bench: TabularBenchmark) -> dict[str, Any]:
    best_test = bench.best.test_mean
    curves = np.array([regret_curve(r["values"], bench.optimum) for r in runs])
    test_curves = np.array(
        [incumbent_test_regret(r["values"], r["tests"], best_test) for r in runs]
    )
    reach = [evaluations_to_reach(list(c), TOLERANCE) for c in curves]
    ranked = [math.inf if e is None else e for e in reach]
    median = statistics.median(ranked)
    # A search that caches its results trains each distinct architecture once.
    distinct = [
        math.inf if e is None else len(set(r["keys"][:e])) for e, r in zip(reach, runs, strict=True)
    ]
    median_distinct = statistics.median(distinct)
    return {
        "evaluations_to_reach": reach,
        "median_evaluations": None if math.isinf(median) else median,
        "reached": sum(e is not None for e in reach),
        "runs": len(runs),
        "median_regret_at": {str(k): float(np.median(curves[:, k - 1])) for k in CHECKPOINTS},
        "mean_regret_at": {str(k): float(np.mean(curves[:, k - 1])) for k in CHECKPOINTS},
        "median_test_regret_at": {
            str(k): float(np.median(test_curves[:, k - 1])) for k in CHECKPOINTS
        },
        "median_distinct_to_reach": None if math.isinf(median_distinct) else median_distinct,
        "median_distinct_architectures": statistics.median(len(set(r["keys"])) for r in runs),
        "median_seconds_per_run": round(statistics.median(r["seconds"] for r in runs), 2),
        "curve_mean": [round(float(v), 4) for v in np.mean(curves, axis=0)],
        "curve_median": [round(float(v), 4) for v in np.median(curves, axis=0)],
        "curve_q25": [round(float(v), 4) for v in np.quantile(curves, 0.25, axis=0)],
        "curve_q75": [round(float(v), 4) for v in np.quantile(curves, 0.75, axis=0)],
    }


def versus_random(ours: list[int | None], random: list[int | None], n: int) -> float:
    """One-sided Mann-Whitney U p-value that `ours` needs fewer evaluations than random."""
    a = [n + 1 if e is None else e for e in ours]
    b = [n + 1 if e is None else e for e in random]
    return float(mannwhitneyu(a, b, alternative="less").pvalue)


def random_expectation(bench: TabularBenchmark) -> dict[str, Any]:
    """Draws random search needs: per draw it hits a good architecture with probability p.

    Optuna's RandomSampler draws each active dimension uniformly, so an architecture's
    probability is the product of 1 / choices over its dimensions (a 2-block stage is rarer
    than a 1-block one), not 1 / size.
    """
    good = [e for e in bench.entries if e.val_mean >= bench.optimum - TOLERANCE - 1e-9]
    dims = bench.space.dimensions
    p = sum(math.prod(1 / len(dims[k].values()) for k in e.candidate) for e in good)
    return {
        "architectures_within_tolerance": len(good),
        "hit_probability": round(p, 5),
        "median_draws": math.ceil(math.log(0.5) / math.log(1 - p)),
        "mean_draws": round(1 / p, 1),
        "uniform_median_draws": math.ceil(
            math.log(0.5) / math.log(1 - len(good) / len(bench.entries))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--random-seeds", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--strategies", nargs="*", default=[s for s in STRATEGIES if s != "grid"])
    parser.add_argument("--output", default="search_tabular")
    args = parser.parse_args()
    bench = TabularBenchmark.load(args.table)
    n = args.evaluations
    jobs = [(s, seed, n, args.table) for s in args.strategies for seed in range(args.seeds)]
    # Random search is cheap and its 50-seed median is noisy (a geometric distribution):
    # the reference is its median over many more seeds.
    jobs += [("random", seed, n, args.table) for seed in range(args.seeds, args.random_seeds)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        runs = pool.map(run, jobs, chunksize=1)
    wall = time.perf_counter() - start
    by_strategy = {
        s: [r for r in runs if r["strategy"] == s and r["seed"] < args.seeds]
        for s in args.strategies
    }
    results = {s: summarise(rs, bench) for s, rs in by_strategy.items()}
    reference = summarise([r for r in runs if r["strategy"] == "random"], bench)
    random_reach = reference["evaluations_to_reach"]
    random_median = reference["median_evaluations"]
    for name, result in results.items():
        median = result["median_evaluations"]
        result["beats_random"] = median is not None and (
            random_median is None or median < random_median
        )
        if name != "random":
            result["p_fewer_than_random"] = round(
                versus_random(result["evaluations_to_reach"], random_reach, n), 4
            )
    entries = sorted(bench.entries, key=lambda e: e.val_mean)
    vals = [e.val_mean for e in entries]
    best = bench.best
    payload = {
        "setup": {
            "table": str(Path(args.table).name),
            "table_meta": {k: v for k, v in bench.meta.items() if k != "machine"},
            "architectures": len(bench.entries),
            "evaluations": n,
            "seeds": args.seeds,
            "tolerance_points": TOLERANCE,
            "targeted": list(TARGETED),
            "strategies": args.strategies,
            "options": "defaults of each sampler",
            "regret": "points of mean val accuracy (3 training seeds): optimum - best so far",
            "wall_seconds": round(wall, 1),
            "reference": f"random search over seeds 0..{args.random_seeds - 1}",
        },
        "table": {
            "optimum_val": round(bench.optimum, 4),
            "optimum_candidate": best.candidate,
            "optimum_test": round(best.test_mean, 4),
            "optimum_params": best.params,
            "best_test_in_table": round(max(e.test_mean for e in entries), 4),
            "val_quantiles": {
                q: round(float(np.quantile(vals, float(q))), 2)
                for q in ("0", "0.25", "0.5", "0.75", "0.9", "1")
            },
            "random_expectation": random_expectation(bench),
        },
        "random_reference": {
            k: reference[k]
            for k in (
                "median_evaluations",
                "median_distinct_to_reach",
                "reached",
                "runs",
                "evaluations_to_reach",
                "curve_mean",
            )
        },
        "strategies": results,
        "target_met": {s: results[s]["beats_random"] for s in TARGETED if s in results},
    }
    path = write_result(args.output, payload)
    plot(payload, RESULTS / f"{args.output}.svg")
    for name, r in results.items():
        print(
            f"{name:10s} median evals to {TOLERANCE}: {r['median_evaluations']}  "
            f"reached {r['reached']}/{r['runs']}  regret@25 {r['median_regret_at']['25']:.2f}  "
            f"beats random: {r['beats_random']}"
        )
    print(f"-> {path}")


def plot(payload: dict[str, Any], path: Path) -> None:
    """Left: mean val regret vs evaluations. Right: fraction of runs within the tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.get_cmap("tab10")
    for i, (name, r) in enumerate(payload["strategies"].items()):
        style = {"color": colors(i), "lw": 2.2 if name in (*TARGETED, "random") else 1.0}
        if name == "random":
            style |= {"color": "black", "ls": "--"}
            name = f"random, {r['runs']} seeds"
        n = len(r["curve_mean"])
        left.plot(range(1, n + 1), r["curve_mean"], label=name, **style)
        reach = sorted(e for e in r["evaluations_to_reach"] if e is not None)
        fraction = [sum(e <= k for e in reach) / r["runs"] for k in range(1, n + 1)]
        right.plot(range(1, n + 1), fraction, label=name, **style)
    ref = payload["random_reference"]
    n = len(ref["curve_mean"])
    label = f"random, {ref['runs']} seeds"
    left.plot(range(1, n + 1), ref["curve_mean"], color="black", ls=":", lw=1.5, label=label)
    reach = [e for e in ref["evaluations_to_reach"] if e is not None]
    fraction = [sum(e <= k for e in reach) / ref["runs"] for k in range(1, n + 1)]
    right.plot(range(1, n + 1), fraction, color="black", ls=":", lw=1.5, label=label)
    s = payload["setup"]
    tol = s["tolerance_points"]
    left.axhline(tol, color="gray", ls=":", label=f"{tol} points")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("evaluations (trials)")
    left.set_ylabel("val regret, points (mean over seeds; 0 not drawn)")
    right.axhline(0.5, color="gray", ls=":")
    right.set_xlabel("evaluations (trials)")
    right.set_ylabel(f"fraction of runs within {tol} points of the optimum")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Tabular NAS on digits: {s['architectures']} architectures, {s['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/search_tabular.json)."""
    s, t = d["setup"], d["table"]
    meta = s["table_meta"]
    expect = t["random_expectation"]
    tol = s["tolerance_points"]
    ref = d["random_reference"]

    def count(x: float | None) -> str:
        return "not reached" if x is None else f"{x:g}"

    lines = [
        "## Search: strategies on the tabular NAS benchmark (`bench/search_tabular.py`)",
        "",
        f"Table `bench/data/{s['table']}`: all {s['architectures']} architectures of "
        f"`tabular_space()` trained on digits (8x8), {meta['budget']['steps']} steps, seeds "
        f"{meta['seeds']}. Optimum: {t['optimum_val']:.2f}% mean val ({t['optimum_test']:.2f}% "
        f"test); {expect['architectures_within_tolerance']} architectures lie within {tol} "
        f"points of it. Each strategy (default options) runs {s['evaluations']} evaluations "
        f"with seeds 0..{s['seeds'] - 1}; regret = {s['regret']}. Target: "
        f"{', '.join(s['targeted'])} reach {tol} points in fewer evaluations (median) than "
        f"random. Reference: {s['reference']}, median {count(ref['median_evaluations'])} "
        f"evaluations ({count(ref['median_distinct_to_reach'])} distinct architectures), "
        f"reached in {ref['reached']}/{ref['runs']}; in theory (each active dimension uniform, "
        f"p = {expect['hit_probability']} per draw) {expect['median_draws']}. p: one-sided "
        "Mann-Whitney U test that a strategy needs fewer evaluations than the reference runs. "
        "Plot: `bench/results/search_tabular.svg`.",
        "",
        f"| strategy | median evals to {tol} | distinct archs to {tol} | reached | p |"
        " median regret @10 | @25 | @50 | @100 | test regret @100 | s / run | beats random |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in d["strategies"].items():
        at, test = r["median_regret_at"], r["median_test_regret_at"]
        p = r.get("p_fewer_than_random")
        verdict = "no"
        if r["beats_random"]:
            verdict = "yes" if p is not None and p < 0.05 else f"median only (p {p:.2f})"
        lines.append(
            f"| {name} | {count(r['median_evaluations'])} |"
            f" {count(r['median_distinct_to_reach'])} | {r['reached']}/{r['runs']} |"
            f" {'' if p is None else '<0.001' if p < 0.001 else f'{p:.3f}'} |"
            f" {at['10']:.2f} | {at['25']:.2f} | {at['50']:.2f} | {at['100']:.2f} |"
            f" {test['100']:+.2f} | {r['median_seconds_per_run']:g} | {verdict} |"
        )
    missed = [name for name, met in d["target_met"].items() if not met]
    lines += [
        "",
        f"Target missed by: {', '.join(missed)}." if missed else "Target met by all three.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
