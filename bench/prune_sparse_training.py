"""Benchmark 4: sparse training at 90% from scratch (SET, RigL) vs dense and vs pruning.

Run: .venv/bin/python bench/prune_sparse_training.py   ->  bench/results/prune_sparse_training.json

LeNet-300-100 on the digits, built from the seed, every arm trained for the same total number
of steps T (600 = the zoo recipe's 30 epochs, and 1,200) with the zoo recipe (AdamW, lr 1e-3,
weight decay 1e-4, cosine), on the same data order:

- dense: no pruning (the ceiling);
- SET / RigL: `prune.sparse_training` at 90% (ERK densities, drop fraction 0.3 with cosine
  decay, update every 50 steps until 3/4 of T), random / gradient regrowth;
- static: the same stage with drop fraction 0 (the random ERK mask, never updated): the
  control that shows what regrowth adds;
- prune after training: dense for 2T/3 steps, one-shot global magnitude to 90%
  (`prune.unstructured`), fine-tune T/3 steps with the mask held;
- gradual (AGP): `prune.gradual` to 90% during the T steps (pruning until 3T/4).

Three seeds; test accuracy on the 270-image test split (0.37 points per image). All sparse arms
train on dense kernels with masks, so no arm is faster here; the sparse ones would need a sparse
kernel to turn their 10x fewer weights into time.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from common import arms_table, write_result  # bench/ is on sys.path when a script in it runs

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.prune.schedule import GradualConfig, masked_fraction, prune_gradual, select_prunable
from netchisel.prune.sparse_training import SparseTrainingConfig, sparse_training
from netchisel.prune.unstructured import UnstructuredConfig, prune_unstructured
from netchisel.zoo import data, models

SPARSITY = 0.9
SEEDS = (0, 1, 2)
BUDGETS = (600, 1200)
TRAIN: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-4}
ARMS = ("dense", "SET", "RigL", "static", "prune after training", "gradual (AGP)")


def run(arm: str, steps: int, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    task = data.task("digits")
    torch.manual_seed(seed)
    model = models.build("mlp")
    ctx = Context(task, quiet=True, seed=seed)
    if arm == "dense":
        fit(model, task, TrainSettings(steps=steps, **TRAIN), ctx)
    elif arm in ("SET", "RigL", "static"):
        regrow = "random" if arm == "SET" else "gradient"
        config = SparseTrainingConfig(
            sparsity=SPARSITY,
            steps=steps,
            regrow=regrow,
            drop_fraction=0.0 if arm == "static" else 0.3,
            update_every=50,
            **TRAIN,
        )
        sparse_training(model, config, ctx)
    elif arm == "prune after training":
        first = 2 * steps // 3
        fit(model, task, TrainSettings(steps=first, **TRAIN), ctx)
        prune_unstructured(model, UnstructuredConfig(sparsity=SPARSITY, scope="global"), ctx)
        fit(model, task, TrainSettings(steps=steps - first, **TRAIN), ctx)
    else:
        config = GradualConfig(
            sparsity=SPARSITY, steps=steps, frequency=25, scope="global", **TRAIN
        )
        prune_gradual(model, config, ctx)
    return model, ctx.records


def main() -> None:
    torch.set_num_threads(1)  # the small mlp trains fastest on one thread
    task = data.task("digits")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for steps in BUDGETS:
        for arm in ARMS:
            for seed in SEEDS:
                t0 = time.perf_counter()
                model, records = run(arm, steps, seed)
                seconds = time.perf_counter() - t0
                layers = select_prunable(model, "bench", None, ())
                row = {
                    "arm": arm,
                    "steps": steps,
                    "seed": seed,
                    "sparsity": masked_fraction(model, layers),
                    "test_accuracy": task.evaluate(model, "test")["accuracy"],
                    "val_accuracy": task.evaluate(model, "val")["accuracy"],
                    "seconds": round(seconds, 2),
                }
                if "updates" in records:
                    row["replaced_per_update"] = [u["replaced"] for u in records["updates"]]
                rows.append(row)
                print(
                    f"T={steps:4d} {arm:21s} seed {seed}: sparsity {row['sparsity']:.3f} "
                    f"test {row['test_accuracy']:6.2f}%  {seconds:4.1f}s",
                    flush=True,
                )
    table = []
    for steps in BUDGETS:
        for arm in ARMS:
            group = [r for r in rows if r["arm"] == arm and r["steps"] == steps]
            accs = [r["test_accuracy"] for r in group]
            table.append(
                {
                    "arm": arm,
                    "steps": steps,
                    "sparsity": group[0]["sparsity"],
                    "mean_test_accuracy": statistics.mean(accs),
                    "min": min(accs),
                    "max": max(accs),
                    "mean_val_accuracy": statistics.mean(r["val_accuracy"] for r in group),
                }
            )
    seconds = time.perf_counter() - start
    path = write_result(
        "prune_sparse_training",
        {
            "model": "mlp (LeNet-300-100)",
            "task": "digits",
            "sparsity": SPARSITY,
            "train": TRAIN,
            "sparse_training": {"distribution": "erk", "drop_fraction": 0.3, "update_every": 50},
            "seeds": list(SEEDS),
            "table": table,
            "rows": rows,
            "seconds": round(seconds, 1),
            "note": "masks on dense kernels: no arm is faster; sparsity is in the weights only",
        },
    )
    for t in table:
        print(
            f"T={t['steps']:4d} {t['arm']:21s} sparsity {t['sparsity']:.3f}: mean test "
            f"{t['mean_test_accuracy']:6.2f}% (min {t['min']:.2f}, max {t['max']:.2f})"
        )
    print(f"{seconds:.0f}s; wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_sparse_training.json)."""
    title = "## Sparse training at 90% from scratch (`bench/prune_sparse_training.py`)"
    return arms_table(title, d, with_steps=True)


if __name__ == "__main__":
    main()
