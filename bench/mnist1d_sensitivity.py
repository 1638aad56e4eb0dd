"""Per-layer ratios from `prune.sensitivity` vs uniform (local) vs global magnitude pruning at
equal overall sparsity, on MNIST-1D (issue 17, item 5).

Run: .venv/bin/python bench/mnist1d_sensitivity.py  ->  bench/results/mnist1d_sensitivity.json

The digits version (bench/prune_global_local.py) sits at the 270-image test split's ceiling, so
the three arms cannot be told apart there. Here both trained zoo models of MNIST-1D are run
(`mnist1d_mlp`, 15,210 params, ~65% test; `mnist1d_cnn`, 5,210 params, ~90% test), every
Linear/Conv weight pruned by |w| (l1) to the same overall sparsity three ways:

- local: the same ratio in every layer (`prune.unstructured`, scope local);
- global: one threshold over all layers, each layer keeping at least 1% (scope global);
- sensitivity: per-layer ratios `allocate`d from `prune.sensitivity`'s curves (each layer
  pruned alone to each of `RATIOS`, accuracy on the 500-sequence validation split), for the
  least predicted loss.

Each pruned model is evaluated on the 1,000-sequence test split (0.1 points per sequence)
before and after the same short fine-tune (`FINETUNE`: 300 steps of AdamW at lr 1e-2, the
MNIST-1D recipe's lr, cosine, batches of 100, masks held), for seeds 0, 1, 2 (the seed sets the
fine-tune's data order). Median and min-max over the seeds. The sensitivity sweep and the
no-fine-tune numbers are deterministic (one value).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.core.context import Context
from netchisel.core.masks import masks_of
from netchisel.core.task import Task
from netchisel.core.train import TrainSettings, fit
from netchisel.prune.sensitivity import allocate, predicted_loss, sensitivity
from netchisel.prune.unstructured import UnstructuredConfig, prune_unstructured
from netchisel.zoo import data, train

MODELS = ("mnist1d_mlp", "mnist1d_cnn")
TASK = "mnist1d"
SPARSITIES = (0.7, 0.8, 0.9)
RATIOS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
SEEDS = (0, 1, 2)
FINETUNE = TrainSettings(steps=300, lr=1e-2)
ARMS = ("local", "global", "sensitivity")


def pruned(
    model: nn.Module, task: Task, arm: str, sparsity: float, curves: Any
) -> tuple[nn.Module, dict[str, float]]:
    """A pruned copy of `model` and its per-layer sparsity."""
    net = copy.deepcopy(model)
    if arm == "sensitivity":
        chosen = allocate(curves, sparsity)
        config = UnstructuredConfig(per_layer={re.escape(n): r for n, r in chosen.items()})
    else:
        config = UnstructuredConfig(sparsity=sparsity, scope=arm)  # type: ignore[arg-type]
    prune_unstructured(net, config, Context(task, quiet=True))
    layers = {
        n.removesuffix(".weight"): float((~m.keep).float().mean()) for n, m in masks_of(net).items()
    }
    return net, layers


def accuracy(model: nn.Module, task: Task, split: str) -> float:
    return task.evaluate(model, split)["accuracy"]


def run_model(name: str) -> dict[str, Any]:
    task = data.task(TASK)
    dense = train.pretrained(name).eval()
    started = time.perf_counter()
    curves = sensitivity(dense, task, RATIOS, split="val")
    sweep_seconds = time.perf_counter() - started
    dense_val, dense_test = accuracy(dense, task, "val"), accuracy(dense, task, "test")
    print(f"{name}: dense val {dense_val:.1f} test {dense_test:.1f}; sweep {sweep_seconds:.0f}s")
    rows = []
    for sparsity in SPARSITIES:
        for arm in ARMS:
            net, layers = pruned(dense, task, arm, sparsity, curves)
            val = accuracy(net, task, "val")
            row: dict[str, Any] = {
                "arm": arm,
                "sparsity": sparsity,
                "reached": sum(layers[n] * curves.sizes[n] for n in layers)
                / sum(curves.sizes.values()),
                "layer_sparsity": layers,
                "val_no_ft": val,
                "test_no_ft": accuracy(net, task, "test"),
                "predicted_val_loss": predicted_loss(curves, layers),
                "measured_val_loss": dense_val - val,
                "finetuned": [],
            }
            for seed in SEEDS:
                tuned = copy.deepcopy(net)
                fit(tuned, task, FINETUNE, Context(task, quiet=True, seed=seed))
                row["finetuned"].append(
                    {
                        "seed": seed,
                        "val": accuracy(tuned, task, "val"),
                        "test": accuracy(tuned, task, "test"),
                    }
                )
            row["test_ft"] = spread([r["test"] for r in row["finetuned"]])
            row["val_ft"] = spread([r["val"] for r in row["finetuned"]])
            rows.append(row)
            t = row["test_ft"]
            print(
                f"  {arm:11s} s={sparsity:.2f}: test {row['test_no_ft']:5.1f} -> "
                f"{t['median']:5.1f} ({t['min']:.1f}-{t['max']:.1f}) after FT  "
                + " ".join(f"{n}={v:.3f}" for n, v in layers.items())
            )
    return {
        "model": name,
        "params": sum(p.numel() for p in dense.parameters()),
        "dense": {"val": dense_val, "test": dense_test},
        "sensitivity": {
            "ratios": list(curves.ratios),
            "curves": {n: list(c) for n, c in curves.curves.items()},
            "sizes": curves.sizes,
            "seconds": round(sweep_seconds, 1),
        },
        "rows": rows,
    }


def main() -> None:
    torch.set_num_threads(1)  # the small models train fastest on one thread
    started = time.perf_counter()
    results = [run_model(name) for name in MODELS]
    path = write_result(
        "mnist1d_sensitivity",
        {
            "task": TASK,
            "importance": "l1",
            "sparsities": list(SPARSITIES),
            "sweep_ratios": list(RATIOS),
            "sweep_split": "val",
            "global_min_keep": UnstructuredConfig().min_keep,
            "finetune": {
                "steps": FINETUNE.steps,
                "lr": FINETUNE.lr,
                "optimizer": "adamw",
                "schedule": "cosine",
            },
            "seeds": list(SEEDS),
            "test_size": 1000,
            "models": results,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {path} in {time.perf_counter() - started:.0f}s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/mnist1d_sensitivity.json)."""
    ft = d["finetune"]
    lines = [
        "## Sensitivity vs local vs global magnitude pruning on MNIST-1D "
        "(`bench/mnist1d_sensitivity.py`)",
        "",
        f"{d['importance']} magnitude over every Linear/Conv weight at equal overall sparsity: "
        "local (the same ratio per layer), global (one threshold, every layer keeps "
        f"{100 * d['global_min_keep']:.0f}%), sensitivity (per-layer ratios allocated from "
        "`prune.sensitivity` curves on the validation split). Test % on the "
        f"{d['test_size']:,}-sequence test split (1 sequence = 0.1 points), without fine-tune "
        f"(deterministic) and after {ft['steps']} steps of {ft['optimizer']} lr {ft['lr']:g}: "
        f"median (min-max) over seeds {d['seeds']}.",
        "",
    ]
    for m in d["models"]:
        lines += [
            f"**{m['model']}** ({m['params']:,} params; dense test {m['dense']['test']:.1f}%)",
            "",
            "| sparsity | arm | test, no FT | test after FT | per-layer sparsity |",
            "|---:|---|---:|---:|---|",
        ]
        for r in m["rows"]:
            t = r["test_ft"]
            layers = ", ".join(f"{n} {100 * v:.0f}%" for n, v in r["layer_sparsity"].items())
            lines.append(
                f"| {100 * r['sparsity']:.0f}% | {r['arm']} | {r['test_no_ft']:.1f} |"
                f" {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {layers} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
