"""Benchmark 2 of one-shot NAS: zero-cost proxies against the trained truth of 288 architectures.

Run: .venv/bin/python bench/nas_zero_cost.py [--seeds 5] [--epoch-seeds 5] [--bootstrap 1000]
  ->  bench/results/nas_zero_cost.json

Every architecture of `tabular_space()` (`macro_net(**TABULAR_KWARGS, **candidate)`, digits
8x8) is scored by every proxy of `PROXIES` at initialisation, once per seed 0..seeds-1: the
seed fixes the initial weights (`torch.manual_seed(seed)` before building) and the minibatch
(the first batch of 64 of the train split shuffled with that seed). Truth: the table's mean
test accuracy over its 3 trained seeds (`bench/data/nas_tabular_digits.json`, 8 epochs); the
correlation with the mean val accuracy is recorded beside it.

Baselines: `params` and `flops` (in `PROXIES`), `random` (uniform scores, seeded), and
`one_epoch`: each architecture trained for one epoch (20 steps) with the table's recipe (AdamW,
lr 3e-3, weight decay 1e-4, batch 64, cosine over that epoch), scored by its val accuracy, once
per seed 0..epoch-seeds-1.

Per method: Spearman and Kendall tau-b per seed, their mean over seeds with a 95% bootstrap
interval (architectures resampled with replacement, the same resample for every seed), the
top-10% precision (share of the method's 29 best that are in the true top 10%, ties at the
boundary included), and the paired bootstrap interval of its Spearman minus that of `params`:
a proxy "beats params" only when that whole interval is above 0. Seconds per architecture are
the wall time of `proxy_score` (model copy included) on one torch thread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from scipy.stats import kendalltau, spearmanr

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.search.nas import PROXIES, TABULAR_KWARGS, macro_net, proxy_score
from netchisel.search.tabular import TabularBenchmark
from netchisel.zoo import data

TABLE = Path(__file__).parent / "data" / "nas_tabular_digits.json"
BATCH = 64
ONE_EPOCH = TrainSettings(epochs=1, lr=3e-3, weight_decay=1e-4, batch_size=BATCH)
TOP_FRACTION = 0.1


def minibatch(task: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(task.loader("train", shuffle=True, batch_size=BATCH, seed=seed)))
    return x, y


def build(candidate: dict[str, Any], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return macro_net(**TABULAR_KWARGS, **candidate)


def proxy_scores(
    candidates: list[dict[str, Any]], task: Any, seeds: int
) -> tuple[dict[str, list[list[float]]], dict[str, list[float]]]:
    """Per proxy: scores[seed][arch] and the seconds of every call."""
    scores: dict[str, list[list[float]]] = {name: [] for name in PROXIES}
    seconds: dict[str, list[float]] = {name: [] for name in PROXIES}
    for seed in range(seeds):
        x, y = minibatch(task, seed)
        for name in PROXIES:
            scores[name].append([])
        for i, candidate in enumerate(candidates):
            model = build(candidate, seed)
            for name in PROXIES:
                start = time.perf_counter()
                scores[name][-1].append(proxy_score(model, x, y, name, seed=seed))
                seconds[name].append(time.perf_counter() - start)
            if i % 48 == 47:
                print(f"seed {seed}: {i + 1}/{len(candidates)} scored", flush=True)
    return scores, seconds


def one_epoch_scores(
    candidates: list[dict[str, Any]], task: Any, seeds: int
) -> tuple[list[list[float]], list[float]]:
    """Val accuracy after one epoch of the table's recipe, per seed and architecture."""
    scores: list[list[float]] = []
    seconds: list[float] = []
    for seed in range(seeds):
        scores.append([])
        for i, candidate in enumerate(candidates):
            model = build(candidate, seed)
            start = time.perf_counter()
            fit(model, task, ONE_EPOCH, Context(task, quiet=True, seed=seed))
            scores[-1].append(task.evaluate(model, "val")["accuracy"])
            seconds.append(time.perf_counter() - start)
            if i % 48 == 47:
                print(f"one epoch, seed {seed}: {i + 1}/{len(candidates)}", flush=True)
    return scores, seconds


def top_precision(score: np.ndarray, truth: np.ndarray) -> float:
    """Share of the method's top 10% that is in the true top 10% (ties at its edge included)."""
    n = math.ceil(TOP_FRACTION * len(truth))
    threshold = np.sort(truth)[::-1][n - 1]
    chosen = np.argsort(-score, kind="stable")[:n]
    return float(np.mean(truth[chosen] >= threshold))


def correlations(scores: np.ndarray, truth: np.ndarray, index: np.ndarray) -> tuple[float, float]:
    """Mean over seeds (rows of `scores`) of Spearman and Kendall on the architectures `index`."""
    rho = [spearmanr(row[index], truth[index]).statistic for row in scores]
    tau = [kendalltau(row[index], truth[index]).statistic for row in scores]
    return float(np.mean(rho)), float(np.mean(tau))


def analyse(
    methods: dict[str, np.ndarray], truth: np.ndarray, val: np.ndarray, boots: int
) -> dict[str, dict[str, Any]]:
    """Correlations, bootstrap intervals, top-10% precision and the comparison with params."""
    n = len(truth)
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, n, n) for _ in range(boots)]
    boot = {
        name: np.array([correlations(s, truth, idx) for idx in samples])
        for name, s in methods.items()
    }
    out: dict[str, dict[str, Any]] = {}
    everything = np.arange(n)
    for name, s in methods.items():
        rho, tau = correlations(s, truth, everything)
        diff = boot[name][:, 0] - boot["params"][:, 0]
        low, high = np.percentile(diff, [2.5, 97.5])
        out[name] = {
            "spearman": round(rho, 4),
            "spearman_ci95": [
                round(float(v), 4) for v in np.percentile(boot[name][:, 0], [2.5, 97.5])
            ],
            "kendall": round(tau, 4),
            "kendall_ci95": [
                round(float(v), 4) for v in np.percentile(boot[name][:, 1], [2.5, 97.5])
            ],
            "spearman_by_seed": spread(
                [round(float(spearmanr(row, truth).statistic), 4) for row in s], by_seed=True
            ),
            "spearman_val": round(float(np.mean([spearmanr(row, val).statistic for row in s])), 4),
            "top10_precision": round(float(np.mean([top_precision(row, truth) for row in s])), 4),
            "minus_params_spearman_ci95": [round(float(low), 4), round(float(high), 4)],
            "beats_params": bool(low > 0),
            "worse_than_params": bool(high < 0),
            "seeds": len(s),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epoch-seeds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="first N architectures (tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = TabularBenchmark.load(TABLE)
    entries = list(bench.entries)[: args.limit]
    candidates = [dict(e.candidate) for e in entries]
    truth = np.array([e.test_mean for e in entries])
    val = np.array([e.val_mean for e in entries])
    task = data.task("digits")
    wall = time.perf_counter()
    scores, seconds = proxy_scores(candidates, task, args.seeds)
    epoch, epoch_seconds = one_epoch_scores(candidates, task, args.epoch_seeds)
    rng = np.random.default_rng(0)
    methods = {name: np.array(s) for name, s in scores.items()}
    methods["random"] = rng.random((args.seeds, len(candidates)))
    methods["one_epoch"] = np.array(epoch)
    timing = {name: s for name, s in seconds.items()} | {"one_epoch": epoch_seconds}
    results = analyse(methods, truth, val, args.bootstrap)
    for name, r in results.items():
        t = timing.get(name)
        r["seconds_per_arch"] = round(statistics.median(t), 5) if t else 0.0
        r["seconds_total"] = round(sum(t), 2) if t else 0.0
    proxies = [p for p in PROXIES if p not in ("params", "flops")]
    winners = [p for p in proxies if results[p]["beats_params"]]
    best = max(proxies, key=lambda p: results[p]["spearman"])
    verdict = (
        f"{', '.join(winners)} beat parameter count (paired bootstrap interval of the Spearman "
        "difference above 0)"
        if winners
        else "no zero-cost proxy beats parameter count (Spearman "
        f"{results['params']['spearman']:.3f}); the best proxy, {best}, has "
        f"{results[best]['spearman']:.3f}"
    )
    print(verdict)
    write_result(
        "nas_zero_cost",
        {
            "setup": {
                "table": TABLE.name,
                "architectures": len(candidates),
                "truth": "mean test accuracy over the table's 3 trained seeds (8 epochs)",
                "seeds": args.seeds,
                "seed_meaning": "torch.manual_seed(seed) before building; first train batch of "
                f"{BATCH} shuffled with that seed; proxy_score(seed=seed)",
                "one_epoch": {
                    "seeds": args.epoch_seeds,
                    "epochs": 1,
                    "lr": ONE_EPOCH.lr,
                    "weight_decay": ONE_EPOCH.weight_decay,
                    "batch_size": BATCH,
                },
                "bootstrap": args.bootstrap,
                "top_fraction": TOP_FRACTION,
                "torch_threads": 1,
            },
            "methods": results,
            "proxies": proxies,
            "baselines": ["params", "flops", "random", "one_epoch"],
            "any_proxy_beats_params": bool(winners),
            "verdict": verdict,
            "wall_seconds": round(time.perf_counter() - wall, 1),
        },
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/nas_zero_cost.json)."""
    s, m = d["setup"], d["methods"]
    lines = [
        "## One-shot NAS: zero-cost proxies on the tabular benchmark (`bench/nas_zero_cost.py`)",
        "",
        f"Every proxy scores all {s['architectures']} architectures of `tabular_space()` at "
        f"initialisation on one minibatch of 64 digits, seeds 0..{s['seeds'] - 1} (init and "
        f"minibatch); truth: {s['truth']}. Correlations are means over seeds with 95% "
        f"bootstrap intervals ({s['bootstrap']} resamples of the architectures); top-10%: share "
        "of a method's 29 best in the true top 10%; vs params: paired bootstrap interval of its "
        f"Spearman minus that of params. One epoch: seeds 0..{s['one_epoch']['seeds'] - 1}.",
        "",
        "| method | Spearman (95% CI) | Kendall (95% CI) | Spearman by seed (min-max) |"
        " top-10% precision | minus params (95% CI) | s / arch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sorted(m.items(), key=lambda kv: -kv[1]["spearman"]):
        lo, hi = r["spearman_ci95"]
        klo, khi = r["kendall_ci95"]
        by = r["spearman_by_seed"]
        dlo, dhi = r["minus_params_spearman_ci95"]
        lines.append(
            f"| {name} | {r['spearman']:.3f} ({lo:.3f} to {hi:.3f}) | {r['kendall']:.3f} "
            f"({klo:.3f} to {khi:.3f}) | {by['min']:.3f} to {by['max']:.3f} | "
            f"{r['top10_precision']:.2f} | {dlo:+.3f} to {dhi:+.3f} | "
            f"{r['seconds_per_arch']:.4f} |"
        )
    lines += ["", f"Verdict: {d['verdict']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
