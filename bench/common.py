"""Helpers the benchmarks share: where results go, what machine they came from, reading them
back, and the one table two sections draw alike."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from netchisel.measure.machine import machine_info

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/NAME.json with the machine and the date beside the numbers."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def load_result(name: str) -> dict[str, Any] | None:
    """bench/results/NAME.json as written, or None if that benchmark has not been run."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def arms_table(title: str, d: dict[str, Any], with_steps: bool) -> str:
    """A section of one row per training arm (`d["table"]`): sparsity, mean, min, max test %."""
    head = "| arm | sparsity |" + (" steps |" if with_steps else "") + " mean test % | min | max |"
    lines = [title, "", head, "|---|---:|" + ("---:|" if with_steps else "") + "---:|---:|---:|"]
    for r in d["table"]:
        steps = f" {r['steps']} |" if with_steps else ""
        lines.append(
            f"| {r['arm']} | {100 * r['sparsity']:.0f}% |{steps} {r['mean_test_accuracy']:.2f} |"
            f" {r['min']:.2f} | {r['max']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def saturated_note(test_accuracy: float, test_images: int = 270) -> list[str]:
    """The lines that mark a digits table as at its ceiling when the original model scores
    >= 99.6% on the 270-image test split (one image = 0.37 points), else none (issue 17)."""
    if test_accuracy < 99.6:
        return []
    return [
        "",
        f"Saturated: the original scores {test_accuracy:.2f}% on {test_images} test images; 1"
        f" image = {100 / test_images:.2f} points, so differences here are within noise; see the"
        " MNIST-1D sections for measurements that separate methods.",
    ]
