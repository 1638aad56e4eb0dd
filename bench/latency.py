"""Latency of the zoo models on each backend, A/B against eager with the alternating harness.

Run: .venv/bin/python bench/latency.py   ->  bench/results/latency.json

For every model and batch size, eager PyTorch is A and each other backend is B, timed
alternately in one run by `netchisel.measure.compare_latency`; the result is the ratio of
medians (speedup > 1 means B is faster). One intra-op thread, so the 2-core machine's second
core absorbs background noise.
"""

from __future__ import annotations

from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs

from netchisel.measure.latency import compare_latency, make_runner
from netchisel.zoo import data, models

CASES = (("cnn", "digits32"), ("resnet", "digits32"), ("mobilenet", "digits32"), ("gpt", "text"))
BATCHES = {"cnn": (1, 64), "resnet": (1, 64), "mobilenet": (1, 64), "gpt": (1, 8)}


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for name, task_name in CASES:
        model = models.build(name).eval()
        task = data.task(task_name)
        for batch in BATCHES[name]:
            inputs = task.example_inputs(batch)
            eager = make_runner(model, inputs, "eager", threads=1)
            for backend in ("compile", "onnxruntime"):
                other = make_runner(model, inputs, backend, threads=1)
                with torch.inference_mode():
                    cmp = compare_latency(
                        eager,
                        other,
                        batch_size=batch,
                        threads=1,
                        rounds=10,
                        calls_per_round=5,
                        labels=("eager", backend),
                    )
                row = {"model": name, "batch": batch, "backend": backend, **cmp.to_dict()}
                rows.append(row)
                print(
                    f"{name:10s} batch {batch:3d}  eager {cmp.a.median_ms:8.3f} ms  "
                    f"{backend:12s} {cmp.b.median_ms:8.3f} ms  speedup {cmp.speedup:5.2f}x"
                )
    path = write_result("latency", {"threads": 1, "rows": rows})
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/latency.json)."""
    lines = [
        "## Latency backends (`bench/latency.py`)",
        "",
        f"Untrained zoo models, {d['threads']} thread, A/B alternating (`compare_latency`): eager",
        "PyTorch vs torch.compile (inductor, with freezing) and vs ONNX Runtime. Speedup = eager",
        "median / backend median; absolute milliseconds are from a 2-core CPU and only indicative.",
        "",
        "| model | batch | eager ms | backend | backend ms | speedup |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['a']['median_ms']:.3f} | {r['backend']} |"
            f" {r['b']['median_ms']:.3f} | {r['speedup']:.2f}x |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
