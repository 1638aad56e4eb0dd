"""Benchmark 2: unstructured global magnitude pruning of LeNet-300-100 on the digits.

Run: .venv/bin/python bench/prune_unstructured.py   ->  bench/results/prune_unstructured.json

The zoo mlp (trained reference) is pruned to 90% and 95% of its Linear weights by global
magnitude, three ways at each sparsity: one-shot (`prune.unstructured`, no retraining),
iterative (`prune.iterative`: prune to a geometrically rising ratio, fine-tune, 8 rounds) and
gradual (`prune.gradual`: AGP during 1,000 steps). Each schedule runs with three seeds (the
data order of fine-tuning); the 270-image test split moves 0.37 points per image, so the table
gives every seed and the median.

Targets: test accuracy drop <= 0.5 points and artifact <= 15% of the dense fp32 artifact's
bytes (`netchisel.save`, the bytes `load` reads: weights file + manifest). The pruned artifact
is loaded back and re-evaluated, so the accuracy is the shipped model's. Latency dense vs
sparse is measured with the alternating A/B harness: masked zeros still run on dense kernels,
so no speed-up is expected and none is claimed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.context import Context
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.prune.schedule import (
    GradualConfig,
    IterativeConfig,
    masked_fraction,
    prune_gradual,
    prune_iterative,
    select_prunable,
)
from netchisel.prune.unstructured import UnstructuredConfig, prune_unstructured
from netchisel.zoo import data, train

SPARSITIES = (0.9, 0.95)
SEEDS = (0, 1, 2)


def iterative(sparsity: float) -> IterativeConfig:
    return IterativeConfig(sparsity=sparsity, rounds=8, finetune_steps=300, scope="global")


def gradual(sparsity: float) -> GradualConfig:
    return GradualConfig(sparsity=sparsity, steps=1000, frequency=25, scope="global")


def prune(method: str, sparsity: float, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = train.pretrained("mlp")
    ctx = Context(data.task("digits"), quiet=True, seed=seed)
    if method == "one-shot":
        prune_unstructured(model, UnstructuredConfig(sparsity=sparsity, scope="global"), ctx)
        steps = 0
    elif method == "iterative":
        prune_iterative(model, iterative(sparsity), ctx)
        steps = ctx.records["train_steps"]
    else:
        prune_gradual(model, gradual(sparsity), ctx)
        steps = gradual(sparsity).steps
    return model, {"train_steps": steps, "records": ctx.records}


def main() -> None:
    torch.set_num_threads(1)  # the small mlp trains fastest on one thread
    torch.manual_seed(0)
    task = data.task("digits")
    dense = train.pretrained("mlp")
    dense_test = task.evaluate(dense, "test")["accuracy"]
    work = Path(tempfile.mkdtemp(prefix="prune_unstructured_"))
    dense_bytes = artifact_bytes(nc.save(dense, work / "dense"))
    print(f"dense: test {dense_test:.2f}%  artifact {dense_bytes} bytes")
    rows = []
    kept_models: dict[str, torch.nn.Module] = {}
    for sparsity in SPARSITIES:
        for method in ("one-shot", "iterative", "gradual"):
            for seed in SEEDS if method != "one-shot" else (0,):
                start = time.perf_counter()
                model, info = prune(method, sparsity, seed)
                seconds = time.perf_counter() - start
                path = nc.save(model, work / f"{method}-{sparsity}-{seed}")
                loaded = nc.load(path)
                test = task.evaluate(loaded, "test")["accuracy"]
                size = artifact_bytes(path)
                layers = select_prunable(model, "bench", None, ())
                row = {
                    "method": method,
                    "sparsity_target": sparsity,
                    "seed": seed,
                    "sparsity": masked_fraction(model, layers),
                    "test_accuracy": test,
                    "drop_points": dense_test - test,
                    "val_accuracy": task.evaluate(loaded, "val")["accuracy"],
                    "artifact_bytes": size,
                    "artifact_ratio": size / dense_bytes,
                    "train_steps": info["train_steps"],
                    "seconds": round(seconds, 2),
                }
                if method == "iterative":
                    row["rounds"] = info["records"]["rounds"]
                rows.append(row)
                kept_models[f"{method}-{sparsity}"] = model
                print(
                    f"{method:9s} s={sparsity:.2f} seed {seed}: test {test:6.2f}% "
                    f"(drop {dense_test - test:+.2f})  {size:6d} B = {size / dense_bytes:.1%} "
                    f"of dense  {seconds:5.1f}s"
                )
    summary = []
    for sparsity in SPARSITIES:
        for method in ("one-shot", "iterative", "gradual"):
            group = [r for r in rows if r["method"] == method and r["sparsity_target"] == sparsity]
            drops = [r["drop_points"] for r in group]
            summary.append(
                {
                    "method": method,
                    "sparsity": sparsity,
                    "median_test_accuracy": statistics.median(r["test_accuracy"] for r in group),
                    "median_drop_points": statistics.median(drops),
                    "worst_drop_points": max(drops),
                    "artifact_ratio": max(r["artifact_ratio"] for r in group),
                    "meets_accuracy": statistics.median(drops) <= 0.5,
                    "meets_size": max(r["artifact_ratio"] for r in group) <= 0.15,
                }
            )
    latency = []
    sparse = kept_models["iterative-0.95"].eval()
    for batch in (64, 1):
        inputs = task.example_inputs(batch)
        cmp = compare_latency(
            make_runner(dense.eval(), inputs, "eager", threads=1),
            make_runner(sparse, inputs, "eager", threads=1),
            batch_size=batch,
            threads=1,
            rounds=20,
            calls_per_round=20,
            labels=("dense", "sparse-95%"),
        )
        latency.append({"batch": batch, **cmp.to_dict()})
        print(
            f"latency batch {batch:2d}: dense {cmp.a.median_ms:.4f} ms  sparse "
            f"{cmp.b.median_ms:.4f} ms  speed-up {cmp.speedup:.3f}x (dense kernels)"
        )
    path = write_result(
        "prune_unstructured",
        {
            "model": "mlp (LeNet-300-100, 50,610 params)",
            "task": "digits",
            "dense_test_accuracy": dense_test,
            "dense_artifact_bytes": dense_bytes,
            "configs": {
                f"{name}-{s}": make(s).to_dict()
                for s in SPARSITIES
                for name, make in (("iterative", iterative), ("gradual", gradual))
            },
            "targets": {"max_drop_points": 0.5, "max_artifact_ratio": 0.15},
            "summary": summary,
            "rows": rows,
            "latency": latency,
            "latency_note": "masked zeros run on dense kernels: no speed-up expected or claimed",
        },
    )
    for s in summary:
        print(
            f"{s['method']:9s} s={s['sparsity']:.2f}: median test {s['median_test_accuracy']:.2f}% "
            f"drop {s['median_drop_points']:+.2f} (worst {s['worst_drop_points']:+.2f})  "
            f"artifact {s['artifact_ratio']:.1%}  accuracy ok {s['meets_accuracy']}  "
            f"size ok {s['meets_size']}"
        )
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_unstructured.json)."""
    lines = [
        "## Unstructured pruning, LeNet-300-100 on digits (`bench/prune_unstructured.py`)",
        "",
        f"Global magnitude. Dense: {d['dense_test_accuracy']:.2f}% test, "
        f"{d['dense_artifact_bytes']:,} B artifact. Targets: drop <= "
        f"{d['targets']['max_drop_points']} points, artifact <= "
        f"{100 * d['targets']['max_artifact_ratio']:.0f}% of dense. Median and worst of the seeds.",
        "",
        "| schedule | sparsity | median test % | median drop (pts, − = gain) | worst drop |"
        " artifact / dense |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["summary"]:
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:.0f}% | {r['median_test_accuracy']:.2f} |"
            f" {r['median_drop_points']:+.2f} | {r['worst_drop_points']:+.2f} |"
            f" {100 * r['artifact_ratio']:.3f}% |"
        )
    for lat in d["latency"]:
        lines.append("")
        lines.append(
            f"Latency at batch {lat['batch']}, dense {lat['a']['median_ms']:.4f} ms vs sparse "
            f"{lat['b']['median_ms']:.4f} ms: {lat['speedup']:.2f}x. {d['latency_note']}."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
