"""Distillation benchmark 1: Hinton-style soft targets on digits, a small labelled budget.

Run: .venv/bin/python bench/distill_digits.py
  ->  bench/results/distill_digits.json and distill_digits.svg (test errors vs T and alpha)

Teacher: the zoo reference mlp (LeNet-300-100 shape on 8x8 digits, 50,610 params, trained on
all 1,257 training images). Student: `zoo.mlp(hidden=[STUDENT_HIDDEN])` (a single 16-unit
hidden layer, 1,210 params). Both students see only the first `LABELS` training images (a
fixed, class-balanced pick) for the same `STEPS` steps of the same optimiser, learning rate and
batch size:

- alone: `fit` on the hard labels (the task's cross-entropy);
- distilled: the `distill` stage, alpha * hard + (1 - alpha) * T^2 * KL(teacher_T || student_T),
  with the teacher's soft targets on the same images.

Every (T, alpha) of the sweep runs with each seed of `SEEDS` (the seed sets the initial weights
and the data order). The headline (T, alpha) is chosen by median *validation* errors, and its
*test* errors are reported, so the choice does not peek at the test split. Errors are counted on
the 270-image test split. Target (issue 5): the distilled student closes >= 50% of the gap
between the student alone and the teacher. Published anchor (Hinton et al. 2015, MNIST, full
labels): teacher 67 errors, student alone 146, distilled 74.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from common import RESULTS, write_result  # bench/ is on sys.path when a script in it runs
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.task import Task, classification_task
from netchisel.core.train import TrainSettings, fit
from netchisel.distill import DistillConfig, distill_
from netchisel.zoo import data, models, train

LABELS = 200
STUDENT_HIDDEN = 16
STEPS = 300
LR = 1e-2
BATCH = 50
SEEDS = (0, 1, 2, 3, 4)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
ALPHAS = (0.0, 0.1, 0.5, 0.9)


def labelled_task() -> Task:
    """Digits with only the first LABELS/10 training images of each class; full val and test."""
    d = data.digits(8)
    x, y = d["train"].tensors
    per_class = LABELS // 10
    picks = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
    picks = picks.sort().values
    splits = {"train": TensorDataset(x[picks], y[picks]), "val": d["val"], "test": d["test"]}
    return classification_task(splits, batch_size=BATCH, name="digits-200-labels")


def student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.mlp(hidden=[STUDENT_HIDDEN])


def errors(model: nn.Module, task: Task, split: str) -> int:
    accuracy = task.evaluate(model, split)["accuracy"]
    return round((100.0 - accuracy) / 100.0 * len(task.splits[split]))  # type: ignore[arg-type]


def main() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least noisy
    task = labelled_task()
    teacher = train.pretrained("mlp")
    teacher_errors = {s: errors(teacher, task, s) for s in ("val", "test")}
    settings = TrainSettings(steps=STEPS, lr=LR)
    started = time.perf_counter()

    alone: list[dict[str, int]] = []
    for seed in SEEDS:
        model = student(seed)
        fit(model, task, settings, Context(task, quiet=True, seed=seed))
        alone.append({s: errors(model, task, s) for s in ("val", "test")})

    sweep: list[dict[str, Any]] = []
    for t in TEMPERATURES:
        for alpha in ALPHAS:
            runs = []
            for seed in SEEDS:
                model = student(seed)
                config = DistillConfig(steps=STEPS, lr=LR, temperature=t, alpha=alpha)
                distill_(model, config, task, teacher, seed=seed)
                runs.append({s: errors(model, task, s) for s in ("val", "test")})
            sweep.append(
                {
                    "temperature": t,
                    "alpha": alpha,
                    "val_errors": [r["val"] for r in runs],
                    "test_errors": [r["test"] for r in runs],
                    "median_val_errors": statistics.median(r["val"] for r in runs),
                    "median_test_errors": statistics.median(r["test"] for r in runs),
                }
            )
            print(f"T={t} alpha={alpha}: test errors {[r['test'] for r in runs]}")
    seconds = time.perf_counter() - started

    best = min(sweep, key=lambda r: (r["median_val_errors"], r["median_test_errors"]))
    alone_test = statistics.median(r["test"] for r in alone)
    gap = alone_test - teacher_errors["test"]
    closed = (alone_test - best["median_test_errors"]) / gap if gap > 0 else float("nan")
    result = {
        "setup": {
            "teacher": "zoo mlp (hidden 300, 100), trained on all 1,257 training images",
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student": f"zoo mlp (hidden {STUDENT_HIDDEN})",
            "student_params": sum(p.numel() for p in student(0).parameters()),
            "labels": LABELS,
            "steps": STEPS,
            "lr": LR,
            "batch_size": BATCH,
            "seeds": list(SEEDS),
            "test_images": len(task.splits["test"]),  # type: ignore[arg-type]
            "selection": "(T, alpha) with the lowest median validation errors",
        },
        "teacher_errors": teacher_errors,
        "alone": {
            "val_errors": [r["val"] for r in alone],
            "test_errors": [r["test"] for r in alone],
            "median_test_errors": alone_test,
        },
        "sweep": sweep,
        "best": best,
        "gap_closed": closed,
        "target_gap_closed": 0.5,
        "meets_target": bool(closed >= 0.5),
        "published_mnist": {"teacher": 67, "alone": 146, "distilled": 74},
        "sweep_seconds": round(seconds, 1),
    }
    path = write_result("distill_digits", result)
    plot(result)
    print(
        f"teacher {teacher_errors['test']}, alone {alone_test}, distilled "
        f"{best['median_test_errors']} (T={best['temperature']}, alpha={best['alpha']}): "
        f"{100 * closed:.0f}% of the gap closed -> {path}"
    )


def plot(result: dict[str, Any]) -> None:
    """Median test errors against T, one line per alpha, with the two references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for alpha in ALPHAS:
        rows = [r for r in result["sweep"] if r["alpha"] == alpha]
        ax.plot(
            [r["temperature"] for r in rows],
            [r["median_test_errors"] for r in rows],
            marker="o",
            label=f"distilled, alpha={alpha}",
        )
    ax.axhline(result["alone"]["median_test_errors"], color="gray", ls="--", label="student alone")
    ax.axhline(result["teacher_errors"]["test"], color="black", ls=":", label="teacher")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("temperature T")
    ax.set_ylabel(f"test errors (of {result['setup']['test_images']}), median of seeds")
    ax.set_title(f"Distillation on digits, {LABELS} labels, {STEPS} steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "distill_digits.svg", format="svg")
    plt.close(fig)


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/distill_digits.json)."""
    s, best, alone = d["setup"], d["best"], d["alone"]
    pub = d["published_mnist"]
    lines = [
        "## Distillation: Hinton soft targets on digits (`bench/distill_digits.py`)",
        "",
        f"Teacher: {s['teacher']} ({s['teacher_params']:,} params). Student: {s['student']} "
        f"({s['student_params']:,} params), trained on {s['labels']} labelled images for "
        f"{s['steps']} steps (lr {s['lr']}, batch {s['batch_size']}) alone or distilled (soft "
        f"targets on the same images). Test errors of {s['test_images']}, median of seeds "
        f"{s['seeds']}; (T, alpha) chosen by median validation errors. Target: the distilled "
        f"student closes >= {100 * d['target_gap_closed']:.0f}% of the gap. Published (Hinton "
        f"et al. 2015, MNIST): teacher {pub['teacher']}, alone {pub['alone']}, distilled "
        f"{pub['distilled']} errors. Plot: `bench/results/distill_digits.svg`.",
        "",
        "| model | test errors (median) | per seed |",
        "|---|---:|---|",
        f"| teacher | {d['teacher_errors']['test']} | |",
        f"| student alone | {alone['median_test_errors']} | {alone['test_errors']} |",
        f"| student distilled, T={best['temperature']:g}, alpha={best['alpha']:g} |"
        f" {best['median_test_errors']} | {best['test_errors']} |",
        "",
        f"Gap closed: {100 * d['gap_closed']:.0f}% "
        f"({'meets' if d['meets_target'] else 'misses'} the target).",
        "",
        "Sweep, median test errors (rows T, columns alpha):",
        "",
    ]
    alphas = sorted({r["alpha"] for r in d["sweep"]})
    temps = sorted({r["temperature"] for r in d["sweep"]})
    by = {(r["temperature"], r["alpha"]): r["median_test_errors"] for r in d["sweep"]}
    lines += [
        "| T | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
        "|---:|" + "---:|" * len(alphas),
    ]
    lines += [f"| {t:g} | " + " | ".join(f"{by[(t, a)]:g}" for a in alphas) + " |" for t in temps]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
