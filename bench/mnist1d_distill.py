"""MNIST-1D distillation (issue 17, item 4): the trained CNN teaches a CNN about 4x smaller.

Run: .venv/bin/python bench/mnist1d_distill.py   ->  bench/results/mnist1d_distill.json

Teacher: `zoo.train.pretrained("mnist1d_cnn")` (25 channels, 5,210 params, the zoo recipe on
the task's 3,500 train sequences). Student: `mnist1d_cnn(channels=STUDENT_CHANNELS)` (11
channels, 1,374 params, 3.8x fewer). Both students train on the same 3,500 train sequences for
the same `STEPS` steps of the same optimiser (the zoo's MNIST-1D recipe: AdamW with weight
decay 0, i.e. Adam, lr 1e-2, constant, batches of 100); the seed sets the initial weights and
the data order, and each seed's alone and distilled students start from the same weights:

- alone: `fit` on the hard labels (cross-entropy);
- distilled: the `distill` stage, alpha * hard + (1 - alpha) * T^2 * KL(teacher_T || student_T)
  (Hinton et al. 2015 soft targets) on the same batches.

Every (T, alpha) of the grid runs with every seed; the headline (T, alpha) is the one with the
best median *validation* accuracy, and its *test* accuracy is reported (no choice on test).
Gap closed = (distilled - alone) / (teacher - alone), medians of the test accuracy. Target
(issue 17): >= 50%. Hinton et al. 2015's MNIST anchor: teacher 67, alone 146, distilled 74
test errors, i.e. 91% of the gap closed. One thread.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.distill import DistillConfig, distill_
from netchisel.zoo import data, models, train

STUDENT_CHANNELS = 11
STEPS = train.MNIST1D_SETTINGS.steps
LR = train.MNIST1D_SETTINGS.lr
TEMPERATURES = (2.0, 4.0)
ALPHAS = (0.1, 0.5)
HINTON_MNIST = {"teacher": 67, "alone": 146, "distilled": 74}


def student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("mnist1d_cnn", channels=STUDENT_CHANNELS)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def accuracies(model: nn.Module, task: Any) -> dict[str, float]:
    model.eval()
    return {s: task.evaluate(model, s)["accuracy"] for s in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = data.task("mnist1d")
    teacher = train.pretrained("mnist1d_cnn")
    teacher_acc = accuracies(teacher, task)
    settings = TrainSettings(
        steps=args.steps,
        lr=LR,
        optimizer=train.MNIST1D_SETTINGS.optimizer,
        weight_decay=train.MNIST1D_SETTINGS.weight_decay,
        schedule=train.MNIST1D_SETTINGS.schedule,
    )
    started = time.perf_counter()

    alone = []
    for seed in args.seeds:
        model = student(seed)
        t0 = time.perf_counter()
        fit(model, task, settings, Context(task, quiet=True, seed=seed))
        alone.append({"seed": seed, **accuracies(model, task), "seconds": time.perf_counter() - t0})
        print(f"alone seed {seed}: {alone[-1]}", flush=True)

    grid: list[dict[str, Any]] = []
    for t in args.temperatures:
        for alpha in args.alphas:
            runs = []
            for seed in args.seeds:
                model = student(seed)
                config = DistillConfig(
                    steps=args.steps,
                    lr=LR,
                    optimizer=train.MNIST1D_SETTINGS.optimizer,
                    weight_decay=train.MNIST1D_SETTINGS.weight_decay,
                    lr_schedule=train.MNIST1D_SETTINGS.schedule,
                    temperature=t,
                    alpha=alpha,
                )
                t0 = time.perf_counter()
                distill_(model, config, task, teacher, seed=seed)
                runs.append(
                    {"seed": seed, **accuracies(model, task), "seconds": time.perf_counter() - t0}
                )
            row = {
                "temperature": t,
                "alpha": alpha,
                "runs": runs,
                "val": spread([r["val"] for r in runs]),
                "test": spread([r["test"] for r in runs]),
            }
            grid.append(row)
            print(f"T={t} alpha={alpha}: test {row['test']} val {row['val']}", flush=True)
    seconds = time.perf_counter() - started

    best = max(grid, key=lambda r: (r["val"]["median"], r["val"]["min"]))
    alone_test = spread([r["test"] for r in alone])
    gap = teacher_acc["test"] - alone_test["median"]
    closed = (best["test"]["median"] - alone_test["median"]) / gap if gap > 0 else float("nan")
    h = HINTON_MNIST
    result = {
        "setup": {
            "teacher": "zoo.train.pretrained('mnist1d_cnn') (25 channels)",
            "teacher_params": params(teacher),
            "student": f"mnist1d_cnn(channels={STUDENT_CHANNELS})",
            "student_params": params(student(0)),
            "size_ratio": round(params(teacher) / params(student(0)), 2),
            "steps": args.steps,
            "optimizer": f"{settings.optimizer} (weight decay {settings.weight_decay})",
            "lr": LR,
            "schedule": settings.schedule,
            "batch_size": 100,
            "train_sequences": len(task.splits["train"]),  # type: ignore[arg-type]
            "test_sequences": len(task.splits["test"]),  # type: ignore[arg-type]
            "seeds": args.seeds,
            "grid": {"temperature": args.temperatures, "alpha": args.alphas},
            "selection": "(T, alpha) with the best median validation accuracy",
            "threads": torch.get_num_threads(),
        },
        "teacher": teacher_acc,
        "alone": {
            "runs": alone,
            "test": alone_test,
            "val": spread([r["val"] for r in alone]),
        },
        "grid": grid,
        "best": {"temperature": best["temperature"], "alpha": best["alpha"]},
        "distilled": {"runs": best["runs"], "test": best["test"], "val": best["val"]},
        "gap_points": gap,
        "gap_closed": closed,
        "target_gap_closed": 0.5,
        "meets_target": bool(closed >= 0.5),
        "hinton_mnist_errors": h,
        "hinton_gap_closed": (h["alone"] - h["distilled"]) / (h["alone"] - h["teacher"]),
        "seconds": round(seconds, 1),
    }
    path = write_result("mnist1d_distill", result)
    print(
        f"teacher {teacher_acc['test']:.1f}, alone {alone_test['median']:.1f}, distilled "
        f"{best['test']['median']:.1f} (T={best['temperature']:g}, alpha={best['alpha']:g}): "
        f"{100 * closed:.0f}% of the gap closed -> {path}"
    )


def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def _noise_note(d: dict[str, Any]) -> str:
    """Whether the distilled median lies inside the alone seeds' range, and the gap vs spread."""
    a, b = d["alone"]["test"], d["distilled"]["test"]
    inside = a["min"] <= b["median"] <= a["max"]
    verdict = "within noise" if inside else "outside the alone seeds' range"
    note = (
        f"Distilled median {b['median']:.1f} vs alone {a['median']:.1f} ({a['min']:.1f}-"
        f"{a['max']:.1f}): {verdict}."
    )
    if d["gap_points"] < a["max"] - a["min"]:
        note += (
            f" The teacher-student gap ({d['gap_points']:.1f} points) is smaller than the alone"
            f" seeds' spread ({a['max'] - a['min']:.1f} points), so the gap-closed fraction is"
            " dominated by seed noise."
        )
    return note


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/mnist1d_distill.json."""
    s = d["setup"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    best = d["best"]
    lines = [
        "## MNIST-1D distillation: CNN teacher into a 4x smaller CNN (`bench/mnist1d_distill.py`)",
        "",
        f"`python bench/mnist1d_distill.py` ({d['date']}). Teacher: {s['teacher']},"
        f" {s['teacher_params']:,} params. Student: {s['student']}, {s['student_params']:,}"
        f" params ({s['size_ratio']}x fewer). Alone and distilled students train on the same"
        f" {s['train_sequences']:,} sequences for the same {s['steps']} steps ({s['optimizer']},"
        f" lr {s['lr']}, {s['schedule']}, batch {s['batch_size']}), from the same initial"
        f" weights per seed. Distilled: Hinton soft targets, alpha * hard + (1 - alpha) * T^2 *"
        f" KL; (T, alpha) from the grid T {s['grid']['temperature']} x alpha"
        f" {s['grid']['alpha']} chosen by median validation accuracy. Test accuracy % on"
        f" {s['test_sequences']:,} sequences, median (min-max) of seeds {seeds}.",
        "",
        "| model | params | test accuracy % | val accuracy % |",
        "|---|---:|---:|---:|",
        f"| teacher (one trained reference) | {s['teacher_params']:,} |"
        f" {d['teacher']['test']:.1f} | {d['teacher']['val']:.1f} |",
        f"| student alone | {s['student_params']:,} | {_cell(d['alone']['test'])} |"
        f" {_cell(d['alone']['val'])} |",
        f"| student distilled, T={best['temperature']:g}, alpha={best['alpha']:g} |"
        f" {s['student_params']:,} | {_cell(d['distilled']['test'])} |"
        f" {_cell(d['distilled']['val'])} |",
        "",
        f"Gap closed (medians): {100 * d['gap_closed']:.0f}% of a {d['gap_points']:.1f}-point"
        f" gap ({'meets' if d['meets_target'] else 'misses'} the >= 50% target; Hinton et al."
        f" 2015's MNIST anchor closed {100 * d['hinton_gap_closed']:.0f}%).",
        "",
        _noise_note(d),
        "",
        "Grid, test accuracy % median (min-max):",
        "",
        "| T | alpha | test | val |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['temperature']:g} | {r['alpha']:g} | {_cell(r['test'])} | {_cell(r['val'])} |"
        for r in d["grid"]
    ]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
