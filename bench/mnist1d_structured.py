"""Structured channel pruning of the MNIST-1D CNN, vs Torch-Pruning used directly (issue 17,
item 1).

Run: .venv/bin/python bench/mnist1d_structured.py   ->  bench/results/mnist1d_structured.json

The trained zoo `mnist1d_cnn` (the paper's CNN: three Conv1d of 25 channels, `zoo.pretrained`)
is pruned with L1 magnitude, every coupled channel group alike (the classifier's outputs
excepted), at two operating points, each two ways in one run:

- **ratio 0.5**: netchisel's `prune.structured` (`StructuredConfig(ratio=0.5)`) and
  Torch-Pruning's `tp.pruner.MetaPruner` with `tp.importance.MagnitudeImportance(p=1)`,
  `pruning_ratio=0.5`, the classifier ignored: 25 -> 12 channels, about 3.9x fewer MACs.
- **MAC target 0.5**: netchisel with `StructuredConfig(target_macs_ratio=0.5)` (the smallest
  ratio that reaches at least 2x fewer MACs is searched), and Torch-Pruning with the ratio that
  keeps the same channel counts (`1 - kept / 25`; the widths are checked equal).

Every pruned model, and the unpruned original as a control, is then fine-tuned with the same
budget (`FINETUNE`: the paper's optimizer, Adam without weight decay, batches of 100, for
`FINETUNE.steps` steps, a sixth of the 6,000-step training recipe, lr 1e-2 cosine) for each seed
of `SEEDS` (the seed sets the data order). Test (1,000 sequences) and val (500) accuracy are
reported per seed with the median and min-max; the drop is against the fp32 reference as
trained (`zoo.pretrained`, one model) and against the original fine-tuned with the same budget.
netchisel's models are saved as artifacts and loaded back before they are evaluated. MACs are
exact (`count_flops`, one sequence); latency uses the alternating A/B harness
(`compare_latency`, one thread) at batch 1 and 100, with the seed-0 fine-tuned models.
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
    shipped,
    spread,
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

MODEL = "mnist1d_cnn"
RATIO = 0.5
TARGET_MACS = 0.5
SEEDS = (0, 1, 2)
# The paper's optimizer and learning rate (Adam, no weight decay, lr 1e-2, batches of 100) for a
# sixth of its 6,000 steps, with a cosine decay. (A one-off development trial on seed 0 of the
# 2x model, not in the JSON: lr 1e-3 gave 84.0% test, 3e-3 86.5%, 1e-2 88.1%; 2,000 steps at
# 1e-2 88.4%.)
FINETUNE = TrainSettings(
    steps=1000, lr=1e-2, optimizer="adamw", weight_decay=0.0, schedule="cosine", batch_size=100
)
BATCHES = (1, 100)
PAIRS = (
    ("original", "netchisel_r50"),
    ("original", "torch_pruning_r50"),
    ("torch_pruning_r50", "netchisel_r50"),
    ("original", "netchisel_2x"),
    ("original", "torch_pruning_2x"),
    ("torch_pruning_2x", "netchisel_2x"),
)


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d)]


def finetuned(model: nn.Module, task: Task, seed: int) -> tuple[nn.Module, float]:
    """A fine-tuned copy of `model` and the seconds it took."""
    tuned = copy.deepcopy(model)
    start = time.perf_counter()
    fit(tuned, task, FINETUNE, Context(task, quiet=True, seed=seed))
    return tuned.eval(), time.perf_counter() - start


def shipped_accuracy(model: nn.Module, task: Task) -> tuple[float, float, int]:
    """Test and val accuracy of the model saved as an artifact and loaded back, and its bytes."""
    loaded, size = shipped(model, task.example_inputs(8, split="test"))
    return task.evaluate(loaded, "test")["accuracy"], task.evaluate(loaded, "val")["accuracy"], size


def torch_pruning(model: nn.Module, ratio: float, one: tuple[torch.Tensor, ...]) -> nn.Module:
    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        pruned,
        one,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[pruned.classifier],
    )
    pruner.step()
    return pruned


def speedups(models: dict[str, nn.Module], task: Task) -> dict[str, Any]:
    return ab_speedups(models, PAIRS, task, BATCHES, calls=(50, 10))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = data.task("mnist1d")
    original = train.pretrained(MODEL).eval()
    one = task.example_inputs(1)
    base_macs = count_flops(original, one).macs

    pruned: dict[str, nn.Module] = {}
    prune_seconds: dict[str, float] = {}
    records: dict[str, Any] = {}
    for name, config in (
        ("netchisel_r50", StructuredConfig(ratio=RATIO, importance="l1")),
        ("netchisel_2x", StructuredConfig(target_macs_ratio=TARGET_MACS, importance="l1")),
    ):
        ctx = Context(task, quiet=True)
        start = time.perf_counter()
        pruned[name] = prune_structured(copy.deepcopy(original), config, ctx)
        prune_seconds[name] = time.perf_counter() - start
        records[name] = dict(ctx.records)
    kept = widths(pruned["netchisel_2x"])[0]
    tp_ratios = {"torch_pruning_r50": RATIO, "torch_pruning_2x": 1 - kept / widths(original)[0]}
    for name, ratio in tp_ratios.items():
        start = time.perf_counter()
        pruned[name] = torch_pruning(original, ratio, one)
        prune_seconds[name] = time.perf_counter() - start
    for a, b in (("netchisel_r50", "torch_pruning_r50"), ("netchisel_2x", "torch_pruning_2x")):
        assert widths(pruned[a]) == widths(pruned[b]), (widths(pruned[a]), widths(pruned[b]))

    ref_test = task.evaluate(original, "test")["accuracy"]
    ref_val = task.evaluate(original, "val")["accuracy"]
    rows: dict[str, Any] = {}
    tuned_models: dict[str, nn.Module] = {}
    for name, model in {"original_finetuned": original, **pruned}.items():
        tests, vals, seconds = [], [], []
        size = None
        for seed in SEEDS:
            tuned, sec = finetuned(model, task, seed)
            if name.startswith("netchisel"):
                acc, val, size = shipped_accuracy(tuned, task)
            else:
                acc = task.evaluate(tuned, "test")["accuracy"]
                val = task.evaluate(tuned, "val")["accuracy"]
            tests.append(acc)
            vals.append(val)
            seconds.append(sec)
            if seed == SEEDS[0]:
                tuned_models[name] = tuned
        macs = count_flops(model, one).macs
        rows[name] = {
            "macs": macs,
            "macs_reduction_x": base_macs / macs,
            "params": sum(p.numel() for p in model.parameters()),
            "widths": widths(model),
            "test_before_finetune": task.evaluate(model, "test")["accuracy"],
            "val_before_finetune": task.evaluate(model, "val")["accuracy"],
            "test": spread(tests, by_seed=True),
            "val": spread(vals, by_seed=True),
            "test_drop_vs_fp32_reference": ref_test - statistics.median(tests),
            "val_drop_vs_fp32_reference": ref_val - statistics.median(vals),
            "finetune_seconds_median": statistics.median(seconds),
            "prune_seconds": prune_seconds.get(name),
            "artifact_bytes": size,
        }
        print(f"{name}: {widths(model)} test by seed {tests} val by seed {vals}", flush=True)
    for name in pruned:
        for split in ("test", "val"):
            rows[name][f"{split}_drop_vs_original_finetuned"] = (
                rows["original_finetuned"][split]["median"] - rows[name][split]["median"]
            )
    rows["netchisel_r50"]["records"] = records["netchisel_r50"]
    rows["netchisel_2x"]["records"] = records["netchisel_2x"]
    rows["torch_pruning_2x"]["pruning_ratio"] = tp_ratios["torch_pruning_2x"]

    latency = speedups({"original": original, **tuned_models}, task)
    with tempfile.TemporaryDirectory() as tmp:
        original_bytes = artifact_bytes(nc.save(original, Path(tmp) / "m"))
    result = {
        "model": f"zoo {MODEL} (the paper's CNN, 3 Conv1d of 25 channels), trained reference",
        "task": "mnist1d: 3,500 train / 500 val / 1,000 test sequences of 40",
        "ratio": RATIO,
        "target_macs_ratio": TARGET_MACS,
        "importance": "L1 magnitude (netchisel 'l1'; Torch-Pruning MagnitudeImportance(p=1))",
        "torch_pruning_version": tp.__version__,
        "finetune": {**FINETUNE.__dict__, "seeds": list(SEEDS)},
        "original": {
            "macs": base_macs,
            "params": sum(p.numel() for p in original.parameters()),
            "test": ref_test,
            "val": ref_val,
            "artifact_bytes": original_bytes,
        },
        "rows": rows,
        "latency": latency,
        "threads": 1,
        "latency_harness": "compare_latency: alternating A/B blocks, ratio of medians",
    }
    result["checks"] = checks(result)
    path = write_result("mnist1d_structured", result)
    print(render(result))
    print(f"wrote {path}")


def within(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when the medians of a and b each lie inside the other's min-max range."""
    return b["min"] <= a["median"] <= b["max"] or a["min"] <= b["median"] <= a["max"]


def checks(result: dict[str, Any]) -> dict[str, Any]:
    rows, lat = result["rows"], result["latency"]
    out: dict[str, Any] = {}
    for op in ("r50", "2x"):
        ours, theirs = rows[f"netchisel_{op}"], rows[f"torch_pruning_{op}"]
        out[op] = {
            "macs_at_least_2x_fewer": ours["macs_reduction_x"] >= 2,
            "macs_equal_to_torch_pruning": ours["macs"] == theirs["macs"],
            "test_vs_torch_pruning_points": ours["test"]["median"] - theirs["test"]["median"],
            "test_vs_torch_pruning_within_noise": within(ours["test"], theirs["test"]),
            "val_vs_torch_pruning_points": ours["val"]["median"] - theirs["val"]["median"],
            "val_vs_torch_pruning_within_noise": within(ours["val"], theirs["val"]),
            "test_vs_original_finetuned_within_noise": within(
                ours["test"], rows["original_finetuned"]["test"]
            ),
            **{
                f"latency_torch_pruning_over_netchisel@{b}": lat[
                    f"torch_pruning_{op}/netchisel_{op}@{b}"
                ]["speedup"]
                for b in BATCHES
            },
        }
    return out


def _cell(s: dict[str, Any]) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/mnist1d_structured.json)."""
    o, ft, lat = d["original"], d["finetune"], d["latency"]
    lines = [
        "## Structured pruning, MNIST-1D CNN (`bench/mnist1d_structured.py`)",
        "",
        f"{d['importance']}; ratio {d['ratio']} and a MAC target of {d['target_macs_ratio']} "
        f"(Torch-Pruning given the ratio that keeps the same channels). Fine-tune: "
        f"{ft['steps']} steps of Adam (no weight decay), lr {ft['lr']} {ft['schedule']}, "
        f"batch {ft['batch_size']}, seeds {ft['seeds']}. Accuracy cells: median (min-max) over "
        f"the seeds. fp32 reference (one trained model): {o['macs']:,} MACs, {o['test']:.1f}% "
        f"test, {o['val']:.1f}% val. Latency: A/B alternating, {d['threads']} thread, ratio of "
        "medians vs the original (seed-0 models).",
        "",
        "| model | channels | MACs | fewer MACs | speed-up b1 | speed-up b100 | test % before FT "
        "| test % after FT | val % after FT | test drop vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in d["rows"].items():
        b1 = lat.get(f"original/{name}@1", {}).get("speedup")
        b100 = lat.get(f"original/{name}@100", {}).get("speedup")
        lines.append(
            f"| {name} | {r['widths']} | {r['macs']:,} | {r['macs_reduction_x']:.2f}x "
            f"| {f'{b1:.2f}x' if b1 else '-'} | {f'{b100:.2f}x' if b100 else '-'} "
            f"| {r['test_before_finetune']:.1f} | {_cell(r['test'])} | {_cell(r['val'])} "
            f"| {r['test_drop_vs_fp32_reference']:+.1f} |"
        )
    lines.append("")
    for op in ("r50", "2x"):
        c = d["checks"][op]
        noise = "within noise" if c["test_vs_torch_pruning_within_noise"] else "outside the spread"
        points = c["test_vs_torch_pruning_points"]
        lines.append(
            f"- {op}: netchisel - Torch-Pruning test median {points:+.1f} points ({noise}); "
            "Torch-Pruning / netchisel latency "
            f"{c['latency_torch_pruning_over_netchisel@1']:.3f} at batch 1, "
            f"{c['latency_torch_pruning_over_netchisel@100']:.3f} at batch 100."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
