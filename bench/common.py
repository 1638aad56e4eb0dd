"""Helpers the benchmarks share: where results go, what machine they came from, reading them
back, the one table two sections draw alike, seed spreads, A/B latency entries, and the
save-load round trip every bench measures through."""

from __future__ import annotations

import json
import statistics
import tempfile
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


def spread(values: list[float], by_seed: bool = False) -> dict[str, Any]:
    """Median, min and max of per-seed values (and the values themselves with `by_seed`)."""
    out: dict[str, Any] = {"by_seed": list(values)} if by_seed else {}
    return {**out, "median": statistics.median(values), "min": min(values), "max": max(values)}


def split_tensors(task: Any, split: str = "test") -> tuple[Any, Any]:
    """A task split's inputs and labels, each concatenated into one tensor."""
    import torch

    batches = list(task.loader(split))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def ab_entry(cmp: Any) -> dict[str, Any]:
    """A `compare_latency` result as the JSON every bench records: ratio, medians, p10-p90."""
    return {
        "speedup": cmp.speedup,
        "a_median_ms": cmp.a.median_ms,
        "b_median_ms": cmp.b.median_ms,
        "a_p10_p90_ms": [cmp.a.p10_ms, cmp.a.p90_ms],
        "b_p10_p90_ms": [cmp.b.p10_ms, cmp.b.p90_ms],
    }


def ab_speedups(
    models: dict[str, Any],
    pairs: Any,
    task: Any,
    batches: tuple[int, ...],
    calls: tuple[int, int],
) -> dict[str, Any]:
    """A/B latency of each (a, b) pair of `models` on the task's test inputs, one thread,
    eager, 30 alternating rounds; `calls` per round at batch 1 and at larger batches.
    Keys "a/b@batch", values `ab_entry`."""
    from netchisel.measure.latency import compare_latency, make_runner

    out: dict[str, Any] = {}
    for batch in batches:
        inputs = task.example_inputs(batch, split="test")
        runners = {name: make_runner(m, inputs, "eager", threads=1) for name, m in models.items()}
        for a, b in pairs:
            cmp = compare_latency(
                runners[a],
                runners[b],
                batch_size=batch,
                threads=1,
                rounds=30,
                calls_per_round=calls[0] if batch == 1 else calls[1],
                labels=(a, b),
            )
            out[f"{a}/{b}@{batch}"] = ab_entry(cmp)
    return out


def shipped(model: Any, example_inputs: tuple[Any, ...]) -> tuple[Any, int]:
    """The model saved as an artifact and loaded back (checked bit-exact on `example_inputs`),
    and the artifact's bytes: benches measure what a user would ship."""
    import torch

    import netchisel as nc
    from netchisel.artifact import artifact_bytes

    with tempfile.TemporaryDirectory() as tmp:
        directory = nc.save(model, Path(tmp) / "model")
        loaded = nc.load(directory)
        with torch.no_grad():
            same = torch.equal(loaded(*example_inputs), model.eval()(*example_inputs))
        assert same, "artifact is not bit-exact"
        return loaded, artifact_bytes(directory)
