"""Benchmark 1: structured channel pruning of the zoo ResNet-20 on digits32, vs Torch-Pruning.

Run: .venv/bin/python bench/prune_structured.py   ->  bench/results/prune_structured.json

The trained zoo resnet (ResNet-20, width 16) is pruned with L1 magnitude, the same ratio of
every coupled channel group (the classifier's outputs excepted), two ways in one run:

- netchisel: the `prune.structured` stage (`StructuredConfig(ratio=RATIO, importance="l1")`);
- Torch-Pruning used directly: `tp.pruner.MetaPruner` with `tp.importance.MagnitudeImportance(
  p=1)`, `pruning_ratio=RATIO`, the classifier ignored.

Both are then fine-tuned with the same budget (`FINETUNE`, through `netchisel.core.train.fit`
and the task) for each seed of `SEEDS` (the seed sets the data order); the 270-image test split
moves 0.37 points per image, so every seed is reported with the median. netchisel's model is
saved as an artifact and loaded back before it is evaluated, so its accuracy is the shipped
model's. MACs are exact (`count_flops`, one 32x32 image); latency is measured with the
alternating A/B harness (`compare_latency`, one thread) at batch 1 and 64: each pruned model
against the original, and netchisel's against Torch-Pruning's.

A second netchisel row shows the MAC target instead of a ratio (`target_macs_ratio=0.5`,
channel counts rounded up to multiples of 8): it is not compared with Torch-Pruning, whose
`round_to` rounds down, so the two would not have equal MACs.

Targets (issue 3): >= 2x fewer MACs, speed-up >= 1.7x at batch 64, test accuracy drop <= 0.5
points; against Torch-Pruning: equal MACs, latency within 5%, accuracy not worse.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from common import (  # bench/ is on sys.path when a script in it runs
    ab_speedups,
    saturated_note,
    shipped,
    write_result,
)
from torch import nn

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.context import Context
from netchisel.core.task import Task
from netchisel.core.train import TrainSettings, fit
from netchisel.measure import count_flops
from netchisel.prune.structured import StructuredConfig, prune_structured
from netchisel.zoo import data, train

RATIO = 0.5
SEEDS = (0, 1, 2)
# Half the reference recipe's 20 epochs (200 steps of 64 images), same optimiser (SGD, momentum
# 0.9, weight decay 5e-4, cosine) from a fifth of its learning rate: the pruned weights are a
# good start.
FINETUNE = TrainSettings(epochs=10, lr=0.02, optimizer="sgd", weight_decay=5e-4)
BATCHES = (1, 64)


def finetuned(model: nn.Module, task: Task, seed: int) -> tuple[nn.Module, float]:
    """A fine-tuned copy of `model` and the seconds it took."""
    tuned = copy.deepcopy(model)
    start = time.perf_counter()
    fit(tuned, task, FINETUNE, Context(task, quiet=True, seed=seed))
    return tuned.eval(), time.perf_counter() - start


def shipped_accuracy(model: nn.Module, task: Task) -> tuple[float, int]:
    """Test accuracy of the model saved as an artifact and loaded back, and its bytes."""
    loaded, size = shipped(model, task.example_inputs(8, split="test"))
    return task.evaluate(loaded, "test")["accuracy"], size


def speedups(models: dict[str, nn.Module], task: Task) -> dict[str, Any]:
    """A/B latency: every pruned model vs the original, and netchisel's vs Torch-Pruning's."""
    pairs = [
        ("original", "netchisel"),
        ("original", "torch_pruning"),
        ("torch_pruning", "netchisel"),
    ]
    pairs += [(a, b) for a, b in [("original", "netchisel_target")] if b in models]
    return ab_speedups(models, pairs, task, BATCHES, calls=(20, 5))


def main() -> None:
    # One thread throughout: on a shared 2-core machine more threads only add contention.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = data.task("digits32")
    original = train.pretrained("resnet").eval()
    one = task.example_inputs(1)
    base_macs = count_flops(original, one).macs
    base_acc = task.evaluate(original, "test")["accuracy"]
    base_val = task.evaluate(original, "val")["accuracy"]

    ctx = Context(task, quiet=True)
    start = time.perf_counter()
    ours = prune_structured(copy.deepcopy(original), StructuredConfig(ratio=RATIO), ctx)
    ours_seconds = time.perf_counter() - start
    ours_records = dict(ctx.records)

    theirs = copy.deepcopy(original)
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        theirs,
        one,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=[theirs.fc],
    )
    pruner.step()
    theirs_seconds = time.perf_counter() - start

    ctx = Context(task, quiet=True)
    target_config = StructuredConfig(target_macs_ratio=0.5, round_to=8)
    start = time.perf_counter()
    target = prune_structured(copy.deepcopy(original), target_config, ctx)
    target_seconds = time.perf_counter() - start
    target_records = dict(ctx.records)

    pruned = {"netchisel": ours, "torch_pruning": theirs, "netchisel_target": target}
    rows: dict[str, Any] = {}
    tuned_models: dict[str, nn.Module] = {}
    for name, model in pruned.items():
        accs, val_accs, seconds = [], [], []
        for seed in SEEDS:
            tuned, sec = finetuned(model, task, seed)
            if name.startswith("netchisel"):
                acc, size = shipped_accuracy(tuned, task)
            else:
                acc, size = task.evaluate(tuned, "test")["accuracy"], 0
            accs.append(acc)
            val_accs.append(task.evaluate(tuned, "val")["accuracy"])
            seconds.append(sec)
            if seed == SEEDS[0]:
                tuned_models[name] = tuned
        rows[name] = {
            "macs": count_flops(model, one).macs,
            "params": sum(p.numel() for p in model.parameters()),
            "accuracy_before_finetune": task.evaluate(model, "test")["accuracy"],
            "accuracy_by_seed": accs,
            "accuracy_median": statistics.median(accs),
            "accuracy_mean": statistics.fmean(accs),
            "val_accuracy_by_seed": val_accs,
            "val_accuracy_median": statistics.median(val_accs),
            "val_accuracy_mean": statistics.fmean(val_accs),
            "finetune_seconds_median": statistics.median(seconds),
            "artifact_bytes": size or None,
            "widths": {
                n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
            },
        }
        print(f"{name}: test accuracy by seed {[round(a, 2) for a in accs]}", flush=True)
    rows["netchisel"]["prune_seconds"] = ours_seconds
    rows["torch_pruning"]["prune_seconds"] = theirs_seconds
    rows["netchisel_target"]["prune_seconds"] = target_seconds
    rows["netchisel"]["records"] = ours_records
    rows["netchisel_target"]["records"] = target_records

    latency = speedups({"original": original, **tuned_models}, task)
    with tempfile.TemporaryDirectory() as tmp:
        original_bytes = artifact_bytes(nc.save(original, Path(tmp) / "m"))
    result = {
        "model": "zoo resnet (ResNet-20, width 16), trained reference",
        "task": "digits32, test split (270 images)",
        "ratio": RATIO,
        "importance": "L1 magnitude (netchisel 'l1'; Torch-Pruning MagnitudeImportance(p=1))",
        "finetune": {**FINETUNE.__dict__, "seeds": list(SEEDS)},
        "original": {
            "macs": base_macs,
            "params": sum(p.numel() for p in original.parameters()),
            "accuracy": base_acc,
            "val_accuracy": base_val,
            "artifact_bytes": original_bytes,
        },
        "rows": rows,
        "latency": latency,
        "threads": 1,
        "latency_harness": "compare_latency: alternating A/B blocks, ratio of medians",
    }
    result["checks"] = checks(result)
    path = write_result("prune_structured", result)
    print(table(result))
    print(f"wrote {path}")


def checks(result: dict[str, Any]) -> dict[str, Any]:
    rows, lat, base = result["rows"], result["latency"], result["original"]
    ours, theirs = rows["netchisel"], rows["torch_pruning"]
    return {
        "macs_reduction_x": base["macs"] / ours["macs"],
        "macs_at_least_2x_fewer": base["macs"] >= 2 * ours["macs"],
        "speedup_at_64": lat["original/netchisel@64"]["speedup"],
        "speedup_at_64_at_least_1.7x": lat["original/netchisel@64"]["speedup"] >= 1.7,
        "accuracy_drop_points": base["accuracy"] - ours["accuracy_median"],
        "accuracy_drop_at_most_0.5": base["accuracy"] - ours["accuracy_median"] <= 0.5,
        "macs_equal_to_torch_pruning": ours["macs"] == theirs["macs"],
        "latency_vs_torch_pruning_at_64": lat["torch_pruning/netchisel@64"]["speedup"],
        "latency_within_5pct_of_torch_pruning": all(
            abs(lat[f"torch_pruning/netchisel@{b}"]["speedup"] - 1) <= 0.05 for b in BATCHES
        ),
        "accuracy_not_worse_than_torch_pruning": (
            ours["accuracy_median"] >= theirs["accuracy_median"]
        ),
        # The test split is the target; val is reported too because test saturates at 100%.
        "val_accuracy_drop_points": base["val_accuracy"] - ours["val_accuracy_median"],
        "val_accuracy_vs_torch_pruning_points": (
            ours["val_accuracy_median"] - theirs["val_accuracy_median"]
        ),
    }


def table(result: dict[str, Any]) -> str:
    lat, base = result["latency"], result["original"]
    lines = [
        "| model | MACs | vs original | speed-up b1 | speed-up b64 | test acc before FT "
        "| test acc after FT: median (seeds) | val acc after FT: median (seeds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| original | {base['macs']:,} | 1.00x | 1.00 | 1.00 | {base['accuracy']:.2f} "
        f"| {base['accuracy']:.2f} | {base['val_accuracy']:.2f} |",
    ]
    for name, row in result["rows"].items():
        b1 = lat.get(f"original/{name}@1", {}).get("speedup", float("nan"))
        b64 = lat.get(f"original/{name}@64", {}).get("speedup", float("nan"))
        seeds = ", ".join(f"{a:.2f}" for a in row["accuracy_by_seed"])
        val_seeds = ", ".join(f"{a:.2f}" for a in row["val_accuracy_by_seed"])
        lines.append(
            f"| {name} | {row['macs']:,} | {base['macs'] / row['macs']:.2f}x fewer | {b1:.2f} "
            f"| {b64:.2f} | {row['accuracy_before_finetune']:.2f} "
            f"| {row['accuracy_median']:.2f} ({seeds}) "
            f"| {row['val_accuracy_median']:.2f} ({val_seeds}) |"
        )
    for batch in BATCHES:
        cmp = lat[f"torch_pruning/netchisel@{batch}"]
        lines.append(
            f"netchisel vs Torch-Pruning latency at batch {batch}: Torch-Pruning / netchisel = "
            f"{cmp['speedup']:.3f}"
        )
    return "\n".join(lines)


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_structured.json)."""
    o = d["original"]
    lines = [
        "## Structured pruning, ResNet-20 on digits32 (`bench/prune_structured.py`)",
        "",
        f"{d['importance']}, ratio {d['ratio']}, fine-tune {d['finetune']['epochs']} epochs "
        f"(SGD lr {d['finetune']['lr']}), seeds {d['finetune']['seeds']}; latency A/B with "
        f"{d['threads']} thread. Original: {o['macs']:,} MACs, {o['accuracy']:.2f}% test.",
        "",
        "| model | MACs | speed-up b1 | speed-up b64 | test % (median) | val % (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in d["rows"].items():
        b1 = d["latency"][f"original/{name}@1"]["speedup"]
        b64 = d["latency"][f"original/{name}@64"]["speedup"]
        lines.append(
            f"| {name} | {r['macs']:,} | {b1:.2f}x | {b64:.2f}x | {r['accuracy_median']:.2f} |"
            f" {r['val_accuracy_median']:.2f} |"
        )
    same = d["latency"]["torch_pruning/netchisel@64"]["speedup"]
    lines += saturated_note(o["accuracy"])
    lines += ["", f"Torch-Pruning / netchisel latency at batch 64: {same:.3f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
