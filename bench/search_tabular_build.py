"""Build the tabular NAS benchmark: every architecture of `tabular_space()` trained on digits.

Run: .venv/bin/python bench/search_tabular_build.py [--workers 2]
  ->  bench/data/nas_tabular_digits.json

Each of the 288 candidates is built with `macro_net(**TABULAR_KWARGS, **candidate)` and
trained with three seeds (0, 1, 2: weight init and data order) under one fixed short budget
(`BUDGET`: 8 epochs of AdamW on the 1,257-image train split, batch 64, cosine schedule,
160 steps), on one torch thread per process. Each row holds the candidate, its parameters and
MACs (one 8x8 image, `netchisel.measure.count_flops`), and per seed the val and test accuracy
(270 images each, the zoo's fixed stratified split) and the train seconds.

Resumable: workers append finished rows to `nas_tabular_digits.part<k>.jsonl` as they go and
skip the rows already there, so an interrupted build continues where it stopped. When every
row is done the parts are merged, in candidate order, into the JSON and removed; the meta
records the wall time of the last run and how many rows it found already done.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.measure.flops import count_flops
from netchisel.measure.machine import machine_info
from netchisel.search.nas import TABULAR_KWARGS, macro_net, tabular_space
from netchisel.search.tabular import candidate_key
from netchisel.zoo import data

DATA = Path(__file__).parent / "data"
TABLE = DATA / "nas_tabular_digits.json"
SEEDS = (0, 1, 2)
BUDGET = TrainSettings(epochs=8, lr=3e-3, weight_decay=1e-4, batch_size=64)


def part_path(k: int) -> Path:
    return DATA / f"nas_tabular_digits.part{k}.jsonl"


def done_keys() -> set[str]:
    keys: set[str] = set()
    for path in DATA.glob("nas_tabular_digits.part*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                keys.add(candidate_key(json.loads(line)["candidate"]))
    return keys


def measure(index: int, candidate: dict[str, Any]) -> dict[str, Any]:
    task = data.task("digits")
    row: dict[str, Any] = {"index": index, "candidate": candidate}
    model = macro_net(**TABULAR_KWARGS, **candidate)
    count = count_flops(model, torch.zeros(1, 1, 8, 8))
    row["params"] = sum(p.numel() for p in model.parameters())
    row["macs"] = count.macs
    row["val"], row["test"], row["train_seconds"] = [], [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = macro_net(**TABULAR_KWARGS, **candidate)
        start = time.perf_counter()
        fit(model, task, BUDGET, Context(task, quiet=True, seed=seed))
        row["train_seconds"].append(round(time.perf_counter() - start, 3))
        row["val"].append(round(task.evaluate(model, "val")["accuracy"], 4))
        row["test"].append(round(task.evaluate(model, "test")["accuracy"], 4))
    return row


def work(k: int, workers: int) -> None:
    torch.set_num_threads(1)
    done = done_keys()
    with part_path(k).open("a") as out:
        for index, candidate in enumerate(tabular_space().candidates()):
            if index % workers != k or candidate_key(candidate) in done:
                continue
            row = measure(index, candidate)
            out.write(json.dumps(row) + "\n")
            out.flush()
            val = sum(row["val"]) / len(row["val"])
            print(f"[{k}] {index:3d} val {val:6.2f} {sum(row['train_seconds']):5.1f}s", flush=True)


def merge(wall_seconds: float, resumed: int) -> None:
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(DATA.glob("nas_tabular_digits.part*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[candidate_key(row["candidate"])] = row
    space = list(tabular_space().candidates())
    missing = [c for c in space if candidate_key(c) not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} rows missing; run the build again to finish them")
    meta = {
        "space": "tabular",
        "builder": "netchisel.search.nas:macro_net",
        "builder_kwargs": TABULAR_KWARGS,
        "size": len(space),
        "task": "digits (8x8): 1257 train / 270 val / 270 test, stratified split, seed 0",
        "budget": {**asdict(BUDGET), "steps": 8 * 20},
        "seeds": list(SEEDS),
        "seed_meaning": "torch.manual_seed(seed) before building, and Context.seed (data order)",
        "torch_threads_per_process": 1,
        "macs_input": [1, 1, 8, 8],
        "build_wall_seconds": round(wall_seconds, 1),
        "resumed_rows": resumed,
        "train_cpu_seconds": round(sum(sum(r["train_seconds"]) for r in rows.values()), 1),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
    }
    ordered = [rows[candidate_key(c)] for c in space]
    tmp = TABLE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": ordered}, separators=(",", ":")) + "\n")
    os.replace(tmp, TABLE)
    for path in DATA.glob("nas_tabular_digits.part*.jsonl"):
        path.unlink()
    print(f"wrote {TABLE} ({len(ordered)} rows, {TABLE.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    start = time.perf_counter()
    resumed = len(done_keys())
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=work, args=(k, args.workers)) for k in range(args.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit("a worker failed; run the build again to resume")
    merge(time.perf_counter() - start, resumed)


if __name__ == "__main__":
    main()
