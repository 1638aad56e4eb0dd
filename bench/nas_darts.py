"""DARTS on MNIST-1D (issue 18, benchmark 3): first and second order, derived cells against
random cells of the same space and against the published CNN, and the collapse trace.

Run: .venv/bin/python bench/nas_darts.py   ->  bench/results/nas_darts.json

Search (`darts_search`, one thread): cells of `cell_space(nodes=NODES)` over all six ops (plus
`none`), width `SEARCH_WIDTH`, one cell per stage, 2 reductions (5 cells), batches of 64; the
3,500 training sequences are split into two fixed halves (weights / alphas); an epoch is one
pass over the weights' half (27 steps). Liu et al.'s optimisers (SGD 0.025 cosine, momentum
0.9, weight decay 3e-4; Adam on alpha, betas (0.5, 0.999), weight decay 1e-3) except the alpha
learning rate, `ALPHA_LR` = 10x theirs, because these searches are about 100x shorter than
their 50 CIFAR-10 epochs. No mitigation in the main searches: plain DARTS.

Retraining, the same for every cell: the largest `width` at which `cell_net` has at most
`BUDGET` parameters (the zoo's `mnist1d_cnn`, 5,210), `RETRAIN_STEPS` steps of Adam (AdamW,
weight decay 0) lr 1e-2 with a cosine decay, batches of 100, seeds 0-2 (initial weights and
data order); test accuracy on the 1,000 test sequences, validation on 500. Random cells:
`cell_space(nodes=NODES).sample(random.Random(k))`, k = 0..4, same budget, same training. The
CNN trains twice: with this same short training, and with its own zoo recipe (6,000 steps,
lr 1e-2 constant); the MNIST-1D paper reports 94% for it (trained on 4,000 sequences).

Collapse: one first-order search `COLLAPSE_EPOCHS` epochs long without mitigation, then the
same search with DARTS-ES (window `ES_WINDOW`, factor 1.3); the searches are deterministic and
the mitigation does not change the trajectory before it stops, so the mitigated trace must be
a prefix of the plain one (checked). "Collapsed" = more than half of the derived normal cell's
ops are skips. The P-DARTS skip limit (at most 2) is reported on the same alphas.

Search cost is CPU time of the process (one thread: CPU-minutes); wall time on this shared
2-core machine is larger and is recorded beside.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import torch
from common import (
    load_result,
    spread,
    write_result,
)  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.core.context import Context
from netchisel.core.task import Task
from netchisel.core.train import TrainSettings, fit
from netchisel.measure import count_flops
from netchisel.search.nas import DartsConfig, DartsResult, cell_net, cell_space, darts_search
from netchisel.search.nas.darts_derive import derive, skip_edges
from netchisel.zoo import data, models, train

NODES = 2
SEARCH_WIDTH = 4
ALPHA_LR = 3e-3
EPOCHS = 5
COLLAPSE_EPOCHS = 12
ES_WINDOW = 3
BUDGET = 5210
RETRAIN_STEPS = 400
RANDOM_CELLS = 5
PUBLISHED_CNN = 94.0
FIXED = {"nodes": NODES, "reductions": 2, "image_size": 40, "dims": 1}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def budget_width(candidate: dict[str, Any]) -> int:
    """The largest width whose cell_net has at most BUDGET parameters."""
    fits = [w for w in range(1, 33) if params(cell_net(**candidate, **FIXED, width=w)) <= BUDGET]
    return max(fits)


def accuracies(model: nn.Module, task: Task) -> dict[str, float]:
    return {s: task.evaluate(model, s)["accuracy"] for s in ("val", "test")}


def retrain(candidate: dict[str, Any], task: Task, seeds: list[int], steps: int) -> dict[str, Any]:
    width = budget_width(candidate)
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = cell_net(**candidate, **FIXED, width=width)
        settings = TrainSettings(steps=steps, lr=1e-2, schedule="cosine", batch_size=100)
        started = time.process_time()
        fit(model, task, settings, Context(task, quiet=True, seed=seed))
        runs.append(
            {"seed": seed, **accuracies(model, task), "cpu_s": time.process_time() - started}
        )
    model = cell_net(**candidate, **FIXED, width=width)
    return {
        "width": width,
        "params": params(model),
        "macs": count_flops(model, torch.zeros(1, 1, 40)).macs,
        "normal_skips": len(skip_edges(candidate, NODES)),
        "runs": runs,
        "test": spread([r["test"] for r in runs]),
        "val": spread([r["val"] for r in runs]),
    }


def trace_of(result: DartsResult) -> list[dict[str, Any]]:
    return [
        {
            "epoch": r.epoch,
            "skips": r.skips,
            "eigenvalue": r.eigenvalue,
            "val_accuracy": r.val_accuracy,
            "train_loss": r.train_loss,
            "val_loss": r.val_loss,
            "expected_macs": r.expected_macs,
        }
        for r in result.trace
    ]


def search(task: Task, config: DartsConfig) -> tuple[DartsResult, dict[str, Any]]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = darts_search(task, config)
    entry = {
        "order": config.order,
        "seed": config.seed,
        "epochs_run": len(result.trace),
        "stopped_at": result.stopped_at,
        "cpu_minutes": (time.process_time() - cpu) / 60,
        "wall_s": time.perf_counter() - wall,
        "candidate": result.candidate,
        "normal_skips": len(skip_edges(result.candidate, NODES)),
        "trace": trace_of(result),
    }
    print(
        f"search order {config.order} seed {config.seed}: {entry['cpu_minutes']:.2f} CPU-min, "
        f"skips {[r['skips'] for r in entry['trace']]}, eig "
        f"{[round(r['eigenvalue'], 3) for r in entry['trace']]}",
        flush=True,
    )
    return result, entry


def cnn(task: Task, seeds: list[int], settings: TrainSettings) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = models.build("mnist1d_cnn")
        fit(model, task, settings, Context(task, quiet=True, seed=seed))
        runs.append({"seed": seed, **accuracies(model, task)})
    return {"runs": runs, "test": spread([r["test"] for r in runs])}


def collapse(task: Task, base: DartsConfig, epochs: int) -> dict[str, Any]:
    long = base.with_changes(epochs=epochs, seed=0)
    plain, plain_entry = search(task, long)
    mitigated, es_entry = search(
        task, long.with_changes(mitigation="early_stop", es_window=ES_WINDOW)
    )
    prefix = [r["eigenvalue"] for r in es_entry["trace"]] == [
        r["eigenvalue"] for r in plain_entry["trace"][: len(es_entry["trace"])]
    ]
    limited = []
    ops = plain.ops
    for epoch in plain.alpha_history:
        normal, reduce = torch.tensor(epoch["normal"]), torch.tensor(epoch["reduce"])
        limited.append(len(skip_edges(derive(normal, reduce, ops, NODES, max_skips=2), NODES)))
    collapsed = plain_entry["normal_skips"] > NODES
    return {
        "plain": plain_entry,
        "early_stop": es_entry,
        "early_stop_trace_is_prefix_of_plain": prefix,
        "skip_limit_skips_per_epoch": limited,
        "collapse_rule": "more than half of the derived normal cell's 2*nodes ops are skips",
        "plain_collapsed": collapsed,
        "early_stop_collapsed": es_entry["normal_skips"] > NODES,
        "plain_result_candidate": plain.candidate,
        "early_stop_candidate": mitigated.candidate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--retrain-steps", type=int, default=RETRAIN_STEPS)
    parser.add_argument("--random-cells", type=int, default=RANDOM_CELLS)
    parser.add_argument("--collapse-epochs", type=int, default=COLLAPSE_EPOCHS)
    parser.add_argument("--skip-collapse", action="store_true")
    parser.add_argument(
        "--collapse-only",
        action="store_true",
        help="run only the collapse searches and add them to the existing JSON as collapse_long",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = data.task("mnist1d")
    started = time.perf_counter()
    base = DartsConfig(
        epochs=args.epochs, nodes=NODES, width=SEARCH_WIDTH, reductions=2, batch_size=64,
        alpha_lr=ALPHA_LR, eigen_iterations=6,
    )  # fmt: skip
    if args.collapse_only:
        previous = load_result("nas_darts")
        if previous is None:
            raise SystemExit("run bench/nas_darts.py in full first")
        previous.pop("benchmark"), previous.pop("machine")
        extra = collapse(task, base, args.collapse_epochs)
        extra["command"] = (
            f"bench/nas_darts.py --collapse-only --collapse-epochs {args.collapse_epochs}"
        )
        extra["wall_s"] = round(time.perf_counter() - started, 1)
        print(f"-> {write_result('nas_darts', {**previous, 'collapse_long': extra})}")
        return

    searches, derived = [], []
    for order in (1, 2):
        for seed in args.search_seeds:
            result, entry = search(task, base.with_changes(order=order, seed=seed))
            searches.append(entry)
            cell = retrain(result.candidate, task, args.train_seeds, args.retrain_steps)
            derived.append({"order": order, "search_seed": seed, **cell})
            print(
                f"  derived: width {cell['width']}, {cell['params']} params, test {cell['test']}",
                flush=True,
            )

    randoms = []
    for k in range(args.random_cells):
        candidate = cell_space(nodes=NODES).sample(random.Random(k))
        cell = retrain(candidate, task, args.train_seeds, args.retrain_steps)
        randoms.append({"sample_seed": k, "candidate": candidate, **cell})
        print(f"random {k}: width {cell['width']}, test {cell['test']}", flush=True)

    short = TrainSettings(steps=args.retrain_steps, lr=1e-2, schedule="cosine", batch_size=100)
    recipe = train.MNIST1D_SETTINGS
    zoo = TrainSettings(steps=recipe.steps, lr=recipe.lr, schedule=recipe.schedule,
                        weight_decay=recipe.weight_decay, batch_size=100)  # fmt: skip
    baseline = {
        "params": params(models.build("mnist1d_cnn")),
        "published": PUBLISHED_CNN,
        "same_training": cnn(task, args.train_seeds, short),
        "zoo_recipe": {"steps": recipe.steps, **cnn(task, args.train_seeds, zoo)},
    }
    print(f"cnn: {baseline['same_training']['test']} / {baseline['zoo_recipe']['test']}")

    collapse_run = None if args.skip_collapse else collapse(task, base, args.collapse_epochs)

    random_median = statistics.median(r["test"]["median"] for r in randoms)
    by_order = {}
    for order in (1, 2):
        cells = [d for d in derived if d["order"] == order]
        medians = [d["test"]["median"] for d in cells]
        by_order[str(order)] = {
            "cell_medians": medians,
            "median": statistics.median(medians),
            "beats_random_median": statistics.median(medians) > random_median,
            "cells_above_random_median": sum(m > random_median for m in medians),
            "search_cpu_minutes": spread(
                [s["cpu_minutes"] for s in searches if s["order"] == order]
            ),
        }
    best = max(derived, key=lambda d: d["test"]["median"])
    result = {
        "setup": {
            "task": "mnist1d (3,500 train / 500 val / 1,000 test)",
            "space": f"cell_space(nodes={NODES}), ops {list(base.ops)} + none",
            "search": {
                "epochs": args.epochs,
                "steps_per_epoch": 27,
                "width": SEARCH_WIDTH,
                "cells": "1 per stage, 2 reductions",
                "batch_size": 64,
                "alpha_lr": ALPHA_LR,
                "w_lr": base.w_lr,
                "eigen_iterations": base.eigen_iterations,
                "mitigation": "none",
            },
            "retrain": {
                "budget_params": BUDGET,
                "width_rule": "largest width with params <= budget",
                "steps": args.retrain_steps,
                "optimizer": "adamw (weight decay 0)",
                "lr": 1e-2,
                "schedule": "cosine",
                "batch_size": 100,
            },
            "search_seeds": args.search_seeds,
            "train_seeds": args.train_seeds,
            "random_cells": args.random_cells,
            "threads": torch.get_num_threads(),
        },
        "searches": searches,
        "derived": derived,
        "random": randoms,
        "random_median": random_median,
        "cnn": baseline,
        "by_order": by_order,
        "best_derived": {k: best[k] for k in ("order", "search_seed", "params", "test")},
        "targets": {
            "beats_random_median": {k: v["beats_random_median"] for k, v in by_order.items()},
            "reaches_94_within_cnn_params": any(
                d["test"]["median"] >= PUBLISHED_CNN and d["params"] <= BUDGET for d in derived
            ),
        },
        "collapse": collapse_run,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = write_result("nas_darts", result)
    print(f"random median {random_median:.1f}; by order {by_order}; -> {path}")


def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def _noise_note(d: dict[str, Any]) -> str:
    randoms = [r["test"]["median"] for r in d["random"]]
    darts = [c["test"]["median"] for c in d["derived"]]
    if max(randoms) < min(darts):
        return f"Every DARTS cell beats every random cell (best random {max(randoms):.1f}%)."
    return (
        f"The best random cell ({max(randoms):.1f}%) lies inside the DARTS cells' range "
        f"({min(darts):.1f}-{max(darts):.1f}%): against good random cells the difference is "
        f"within noise; what the search avoids is the weak ones (worst random {min(randoms):.1f}%)."
    )


def _collapse_note(col: dict[str, Any]) -> str:
    p, e = col["plain"], col["early_stop"]
    return (
        f"Collapse run, first order, {len(p['trace'])} epochs, seed 0: normal-cell skips per epoch "
        f"{[t['skips'] for t in p['trace']]}, dominant alpha-Hessian eigenvalue "
        f"{[round(t['eigenvalue'], 2) for t in p['trace']]}: "
        + ("collapsed" if col["plain_collapsed"] else "no collapse")
        + f" (collapse: {col['collapse_rule']}). DARTS-ES stopped at epoch {e['stopped_at']} and "
        f"returned a cell with {e['normal_skips']} skips; the P-DARTS limit would give "
        f"{col['skip_limit_skips_per_epoch']} skips per epoch."
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/nas_darts.json."""
    s = d["setup"]
    r = s["retrain"]
    lines = [
        "## NAS: DARTS on MNIST-1D (`bench/nas_darts.py`)",
        "",
        f"`python bench/nas_darts.py` ({d['date']}). Space {s['space']}; search width "
        f"{s['search']['width']}, {s['search']['epochs']} epochs of "
        f"{s['search']['steps_per_epoch']} steps, alpha lr {s['search']['alpha_lr']}, "
        f"no mitigation; search seeds {s['search_seeds']}. Every cell (derived or random) "
        "retrained at the largest width with"
        f" <= {r['budget_params']:,} params (the MNIST-1D CNN's), {r['steps']} steps Adam lr "
        f"{r['lr']} cosine, seeds {s['train_seeds']}; test accuracy median (min-max).",
        "",
        "| cell | search CPU-min | normal-cell skips | width | params | MACs | test % |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, found in zip(d["derived"], d["searches"], strict=True):
        lines.append(
            f"| DARTS order {cell['order']}, seed {cell['search_seed']} | "
            f"{found['cpu_minutes']:.1f} | {cell['normal_skips']} | {cell['width']} | "
            f"{cell['params']:,} | {cell['macs']:,} | {_cell(cell['test'])} |"
        )
    for cell in d["random"]:
        lines.append(
            f"| random cell {cell['sample_seed']} | - | {cell['normal_skips']} | {cell['width']} "
            f"| {cell['params']:,} | {cell['macs']:,} | {_cell(cell['test'])} |"
        )
    c = d["cnn"]
    lines += [
        f"| mnist1d_cnn, same training | - | - | - | {c['params']:,} | - | "
        f"{_cell(c['same_training']['test'])} |",
        f"| mnist1d_cnn, zoo recipe ({c['zoo_recipe']['steps']} steps) | - | - | - | "
        f"{c['params']:,} | - | {_cell(c['zoo_recipe']['test'])} |",
        "",
        f"Random cells' median: {d['random_median']:.1f}%. "
        + " ".join(
            f"Order {k}: derived median {v['median']:.1f}%, {v['cells_above_random_median']}/"
            f"{len(v['cell_medians'])} cells above the random median "
            f"({'beats' if v['beats_random_median'] else 'does not beat'} it)."
            for k, v in d["by_order"].items()
        )
        + " "
        + _noise_note(d)
        + f" Target >= {c['published']:g}% at <= {c['params']:,} params (the paper's CNN): "
        + ("met." if d["targets"]["reaches_94_within_cnn_params"] else "not met."),
    ]
    for key in ("collapse", "collapse_long"):
        if d.get(key):
            lines += ["", _collapse_note(d[key])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
