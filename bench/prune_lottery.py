"""Benchmark 3: lottery tickets in LeNet-300-100 on the digits, at 80% and 90% sparsity.

Run: .venv/bin/python bench/prune_lottery.py   ->  bench/results/prune_lottery.json

For each seed, the mlp is built from that seed (theta_0) and compared three ways, every network
trained with the same budget (T = 600 steps, the zoo recipe: AdamW, lr 1e-3, weight decay 1e-4,
cosine) on the same data order:

- dense: theta_0 trained for T steps;
- ticket: `prune.lottery` (iterative magnitude pruning, layer-wise, the same fraction of the
  remaining weights each round), rewound to theta_0 and trained T steps;
- random re-init: the same stage with `init: random`, i.e. the *same* final mask with weights
  re-drawn from the layers' initialisers, trained T steps.

Late rewinding (to the weights after k = 50 steps, Frankle et al. 2020) is run at 90% as well.
Test accuracy on the 270-image test split (0.37 points per image), three seeds, mean and each.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from common import arms_table, write_result  # bench/ is on sys.path when a script in it runs

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.prune.lottery import LotteryConfig, prune_lottery
from netchisel.zoo import data, models

SEEDS = (0, 1, 2)
STEPS = 600
ROUNDS = {0.8: 4, 0.9: 5}  # 33% and 37% of the remaining weights per round
TRAIN: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-4}


def build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # theta_0 depends on the seed only
    return models.build("mlp")


def ticket(sparsity: float, seed: int, init: str, rewind: int) -> tuple[float, dict[str, Any]]:
    task = data.task("digits")
    model = build(seed)
    ctx = Context(task, quiet=True, seed=seed)
    config = LotteryConfig.from_dict(
        {
            "sparsity": sparsity,
            "rounds": ROUNDS[sparsity],
            "steps": STEPS,
            "rewind_step": rewind,
            "init": init,
            **TRAIN,
        }
    )
    prune_lottery(model, config, ctx)
    return task.evaluate(model, "test")["accuracy"], ctx.records


def main() -> None:
    torch.set_num_threads(1)  # the small mlp trains fastest on one thread
    task = data.task("digits")
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in SEEDS:
        model = build(seed)
        fit(model, task, TrainSettings(steps=STEPS, **TRAIN), Context(task, quiet=True, seed=seed))
        acc = task.evaluate(model, "test")["accuracy"]
        rows.append({"arm": "dense", "sparsity": 0.0, "seed": seed, "test_accuracy": acc})
        print(f"seed {seed} dense            test {acc:6.2f}%", flush=True)
        arms = [(s, init, 0) for s in (0.8, 0.9) for init in ("rewind", "random")]
        arms.append((0.9, "rewind", 50))
        for sparsity, init, rewind in arms:
            acc, records = ticket(sparsity, seed, init, rewind)
            arm = "ticket" if init == "rewind" else "random re-init"
            if rewind:
                arm += f" (rewind k={rewind})"
            rows.append(
                {
                    "arm": arm,
                    "sparsity": sparsity,
                    "seed": seed,
                    "test_accuracy": acc,
                    "sparsity_reached": records["sparsity"],
                    "rounds": records["rounds"],
                }
            )
            print(f"seed {seed} {arm:22s} s={sparsity:.1f} test {acc:6.2f}%", flush=True)
    table = []
    for arm, sparsity in dict.fromkeys((r["arm"], r["sparsity"]) for r in rows):  # run order
        accs = [r["test_accuracy"] for r in rows if r["arm"] == arm and r["sparsity"] == sparsity]
        table.append(
            {
                "arm": arm,
                "sparsity": sparsity,
                "mean_test_accuracy": statistics.mean(accs),
                "min": min(accs),
                "max": max(accs),
                "per_seed": accs,
            }
        )
    seconds = time.perf_counter() - start
    path = write_result(
        "prune_lottery",
        {
            "model": "mlp (LeNet-300-100)",
            "task": "digits",
            "steps_per_training": STEPS,
            "train": TRAIN,
            "rounds": {str(k): v for k, v in ROUNDS.items()},
            "scope": "local (every layer pruned to the same ratio)",
            "seeds": list(SEEDS),
            "table": table,
            "rows": rows,
            "seconds": round(seconds, 1),
        },
    )
    for t in table:
        print(
            f"{t['arm']:24s} s={t['sparsity']:.1f}: mean test {t['mean_test_accuracy']:6.2f}% "
            f"(min {t['min']:.2f}, max {t['max']:.2f})"
        )
    print(f"{seconds:.0f}s; wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_lottery.json)."""
    title = "## Lottery tickets, LeNet-300-100 on digits (`bench/prune_lottery.py`)"
    return arms_table(title, d, with_steps=False)


if __name__ == "__main__":
    main()
