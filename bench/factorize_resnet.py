"""Benchmark 4 (issue 5): Tucker-2, CP and depthwise-separable rewrites of the zoo ResNet-20.

Run: .venv/bin/python bench/factorize_resnet.py   ->  bench/results/factorize_resnet.json

The trained zoo resnet (ResNet-20, width 16, digits32) has 19 3x3 convs; the 18 inside the
residual blocks are rewritten (the stem, 1 -> 16 channels, has nothing to factor), three ways,
each from the same trained model:

- `factorize.tucker` with `param_ratio=0.5`: every conv becomes 1x1 -> 3x3 -> 1x1 with the
  ranks that keep the most energy of both channel unfoldings in half its parameters (tensorly
  `partial_tucker`, HOSVD start, 20 HOOI iterations);
- `factorize.cp` with `param_ratio=0.5`: every conv becomes 1x1 -> depthwise 3x3 -> 1x1 at the
  largest CP rank within half its parameters (tensorly `parafac`, SVD start, 100 ALS sweeps);
- `factorize.separable`: every conv becomes depthwise 3x3 + pointwise 1x1, initialised by the
  per-input-channel rank-1 least-squares fit of its weight (no BatchNorm between: each conv is
  already followed by one).

All three then re-estimate every BatchNorm's statistics from `BN_SAMPLES` train images
(`recalibrate_bn`; no weight changes). Accuracy (test split, 270 images; val too) is measured
right after the rewrite without that step (weights only), with it, and after recovery by the
`distill` stage (Hinton KD from the original, temperature 4, alpha 0.5, SGD momentum 0.9,
lr 0.02, weight decay 5e-4, cosine) for `RECOVERY_EPOCHS` epochs (half the reference recipe's
20). The recovered models are saved as artifacts and loaded back; their
outputs must match bit for bit. MACs are exact (`count_flops`, one 32x32 image); latency is
the alternating A/B harness (`compare_latency`, one thread, eager) at batch 64 and 1, each
rewrite against the original.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (  # bench/ is on sys.path when a script in it runs
    ab_entry,
    saturated_note,
    shipped,
    write_result,
)
from torch import nn

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.registry import handler
from netchisel.distill import DistillConfig
from netchisel.distill.distiller import distill
from netchisel.factorize import CPConfig, SeparableConfig, TuckerConfig
from netchisel.measure import count_flops
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.zoo import data, train

BLOCK_CONVS = (r"layer\d\.\d+\.conv[12]",)
BN_SAMPLES = 512
REWRITES: dict[str, StageConfig] = {
    "tucker": TuckerConfig(param_ratio=0.5, layers=BLOCK_CONVS, recalibrate_bn=BN_SAMPLES),
    "cp": CPConfig(param_ratio=0.5, layers=BLOCK_CONVS, recalibrate_bn=BN_SAMPLES),
    "separable": SeparableConfig(layers=BLOCK_CONVS, recalibrate_bn=BN_SAMPLES),
}
RECOVERY_EPOCHS = 10.0
RECOVERY = DistillConfig(
    epochs=RECOVERY_EPOCHS,
    lr=0.02,
    optimizer="sgd",
    weight_decay=5e-4,
    temperature=4.0,
    alpha=0.5,
    kind="logits",
)
BATCHES = (64, 1)


def accuracies(model: nn.Module, task: Any) -> dict[str, float]:
    return {split: task.evaluate(model, split)["accuracy"] for split in ("val", "test")}


def latency(models: dict[str, nn.Module], task: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in BATCHES:
        inputs = task.example_inputs(batch, split="test")
        runners = {n: make_runner(m, inputs, "eager", threads=1) for n, m in models.items()}
        for name in REWRITES:
            cmp = compare_latency(
                runners["original"],
                runners[name],
                batch_size=batch,
                threads=1,
                rounds=20,
                calls_per_round=20 if batch == 1 else 3,
                labels=("original", name),
            )
            out[f"original/{name}@{batch}"] = ab_entry(cmp)
            print(f"batch {batch}: original/{name} = {cmp.speedup:.3f}", flush=True)
    return out


def main() -> None:
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    torch.manual_seed(0)
    task = data.task("digits32")
    original = train.pretrained("resnet").eval()
    one = task.example_inputs(1)
    base = accuracies(original, task)
    with tempfile.TemporaryDirectory() as tmp:
        original_bytes = artifact_bytes(nc.save(original, Path(tmp) / "m"))
    rows: dict[str, Any] = {}
    recovered: dict[str, nn.Module] = {}
    for name, config in REWRITES.items():
        model = copy.deepcopy(original)
        ctx = Context(task, teacher=original, quiet=True)
        start = time.perf_counter()
        handler(type(config))(model, config, ctx)
        rewrite_seconds = time.perf_counter() - start
        records = dict(ctx.records)
        before_recovery = accuracies(model, task)
        weights_only = copy.deepcopy(original)
        handler(type(config))(
            weights_only, dataclasses.replace(config, recalibrate_bn=0), Context(task, quiet=True)
        )
        rewrite_only = accuracies(weights_only, task)
        start = time.perf_counter()
        distill(model, RECOVERY, Context(task, teacher=original, quiet=True))
        recovery_seconds = time.perf_counter() - start
        loaded, size = shipped(model, task.example_inputs(8, split="test"))
        recovered[name] = loaded
        rows[name] = {
            "config": config.to_dict(),
            "layers_rewritten": records["layers_factorized"],
            "skipped": records["skipped"],
            "params": sum(p.numel() for p in model.parameters()),
            "rewritten_layers_param_ratio": records["param_ratio"],
            "macs": count_flops(model, one).macs,
            "artifact_bytes": size,
            "accuracy_weights_only": rewrite_only,
            "accuracy_before_recovery": before_recovery,
            "accuracy_after_recovery": accuracies(loaded, task),
            "rewrite_seconds": rewrite_seconds,
            "recovery_seconds": recovery_seconds,
            "per_layer": records["factorized"],
        }
        print(
            f"{name}: weights only {rewrite_only}, BN re-estimated {before_recovery}, after "
            f"{rows[name]['accuracy_after_recovery']} ({recovery_seconds:.0f} s)",
            flush=True,
        )
    result = {
        "model": "zoo resnet (ResNet-20, width 16), trained reference",
        "task": "digits32, val and test splits (270 images each)",
        "layers": list(BLOCK_CONVS),
        "recovery": {
            "stage": "distill",
            **{k: v for k, v in RECOVERY.to_dict().items() if k not in ("hints", "attention")},
        },
        "original": {
            "params": sum(p.numel() for p in original.parameters()),
            "macs": count_flops(original, one).macs,
            "accuracy": base,
            "artifact_bytes": original_bytes,
        },
        "rows": rows,
        "latency": latency({"original": original, **recovered}, task),
        "threads": 1,
        "latency_harness": "compare_latency: alternating A/B blocks, ratio of medians",
    }
    path = write_result("factorize_resnet", result)
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/factorize_resnet.json)."""
    o, r = d["original"], d["recovery"]
    lat = d["latency"]
    lines = [
        "## Tucker-2, CP and depthwise-separable rewrites of ResNet-20"
        " (`bench/factorize_resnet.py`)",
        "",
        "The 18 3x3 convs of the residual blocks of the zoo resnet (digits32) rewritten by "
        "`factorize.tucker` (param_ratio 0.5), by `factorize.cp` (param_ratio 0.5, 1x1 -> "
        "depthwise 3x3 -> 1x1) and by `factorize.separable` (per-channel rank-1 "
        f"least-squares init), then recovered by `{r['stage']}` (Hinton KD, temperature "
        f"{r['temperature']}, alpha {r['alpha']}, {r['epochs']:g} epochs, SGD lr {r['lr']}). "
        "Accuracy % on test / val (270 images each; the recovered models as saved artifacts): "
        "right after the rewrite (weights only), after re-estimating BatchNorm statistics "
        "(`recalibrate_bn`, 512 train images), after recovery. MACs of one 32x32 image; "
        "latency A/B on one thread (original / rewrite; > 1 is faster).",
        "",
        "| model | params | MACs | weights only | BN re-estimated | recovered "
        "| speed-up b64 | speed-up b1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| original | {o['params']:,} | {o['macs']:,} | {o['accuracy']['test']:.2f} / "
        f"{o['accuracy']['val']:.2f} | | | 1.00 | 1.00 |",
    ]
    for name, row in d["rows"].items():
        before, after = row["accuracy_before_recovery"], row["accuracy_after_recovery"]
        raw = row.get("accuracy_weights_only", {"test": float("nan"), "val": float("nan")})
        lines.append(
            f"| {name} | {row['params']:,} | {row['macs']:,} "
            f"| {raw['test']:.2f} / {raw['val']:.2f} "
            f"| {before['test']:.2f} / {before['val']:.2f} "
            f"| {after['test']:.2f} / {after['val']:.2f} "
            f"| {lat[f'original/{name}@64']['speedup']:.2f} "
            f"| {lat[f'original/{name}@1']['speedup']:.2f} |"
        )
    return "\n".join([*lines, *saturated_note(o["accuracy"]["test"]), ""])


if __name__ == "__main__":
    main()
