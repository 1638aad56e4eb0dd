"""Per-sample width on a transformer (issue 19, "stages that work on any model"): the Hugging
Face ViT of `dynamic_early_exit_vit.py` made slimmable by `dynamic.width`, against itself.

Run: .venv/bin/python bench/dynamic_width_vit.py  (-> bench/results/dynamic_width_vit.json)

The ViT (4 layers, hidden 64, 4 heads of 16, FFN 128) is trained here from scratch on digits32
(seed 0; the same recipe as the early-exit benchmark). Widths 0.25 / 0.5 / 0.75 / 1.0: the
stage's plan search cuts each attention's query, key and value together (1 / 2 / 3 / 4 whole
heads) and the FFN's hidden units (32 / 64 / 96 / 128), and keeps the residual stream whole
(`width_plan.plan_slimmable`). For each seed (the gate's initial weights and the data order)
the widths train together with the ViT as teacher (`distill_from: original`, 300 steps, lr 5e-4),
the gate 200 steps, its bias calibrated on val to the least mean MACs within 0.5 points
(agreement rule). On test, with the saved-and-loaded artifact: each width alone, the gated
model's accuracy and mean MACs, and latency against the static ViT, one thread, A/B in one run,
at batch 1 (100 images one at a time) and batch 64 (256 images), and each width alone at
batch 64.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from common import spread, write_result
from dynamic_early_exit import _latency
from dynamic_early_exit_vit import train_backbone
from dynamic_width import _cell
from torch import Tensor, nn

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import Task
from netchisel.dynamic.width import WidthConfig, calibrate_gate, dynamic_width
from netchisel.dynamic.width_model import WidthModel
from netchisel.zoo import data

MAX_DROP = 0.5
WIDTHS = (0.25, 0.5, 0.75, 1.0)


class _At(nn.Module):
    def __init__(self, model: WidthModel, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        return self.model.run_width(x, self.k)


def run_seed(backbone: nn.Module, task: Task, seed: int, rounds: int) -> dict[str, Any]:
    batches = list(task.loader("test"))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        static_test = 100.0 * float((backbone(x).logits.argmax(-1) == y).double().mean())
    static_val = task.evaluate(backbone, "val")["accuracy"]
    ctx = Context(task, quiet=True, seed=seed)
    config = WidthConfig(
        widths=WIDTHS, steps=300, lr=5e-4, gate_steps=200, calibrate_norms=0, max_drop=100.0
    )
    t0 = time.perf_counter()
    model = dynamic_width(copy.deepcopy(backbone), config, ctx)
    assert isinstance(model, WidthModel)
    r = ctx.records
    try:
        calibrate_gate(model, task, max_drop=MAX_DROP, reference=static_val)
        met = True
    except ConfigError:
        calibrate_gate(model, task, bias=1e9)
        met = False
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = nc.save(model, Path(tmp) / "m")
        loaded = nc.load(path, trust=[transformers.ViTForImageClassification]).eval()
    with torch.no_grad():
        out, choice = loaded.routed(x)
        alone = [loaded.run_width(x, k).argmax(-1) for k in range(len(WIDTHS))]
    accuracy = 100.0 * float((out.argmax(-1) == y).double().mean())
    shares = (torch.bincount(choice, minlength=len(WIDTHS)).double() / len(x)).tolist()
    macs, gate, static = r["macs_per_width"], r["gate_macs"], r["static_macs"]
    expected = gate + sum(m * f for m, f in zip(macs, shares, strict=True))
    row = {
        "seed": seed,
        "stage_seconds": round(seconds, 1),
        "layers_sliced": len(r["layers_sliced"]),
        "static_test_accuracy": static_test,
        "width_test_accuracy": [100.0 * float((a == y).double().mean()) for a in alone],
        "macs_per_width": macs,
        "gate_macs": gate,
        "static_macs": static,
        "budget_met_on_val": met,
        "test_width_shares": shares,
        "test_accuracy": accuracy,
        "test_drop": static_test - accuracy,
        "mac_reduction": 1.0 - expected / static,
        "latency": _latency(backbone, loaded, x, rounds),
        "alone_batch64": {
            f"width {w:g}": _latency(backbone, _At(loaded, k), x, rounds)["batch64"]["speedup"]
            for k, w in enumerate(WIDTHS[:-1])
        },
    }
    lat = row["latency"]
    print(
        f"seed {seed}: widths {[round(a, 2) for a in row['width_test_accuracy']]}, gated "
        f"{accuracy:.2f} (static {static_test:.2f}), reduction {row['mac_reduction']:.3f}, "
        f"shares {[round(f, 3) for f in shares]}, speed-up b1 {lat['batch1']['speedup']:.2f} "
        f"b64 {lat['batch64']['speedup']:.2f}, alone b64 {row['alone_batch64']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    task = data.task("digits32")
    torch.set_num_threads(2)
    backbone = train_backbone(task)
    torch.set_num_threads(1)
    rows = [run_seed(backbone, task, seed, args.rounds) for seed in args.seeds]

    def med(values: list[float]) -> dict[str, Any]:
        return spread(values)

    result = {
        "setup": {
            "task": "digits32 (zoo), 1,257 / 270 / 270 images",
            "backbone": "the ViT of dynamic_early_exit_vit.py (trained here, seed 0)",
            "widths": list(WIDTHS),
            "training": "distill_from original, 300 steps, lr 5e-4; gate 200 steps",
            "calibration": f"agreement rule, max_drop {MAX_DROP} on val",
            "seeds": args.seeds,
            "latency": f"compare_latency, {args.rounds} rounds x 2 calls, one thread",
        },
        "mac_reduction": med([r["mac_reduction"] for r in rows]),
        "test_drop": med([r["test_drop"] for r in rows]),
        "width_test_accuracy": [
            med([r["width_test_accuracy"][k] for r in rows]) for k in range(len(WIDTHS))
        ],
        "speedup_batch1": med([r["latency"]["batch1"]["speedup"] for r in rows]),
        "speedup_batch64": med([r["latency"]["batch64"]["speedup"] for r in rows]),
        "alone_batch64": {
            key: med([r["alone_batch64"][key] for r in rows]) for key in rows[0]["alone_batch64"]
        },
        "runs": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"-> {write_result('dynamic_width_vit', result)}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark."""
    r0 = d["runs"][0]
    widths = " / ".join(f"{s['median']:.1f}" for s in d["width_test_accuracy"])
    macs = " / ".join(f"{m / 1e6:.2f}M" for m in r0["macs_per_width"])
    alone = ", ".join(f"{k} {_cell(v, 1, 2)}x" for k, v in d["alone_batch64"].items())
    return "\n".join(
        [
            "## Per-sample width on a ViT (dynamic.width on a transformer)",
            "",
            f"`python bench/dynamic_width_vit.py` ({d['date']}). {d['setup']['backbone']}; "
            f"widths {d['setup']['widths']} (whole heads and FFN units, residual stream "
            f"whole; MACs {macs}); {d['setup']['training']}; {d['setup']['calibration']}. "
            f"Seeds {d['setup']['seeds']}: median (min-max), on test.",
            "",
            "| static test % | each width alone, test % | MAC reduction % | test drop (points) "
            "| speed-up b1 | speed-up b64 |",
            "|---:|---|---:|---:|---:|---:|",
            f"| {r0['static_test_accuracy']:.2f} | {widths} | {_cell(d['mac_reduction'], 100)} "
            f"| {_cell(d['test_drop'], 1, 2)} | {_cell(d['speedup_batch1'], 1, 2)} | "
            f"{_cell(d['speedup_batch64'], 1, 2)} |",
            "",
            f"Each width alone at batch 64, sliced: {alone}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
