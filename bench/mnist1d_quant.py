"""MNIST-1D quantization (issue 17, item 3): static int8 and QAT at 4 and 2 bits vs fp32.

Run: .venv/bin/python bench/mnist1d_quant.py [cnn mlp]   ->  bench/results/mnist1d_quant.json

On the zoo's trained `mnist1d_cnn` (Conv1d x3 + Linear, 5,210 params) and `mnist1d_mlp`
(15,210 params), `zoo.train.pretrained`:

- `static-int8`: `quantize.static_int8` (post-training; int8 weights per channel and int8
  activations calibrated on CALIBRATION train sequences). The seed picks which CALIBRATION of the
  3,500 train sequences calibrate (a seeded permutation).
- `ptq-{4,2}`: `quantize.qat` with `steps: 0` (the QAT weight format, MSE scales, no training):
  the untrained reference for QAT, deterministic, run once.
- `qat-{4,2}`: `quantize.qat` (LSQ, weights only, one scale per output channel on every layer:
  `per_channel: true`, since the stage's default groups of 128 do not divide the CNN
  classifier's 125 inputs) with BUDGET below on the train split; the seed sets the data order.
  `qat-2-long`: the same at 2 bits with LONG_STEPS steps.

Every model is saved with `netchisel.save`, loaded back and evaluated, so accuracies are the
shipped artifact's and bytes are the artifact's (weights file + manifest). Test split: 1,000
sequences (one = 0.1 points). Drop = fp32 test - quantized test (median of seeds). One thread.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from torch.utils.data import Subset

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.registry import handler
from netchisel.core.task import Task, classification_task
from netchisel.quantize import QATConfig, StaticInt8Config
from netchisel.zoo import data, train

MODELS = {"cnn": "mnist1d_cnn", "mlp": "mnist1d_mlp"}
SEEDS = (0, 1, 2)
CALIBRATION = 512
BUDGET: dict[str, Any] = {
    "method": "lsq",
    "steps": 600,
    "optimizer": "sgd",
    "lr": 0.01,
    "lr_schedule": "cosine",
    "per_channel": True,
}
LONG_STEPS = 3000
"""A second, 5x longer budget for 2 bits (the hardest width), everything else as BUDGET."""


def calibration_task(task: Task, seed: int) -> Task:
    """The task with its train split cut to CALIBRATION sequences picked by `seed`."""
    train_split = task.splits["train"]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train_split), generator=g)[:CALIBRATION]  # type: ignore[arg-type]
    splits = {**task.splits, "train": Subset(train_split, pick.tolist())}
    return classification_task(splits, batch_size=100, name="mnist1d-calibration")


def variants() -> list[tuple[str, StageConfig, bool]]:
    """(name, config, seeded) for each row."""
    return [
        ("static-int8", StaticInt8Config(calibration_samples=CALIBRATION), True),
        ("ptq-4", QATConfig(bits=4, steps=0, per_channel=True), False),
        ("qat-4", QATConfig(bits=4, **BUDGET), True),
        ("ptq-2", QATConfig(bits=2, steps=0, per_channel=True), False),
        ("qat-2", QATConfig(bits=2, **BUDGET), True),
        ("qat-2-long", QATConfig(bits=2, **{**BUDGET, "steps": LONG_STEPS}), True),
    ]


def run(zoo: str, name: str, config: StageConfig, seed: int, work: Path) -> dict[str, Any]:
    task = data.task("mnist1d")
    stage_task = calibration_task(task, seed) if name == "static-int8" else task
    model = train.pretrained(zoo)
    ctx = Context(stage_task, quiet=True, seed=seed)
    start = time.perf_counter()
    handler(type(config))(model, config, ctx)
    seconds = time.perf_counter() - start
    path = nc.save(model, work / f"{zoo}-{name}-{seed}")
    loaded = nc.load(path)
    loaded.eval()
    return {
        "seed": seed,
        "test_accuracy": task.evaluate(loaded, "test")["accuracy"],
        "val_accuracy": task.evaluate(loaded, "val")["accuracy"],
        "artifact_bytes": artifact_bytes(path),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    wanted = sys.argv[1:] or list(MODELS)
    torch.set_num_threads(1)
    began = time.perf_counter()
    task = data.task("mnist1d")
    work = Path(tempfile.mkdtemp(prefix="mnist1d_quant_"))
    results: dict[str, Any] = {}
    for key in wanted:
        zoo = MODELS[key]
        dense = train.pretrained(zoo)
        fp32 = {
            "test_accuracy": task.evaluate(dense, "test")["accuracy"],
            "val_accuracy": task.evaluate(dense, "val")["accuracy"],
            "artifact_bytes": artifact_bytes(nc.save(dense, work / f"{zoo}-fp32")),
            "params": sum(p.numel() for p in dense.parameters()),
        }
        print(f"{zoo} fp32: {fp32}", flush=True)
        rows = []
        for name, config, seeded in variants():
            runs = [run(zoo, name, config, s, work) for s in (SEEDS if seeded else (0,))]
            test = spread([r["test_accuracy"] for r in runs])
            row = {
                "variant": name,
                "stage": handler(type(config)).name,
                "config": config.to_dict(),
                "seeds": [r["seed"] for r in runs] if seeded else "deterministic (run once)",
                "test": test,
                "val": spread([r["val_accuracy"] for r in runs]),
                "drop_points": round(fp32["test_accuracy"] - test["median"], 2),
                "artifact_bytes": runs[0]["artifact_bytes"],
                "artifact_ratio": runs[0]["artifact_bytes"] / fp32["artifact_bytes"],
                "runs": runs,
            }
            rows.append(row)
            print(
                f"{zoo} {name}: test {test} drop {row['drop_points']} "
                f"{row['artifact_bytes']} B  {sum(r['seconds'] for r in runs):.1f}s",
                flush=True,
            )
        results[key] = {"model": zoo, "fp32": fp32, "rows": rows}
    path = write_result(
        "mnist1d_quant",
        {
            "task": "mnist1d (3,500 train / 500 val / 1,000 test)",
            "seeds": list(SEEDS),
            "calibration_samples": CALIBRATION,
            "qat_budget": {**BUDGET, "momentum": 0.9, "batch_size": 100},
            "threads": 1,
            "models": results,
            "wall_seconds": round(time.perf_counter() - began, 1),
        },
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f}s")


def _cell(s: dict[str, float], one: bool) -> str:
    if one:
        return f"{s['median']:.1f}"
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/mnist1d_quant.json."""
    b = d["qat_budget"]
    seeds = ", ".join(str(s) for s in d["seeds"])
    lines = [
        "## MNIST-1D quantization: static int8 and QAT at 4 and 2 bits (`bench/mnist1d_quant.py`)",
        "",
        f"`python bench/mnist1d_quant.py` ({d['date']}). The zoo's trained MNIST-1D models."
        f" static-int8: `quantize.static_int8`, {d['calibration_samples']} calibration"
        f" sequences drawn from train by the seed. ptq-N: `quantize.qat` with 0 steps (same"
        f" format, no training; deterministic, one run). qat-N: `quantize.qat`"
        f" ({b['method'].upper()}, weights only, per output channel) for {b['steps']} steps of"
        f" {b['optimizer'].upper()} (lr {b['lr']}, momentum {b['momentum']}, {b['lr_schedule']},"
        f" batch {b['batch_size']}), the seed sets the data order. Test accuracy % of the saved"
        f" and loaded artifact on 1,000 sequences, median (min-max) of seeds {seeds}; drop ="
        " fp32 - median; *within noise*: fp32 lies inside the seeds' min-max. ptq rows are"
        " deterministic (no seed), one run.",
        "",
        "| model | variant | steps | test accuracy % | drop (points) | artifact bytes | vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in d["models"].values():
        f = m["fp32"]
        lines.append(
            f"| {m['model']} | fp32 | - | {f['test_accuracy']:.1f} | - |"
            f" {f['artifact_bytes']:,} | 100% |"
        )
        for r in m["rows"]:
            one = not isinstance(r["seeds"], list)
            t = r["test"]
            inside = not one and t["min"] <= f["test_accuracy"] <= t["max"]
            noise = ", within noise" if inside else ""
            lines.append(
                f"| {m['model']} | {r['variant']} | {r['config'].get('steps', '-')} |"
                f" {_cell(r['test'], one)} |"
                f" {r['drop_points']:+.1f}{noise} | {r['artifact_bytes']:,} |"
                f" {100 * r['artifact_ratio']:.0f}% |"
            )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
