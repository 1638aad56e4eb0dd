"""Distillation benchmark 2: a 4x smaller zoo gpt on the pydoc text, alone vs distilled.

Run: .venv/bin/python bench/distill_gpt.py   ->  bench/results/distill_gpt.json

Teacher: the zoo reference gpt (4 layers, 128 wide, 875,264 params, trained 1,000 steps).
Student: `zoo.gpt(n_layer=4, n_head=4, n_embd=60)` (214,440 params, 4.08x fewer), freshly
initialised with the same seed in both arms. Both arms run the `distill` stage with the same
`STEPS`, optimiser, learning rate, schedule and batches (same seed, so the same data order):

- alone: `alpha=1`: the task's next-token cross-entropy only (the teacher does not run;
  tests/distill show alpha=1 trains bit for bit like `fit` on the task);
- distilled: `alpha=ALPHA`, token-level forward KL(teacher || student) at temperature `T`.

The budget is cut to fit ~10 minutes on 2 busy CPU cores: `STEPS` steps of `BATCH` windows of
`BLOCK` bytes (the reference gpt trained 1,000 steps of 32 x 128), so both students are far from
converged and the numbers compare the two arms at equal, short training, not final quality.
Perplexity (per byte) on the val and test splits, cut into `BLOCK`-byte windows; the teacher is
measured on the same windows.

Cost: 380 s of CPU time (20 minutes of wall time on the loaded 2-core machine where the
results were taken; on an idle one, about 5).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.distill import DistillConfig, distill_
from netchisel.zoo import data, models, train

STUDENT = {"n_layer": 4, "n_head": 4, "n_embd": 60}
STEPS = 200
BATCH = 16
BLOCK = 64
LR = 3e-3
WEIGHT_DECAY = 0.01
T = 1.0
ALPHA = 0.1
SEED = 0


def metrics(model: nn.Module, task: Any) -> dict[str, dict[str, float]]:
    return {s: task.evaluate(model, s) for s in ("val", "test")}


def main() -> None:
    torch.set_num_threads(2)
    teacher = train.pretrained("gpt")
    task = data.task("text", block_size=BLOCK, batch_size=BATCH)
    arms: dict[str, Any] = {}
    for name, alpha in (("alone", 1.0), ("distilled", ALPHA)):
        torch.manual_seed(SEED)
        student = models.gpt(**STUDENT)
        config = DistillConfig(
            steps=STEPS, lr=LR, weight_decay=WEIGHT_DECAY, temperature=T, alpha=alpha
        )
        started = time.perf_counter()
        distill_(student, config, task, teacher, seed=SEED)
        seconds = time.perf_counter() - started
        arms[name] = {
            "alpha": alpha,
            "train_seconds": round(seconds, 1),
            **metrics(student, task),
        }
        print(name, arms[name])
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in models.gpt(**STUDENT).parameters())
    alone, distilled = arms["alone"]["test"], arms["distilled"]["test"]
    result = {
        "setup": {
            "teacher": "zoo gpt reference (n_layer 4, n_head 4, n_embd 128)",
            "teacher_params": teacher_params,
            "student": f"zoo gpt {STUDENT}",
            "student_params": student_params,
            "param_ratio": teacher_params / student_params,
            "steps": STEPS,
            "batch_size": BATCH,
            "block_size": BLOCK,
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "temperature": T,
            "alpha": ALPHA,
            "divergence": "forward KL(teacher || student), per token",
            "seed": SEED,
            "threads": torch.get_num_threads(),
        },
        "teacher": metrics(teacher, task),
        "arms": arms,
        "test_perplexity_ratio": distilled["perplexity"] / alone["perplexity"],
    }
    path = write_result("distill_gpt", result)
    print(
        f"test perplexity: teacher {result['teacher']['test']['perplexity']:.2f}, alone "
        f"{alone['perplexity']:.2f}, distilled {distilled['perplexity']:.2f} -> {path}"
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/distill_gpt.json)."""
    s, arms, teacher = d["setup"], d["arms"], d["teacher"]
    lines = [
        "## Distillation: a 4x smaller gpt on the pydoc text (`bench/distill_gpt.py`)",
        "",
        f"Teacher: {s['teacher']}, {s['teacher_params']:,} params. Student: {s['student']}, "
        f"{s['student_params']:,} params ({s['param_ratio']:.2f}x fewer), fresh, same seed in "
        f"both arms. Same {s['steps']} steps of {s['batch_size']} x {s['block_size']} bytes "
        f"(lr {s['lr']}, cosine) alone (alpha 1) or distilled ({s['divergence']}, T "
        f"{s['temperature']:g}, alpha {s['alpha']:g}). A short budget (the reference trained "
        "1,000 steps of 32 x 128): both students are far from converged. Perplexity per byte "
        f"on {s['block_size']}-byte windows.",
        "",
        "| model | params | val perplexity | test perplexity | train s (wall, loaded CPU) |",
        "|---|---:|---:|---:|---:|",
        f"| teacher | {s['teacher_params']:,} | {teacher['val']['perplexity']:.2f} |"
        f" {teacher['test']['perplexity']:.2f} | |",
    ]
    for name, arm in arms.items():
        lines.append(
            f"| student {name} | {s['student_params']:,} | {arm['val']['perplexity']:.2f} |"
            f" {arm['test']['perplexity']:.2f} | {arm['train_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Distilled / alone test perplexity: {d['test_perplexity_ratio']:.3f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
