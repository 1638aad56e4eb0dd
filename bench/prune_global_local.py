"""Benchmark 6: global vs local (uniform per-layer) magnitude pruning at equal overall sparsity,
and per-layer ratios chosen from sensitivity curves.

Run: .venv/bin/python bench/prune_global_local.py
  ->  bench/results/prune_global_local.json, prune_global_local.svg (accuracy vs sparsity) and
      prune_global_local_{mlp,cnn}.html (the run reports, with the sensitivity curves plotted)

Two trained zoo models: `mlp` (LeNet-300-100) on digits and `cnn` (3 conv-bn blocks + Linear)
on digits32. Every Linear/Conv weight is pruned by |w| to the same overall sparsity three ways:

- local: the same ratio in every layer (`prune.unstructured`, scope local);
- global: one threshold over all layers, each keeping at least 1% (scope global);
- sensitivity: per-layer ratios from `prune.sensitivity`'s curves (each layer pruned alone on
  the validation split), chosen for the least predicted loss (`allocate`).

The sweep runs once per model, through the recipe runner (`prune.sensitivity` with target 0.9,
then the same fine-tune), so its report has the curves as a plot; the curves recorded there are
then allocated for every sparsity. Each pruned model is evaluated before and after a short
fixed fine-tune (`FINETUNE_STEPS`, AdamW lr 1e-3, masks held) on the test split (270 images,
0.37 points each), for seeds 0, 1, 2 (the seed sets the data order); the table gives medians.
The runner's own numbers (sensitivity at 0.9, before and after its fine-tune with seed 0) are
recorded beside the bench's for the same configuration: they must be equal.
"""

from __future__ import annotations

import copy
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, saturated_note, write_result  # bench/ is on sys.path when run
from torch import nn

from netchisel.core.context import Context
from netchisel.core.masks import masks_of
from netchisel.core.task import Task
from netchisel.core.train import TrainSettings, fit
from netchisel.pipeline.recipe import parse_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.prune.sensitivity import SensitivityResult, allocate, predicted_loss
from netchisel.prune.unstructured import UnstructuredConfig, prune_unstructured
from netchisel.zoo import data, train

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
RATIOS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
MODELS = {  # zoo model -> task, fine-tune steps (batch 64), seeds of the fine-tune
    "mlp": ("digits", 100, (0, 1, 2)),
    "cnn": ("digits32", 50, (0, 1, 2)),
}
ARMS = ("local", "global", "sensitivity")
RECIPE_TARGET = 0.9


def sweep_through_runner(name: str, task_name: str, steps: int, out: Path) -> dict[str, Any]:
    """Run prune.sensitivity (target 0.9) + fine-tune as a recipe; return its report."""
    recipe = parse_recipe(
        {
            "name": f"prune_global_local_{name}",
            "model": name,
            "task": task_name,
            "stages": [
                {
                    "prune.sensitivity": {
                        "ratios": list(RATIOS),
                        "split": "val",
                        "target_sparsity": RECIPE_TARGET,
                    }
                },
                {"finetune": {"steps": steps, "lr": 1e-3}},
                {"evaluate": {"split": "test"}},
            ],
            "output": str(out),
            "profile": {"batch_size": 64, "latency": False},
        }
    )
    result = run_recipe(recipe, quiet=True)
    shutil.copyfile(out / "report.html", RESULTS / f"prune_global_local_{name}.html")
    return result.report


def curves_of(record: dict[str, Any]) -> SensitivityResult:
    return SensitivityResult(
        record["metric"],
        record["higher_is_better"],
        tuple(record["ratios"]),
        {n: tuple(c) for n, c in record["curves"].items()},
        record["sizes"],
    )


def pruned(
    model: nn.Module, task: Task, arm: str, sparsity: float, curves: SensitivityResult
) -> tuple[nn.Module, dict[str, float]]:
    """A pruned copy of `model` and its per-layer sparsity."""
    net = copy.deepcopy(model)
    if arm == "sensitivity":
        chosen = allocate(curves, sparsity)
        config = UnstructuredConfig(per_layer={re.escape(n): r for n, r in chosen.items()})
    else:
        config = UnstructuredConfig(sparsity=sparsity, scope=arm)  # type: ignore[arg-type]
    ctx = Context(task, quiet=True)
    prune_unstructured(net, config, ctx)
    layers = {
        n.removesuffix(".weight"): float((~m.keep).float().mean()) for n, m in masks_of(net).items()
    }
    return net, layers


def accuracy(model: nn.Module, task: Task, split: str) -> float:
    return task.evaluate(model, split)["accuracy"]


def run_model(name: str, work: Path) -> dict[str, Any]:
    task_name, steps, seeds = MODELS[name]
    task = data.task(task_name)
    dense = train.pretrained(name).eval()
    started = time.perf_counter()
    report = sweep_through_runner(name, task_name, steps, work / name)
    sweep_seconds = time.perf_counter() - started
    record = report["steps"][1]["records"]["sensitivity"]
    curves = curves_of(record)
    dense_val, dense_test = accuracy(dense, task, "val"), accuracy(dense, task, "test")
    print(f"{name}: dense val {dense_val:.2f} test {dense_test:.2f}; runner {sweep_seconds:.0f}s")
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
            for seed in seeds:
                tuned = copy.deepcopy(net)
                fit(
                    tuned,
                    task,
                    TrainSettings(steps=steps, lr=1e-3),
                    Context(task, quiet=True, seed=seed),
                )
                row["finetuned"].append(
                    {
                        "seed": seed,
                        "val": accuracy(tuned, task, "val"),
                        "test": accuracy(tuned, task, "test"),
                    }
                )
            row["test_ft_median"] = statistics.median(r["test"] for r in row["finetuned"])
            row["val_ft_median"] = statistics.median(r["val"] for r in row["finetuned"])
            rows.append(row)
            print(
                f"  {arm:11s} s={sparsity:.2f}: test {row['test_no_ft']:6.2f} -> "
                f"{row['test_ft_median']:6.2f} after FT; val loss predicted "
                f"{row['predicted_val_loss']:6.2f} measured {row['measured_val_loss']:6.2f}  "
                + " ".join(f"{n}={v:.3f}" for n, v in layers.items())
            )
    runner_step = report["steps"][1]
    same = next(r for r in rows if r["arm"] == "sensitivity" and r["sparsity"] == RECIPE_TARGET)
    return {
        "task": task_name,
        "params": sum(p.numel() for p in dense.parameters()),
        "finetune": {"steps": steps, "batch_size": 64, "lr": 1e-3, "optimizer": "adamw"},
        "seeds": list(seeds),
        "dense": {"val": dense_val, "test": dense_test},
        "sensitivity": record,
        "runner": {
            "seconds": round(sweep_seconds, 1),
            "sensitivity_step_val": runner_step["metrics"]["accuracy"],
            "bench_val_same_config": same["val_no_ft"],
            "finetuned_test": report["steps"][-1]["records"]["test_accuracy"],
            "bench_finetuned_test_seed0": same["finetuned"][0]["test"],
            "report": f"bench/results/prune_global_local_{name}.html",
        },
        "rows": rows,
    }


def plot(results: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(9, 3.4 * len(results)), squeeze=False)
    for row_axes, (name, res) in zip(axes, results.items(), strict=True):
        for ax, key, when in (
            (row_axes[0], "test_no_ft", "no fine-tune"),
            (row_axes[1], "test_ft_median", f"after {res['finetune']['steps']} steps"),
        ):
            for arm in ARMS:
                points = [(r["sparsity"], r[key]) for r in res["rows"] if r["arm"] == arm]
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=arm)
            ax.axhline(res["dense"]["test"], color="gray", linestyle=":", linewidth=1)
            ax.set_title(f"{name} ({res['task']}): {when}", fontsize=9)
            ax.set_xlabel("overall sparsity")
            ax.set_ylabel("test accuracy %")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / "prune_global_local.svg"
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path


def main() -> None:
    torch.set_num_threads(1)  # the small models train fastest on one thread
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="prune_global_local_"))
    results = {name: run_model(name, work) for name in MODELS}
    figure = plot(results)
    path = write_result(
        "prune_global_local",
        {
            "importance": "l1",
            "sparsities": list(SPARSITIES),
            "sweep_ratios": list(RATIOS),
            "global_min_keep": UnstructuredConfig().min_keep,
            "models": results,
            "plots": [str(figure.relative_to(RESULTS.parent.parent))]
            + [r["runner"]["report"] for r in results.values()],
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {path} and {figure} in {time.perf_counter() - started:.0f}s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_global_local.json)."""
    lines = [
        "## Global vs local magnitude pruning (`bench/prune_global_local.py`)",
        "",
        f"{d['importance']} magnitude over every Linear/Conv weight at equal overall sparsity: "
        "local (the same ratio per layer), global (one threshold, every layer keeps "
        f"{100 * d['global_min_keep']:.0f}%), and sensitivity (per-layer ratios chosen from "
        "`prune.sensitivity` curves on val for the least predicted loss). Test accuracy %, "
        "before and after a short fine-tune (median of the seeds). Plots: "
        + ", ".join(f"`{p}`" for p in d["plots"])
        + ".",
        "",
    ]
    for name, m in d["models"].items():
        ft = m["finetune"]
        lines += [
            f"**{name}** on {m['task']} ({m['params']:,} params; dense test "
            f"{m['dense']['test']:.2f}%; fine-tune {ft['steps']} steps, seeds {m['seeds']})",
            "",
            "| sparsity | local | global | sensitivity | local FT | global FT | sensitivity FT |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sparsity in d["sparsities"]:
            rows = {r["arm"]: r for r in m["rows"] if r["sparsity"] == sparsity}
            cells = [f"{rows[a]['test_no_ft']:.2f}" for a in ("local", "global", "sensitivity")]
            cells += [
                f"{rows[a]['test_ft_median']:.2f}" for a in ("local", "global", "sensitivity")
            ]
            lines.append(f"| {100 * sparsity:.0f}% | " + " | ".join(cells) + " |")
        lines += saturated_note(m["dense"]["test"])
        sens = [r for r in m["rows"] if r["arm"] == "sensitivity"]
        pairs = ", ".join(
            f"{100 * r['sparsity']:.0f}%: {r['predicted_val_loss']:.1f} / "
            f"{r['measured_val_loss']:.1f}"
            for r in sens
        )
        lines += ["", f"Sensitivity arm, val points lost predicted / measured: {pairs}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
