"""Reference quality of every zoo model, trained from scratch with its recipe in one run.

For each trained zoo model: parameters, the recipe (task, steps), wall time of training, and
the val/test metrics (accuracy in percent for the digits models; perplexity, bits per byte and
bits per char for the gpt). For minilm (pretrained by its authors, not trained here): parameters,
load time and encoding time of the sentence set. Writes `bench/results/zoo_reference.json`.

Training uses a fresh temporary cache, so every number here was measured in this run.
Wall times depend on the machine and on its load; the JSON records both.

Run:
    python bench/zoo_reference.py                 # all models
    python bench/zoo_reference.py --models mlp cnn
    python bench/zoo_reference.py --models mnist1d_deep_cnn --update   # keep the other rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import saturated_note  # bench/ is on sys.path when a script in it runs

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder_of
from netchisel.zoo import data, models, train

RESULTS = Path(__file__).parent / "results" / "zoo_reference.json"
# The bar each digits model must clear on the 270 test images (98.5 % = at most 4 errors).
TARGETS = {"cnn": 98.5, "resnet": 98.5}


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_1m_at_start": os.getloadavg()[0],
    }


def bench_trained(name: str) -> dict[str, Any]:
    """Train `name` with its recipe (cache is empty) and collect its recorded metrics."""
    start = time.perf_counter()
    train.pretrained(name)
    wall = time.perf_counter() - start
    metrics = train.reference_metrics(name)
    rec = train.recipe(name)
    row: dict[str, Any] = {
        "kwargs": (builder_of(models.build(name)) or ("", {}))[1],
        "task": rec.task,
        "task_kwargs": rec.task_kwargs,
        # Steps win over epochs in fit, so show only the one that applies.
        "settings": {
            k: v
            for k, v in vars(rec.settings).items()
            if v is not None and not (k == "epochs" and rec.settings.steps is not None)
        },
        "params": metrics["params"],
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds_with_data_and_eval": round(wall, 2),
        "load_average_1m_after": os.getloadavg()[0],
        "val": metrics["val"],
        "test": metrics["test"],
    }
    if name in TARGETS:
        row["target_test_accuracy"] = TARGETS[name]
        row["meets_target"] = metrics["test"]["accuracy"] >= TARGETS[name]
    return row


def bench_minilm() -> dict[str, Any]:
    """Load the bundled all-MiniLM-L6-v2 and embed the reference sentences once."""
    start = time.perf_counter()
    model = models.build("minilm")
    load = time.perf_counter() - start
    sentences = data.sentences(256)
    ids, mask = models.minilm_tokenize(sentences, max_length=64)
    start = time.perf_counter()
    with torch.no_grad():
        emb = model(ids, mask)
    encode = time.perf_counter() - start
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(load, 2),
        "sentences": len(sentences),
        "max_length": 64,
        "encode_seconds": round(encode, 3),
        "embedding_dim": emb.shape[1],
        "mean_norm": float(emb.norm(dim=-1).mean()),
        "note": "pretrained by its authors; netchisel does not train it",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=[*train.TRAINED_NAMES, "minilm"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--update", action="store_true", help="keep the other models' rows already in --out"
    )
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "machine": machine(),
        "data": {
            "digits_split": {k: len(v) for k, v in data.digits(8).items()},
            "text_bytes": {k: len(v) for k, v in data.text_tokens().items()},
            "text_fingerprint": data.text_fingerprint(),
            "text_non_ascii_fraction": data.non_ascii_fraction(),
            "text_bytes_per_char": data.bytes_per_char(),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as cache:
        os.environ[train.CACHE_ENV] = cache
        for name in args.models:
            print(f"[zoo_reference] {name} ...", file=sys.stderr, flush=True)
            try:
                row = bench_minilm() if name == "minilm" else bench_trained(name)
            except ConfigError as e:  # e.g. the llm extra is not installed
                row = {"skipped": str(e)}
            out["models"][name] = row
            print(f"[zoo_reference] {name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    if args.update and args.out.exists():  # each kept row was measured in its own earlier run
        old = json.loads(args.out.read_text(encoding="utf-8"))
        out["models"] = {**old["models"], **out["models"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/zoo_reference.json)."""
    lines = [
        "## Reference models (`bench/zoo_reference.py`)",
        "",
        "Trained deterministically by `netchisel.zoo.train` on 2 CPU cores (wall times are from a",
        "shared machine and vary).",
        "",
        "| model | params | task | steps | train s | val | test |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for name, m in d["models"].items():
        if "val" not in m:
            lines.append(
                f"| {name} | {m['params']:,} | pretrained by its authors | - | - | - | - |"
            )
            continue
        if "perplexity" in m["val"]:
            val = f"ppl {m['val']['perplexity']:.2f}, {m['val']['bits_per_char']:.3f} bits/char"
            test = f"ppl {m['test']['perplexity']:.2f}, {m['test']['bits_per_char']:.3f} bits/char"
        else:
            val = f"{m['val']['accuracy']:.2f}%"
            test = f"{m['test']['accuracy']:.2f}%"
        lines.append(
            f"| {name} | {m['params']:,} | {m['task']} | {m['steps']} | {m['train_seconds']:.1f}"
            f" | {val} | {test} |"
        )
    digits = [
        m["test"]["accuracy"]
        for m in d["models"].values()
        if "test" in m and "accuracy" in m["test"] and m["task"].startswith("digits")
    ]
    if digits:
        lines += saturated_note(max(digits))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
