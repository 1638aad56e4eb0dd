"""Quantization-aware training vs post-training quantization, and binary/ternary weights.

Run: .venv/bin/python bench/quant_qat.py   ->  bench/results/quant_qat.json

The zoo cnn (three conv-bn-relu-pool stages and a Linear, trained on digits32) is quantized at
8, 4 and 2 bits four ways:

- `rtn`: `quantize.rtn` as it is (MSE scales): it changes the Linear layer only, the convs stay
  float (it has no conv kernel);
- `ptq`: the same weight format as QAT on every layer, no training (`quantize.qat` with
  `steps: 0`, MSE scales): convs per output channel, the Linear per channel at 8 bits and in
  groups of 128 below;
- `qat-ste` / `lsq`: `quantize.qat` with the straight-through estimator (scales re-chosen by MSE
  every step) or LSQ (learned step sizes, initialised by MSE).

At 2 bits the same three again with one scale per output channel everywhere (`per_channel`),
and LSQ at 4 bits with 8-bit fake-quantized layer inputs (simulated). Then binary and ternary
weights (`quantize.binary`; the first conv and the Linear stay float), trained and untrained,
against 2-bit affine PTQ and LSQ on the same two layers.

Every trained variant gets the same budget: BUDGET below (SGD, momentum 0.9, cosine), once per
seed of the data order; the tables give the median over the seeds. Every model is saved with
`netchisel.save`, loaded back and evaluated, so the accuracy is the shipped model's and the
bytes are the artifact's (weights file + manifest). The test split has 270 images: one image is
0.37 points.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import saturated_note, write_result  # bench/ is on sys.path when a script in it runs

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.registry import handler
from netchisel.quantize import BinaryConfig, QATConfig, RTNConfig
from netchisel.zoo import data, train

SEEDS = (0, 1, 2)
BITS = (8, 4, 2)
BUDGET: dict[str, Any] = {"steps": 100, "optimizer": "sgd", "lr": 0.01, "lr_schedule": "cosine"}
INNER = ("features.conv2", "features.conv3")  # what quantize.binary changes by default


def variants() -> list[tuple[str, str, StageConfig, bool]]:
    """(group, name, config, trained) for every row of the benchmark."""
    rows: list[tuple[str, str, StageConfig, bool]] = []
    for bits in BITS:
        rows += [
            ("bits", f"rtn-{bits}", RTNConfig(bits=bits, scale_method="mse"), False),
            ("bits", f"ptq-{bits}", QATConfig(bits=bits, steps=0), False),
            ("bits", f"qat-ste-{bits}", QATConfig(bits=bits, method="ste", **BUDGET), True),
            ("bits", f"lsq-{bits}", QATConfig(bits=bits, method="lsq", **BUDGET), True),
        ]
    rows += [
        ("channel", "ptq-2-channel", QATConfig(bits=2, per_channel=True, steps=0), False),
        (
            "channel",
            "qat-ste-2-channel",
            QATConfig(bits=2, per_channel=True, method="ste", **BUDGET),
            True,
        ),
        ("channel", "lsq-2-channel", QATConfig(bits=2, per_channel=True, **BUDGET), True),
        ("activations", "lsq-4-a8", QATConfig(bits=4, activation_bits=8, **BUDGET), True),
        ("binary", "binary-untrained", BinaryConfig(kind="binary", steps=0), False),
        ("binary", "binary", BinaryConfig(kind="binary", **BUDGET), True),
        ("binary", "ternary-untrained", BinaryConfig(kind="ternary", steps=0), False),
        ("binary", "ternary", BinaryConfig(kind="ternary", **BUDGET), True),
        ("binary", "ptq-2-inner", QATConfig(bits=2, steps=0, layers=INNER), False),
        ("binary", "lsq-2-inner", QATConfig(bits=2, layers=INNER, **BUDGET), True),
    ]
    return rows


def code_bytes(model: torch.nn.Module) -> int:
    """Bytes of the stored integer weights (packed codes, int8 and int4 buffers)."""
    names = ("packed", "weight_int8", "qweight")
    return sum(
        b.numel() * b.element_size()
        for n, b in model.named_buffers()
        if n.rpartition(".")[2] in names
    )


def run(config: StageConfig, seed: int, work: Path, tag: str) -> dict[str, Any]:
    task = data.task("digits32")
    model = train.pretrained("cnn")
    ctx = Context(task, quiet=True, seed=seed)
    start = time.perf_counter()
    handler(type(config))(model, config, ctx)
    seconds = time.perf_counter() - start
    path = nc.save(model, work / tag)
    loaded = nc.load(path)
    return {
        "seed": seed,
        "test_accuracy": task.evaluate(loaded, "test")["accuracy"],
        "val_accuracy": task.evaluate(loaded, "val")["accuracy"],
        "artifact_bytes": artifact_bytes(path),
        "code_bytes": code_bytes(loaded),
        "seconds": round(seconds, 2),
        "note": ctx.records.get("note", ""),
        "layer_bits": ctx.records.get("layer_bits", {}),
    }


def main() -> None:
    torch.set_num_threads(1)  # the small cnn fine-tunes fastest on one thread
    began = time.perf_counter()
    task = data.task("digits32")
    dense = train.pretrained("cnn")
    work = Path(tempfile.mkdtemp(prefix="quant_qat_"))
    float_bytes = artifact_bytes(nc.save(dense, work / "float"))
    float_test = task.evaluate(dense, "test")["accuracy"]
    float_val = task.evaluate(dense, "val")["accuracy"]
    print(f"float: test {float_test:.2f}%  val {float_val:.2f}%  artifact {float_bytes} bytes")
    summary = []
    for group, name, config, trained in variants():
        runs = [run(config, s, work, f"{name}-{s}") for s in (SEEDS if trained else (0,))]
        test = statistics.median(r["test_accuracy"] for r in runs)
        row = {
            "group": group,
            "variant": name,
            "stage": handler(type(config)).name,
            "trained": trained,
            "config": config.to_dict(),
            "median_test_accuracy": test,
            "min_test_accuracy": min(r["test_accuracy"] for r in runs),
            "median_val_accuracy": statistics.median(r["val_accuracy"] for r in runs),
            "drop_points": float_test - test,
            "artifact_bytes": runs[0]["artifact_bytes"],
            "artifact_ratio": runs[0]["artifact_bytes"] / float_bytes,
            "code_bytes": runs[0]["code_bytes"],
            "note": runs[0]["note"],
            "runs": runs,
        }
        summary.append(row)
        print(
            f"{name:18s} test {test:6.2f}% (min {row['min_test_accuracy']:6.2f})  val "
            f"{row['median_val_accuracy']:6.2f}%  {row['artifact_bytes']:7d} B = "
            f"{row['artifact_ratio']:6.1%}  {sum(r['seconds'] for r in runs):5.1f}s"
        )
    path = write_result(
        "quant_qat",
        {
            "model": "cnn (zoo, width 32, 113,386 params)",
            "task": "digits32",
            "float_test_accuracy": float_test,
            "float_val_accuracy": float_val,
            "float_artifact_bytes": float_bytes,
            "budget": {**BUDGET, "momentum": 0.9, "batch_size": 64, "seeds": list(SEEDS)},
            "threads": 1,
            "rows": summary,
            "wall_seconds": round(time.perf_counter() - began, 1),
            "notes": [
                "rtn quantizes the Linear only; convs stay float (no conv kernel)",
                "conv layers are stored packed and computed in float (simulated): no speed-up",
                "the Linear runs the int8 kernel at 8 bits and the int4 kernel at 4 bits; "
                "at 2 bits and below it is stored packed and computed in float",
            ],
        },
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f}s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/quant_qat.json)."""
    b = d["budget"]
    rows = {r["variant"]: r for r in d["rows"]}

    def cell(name: str) -> str:
        r = rows[name]
        return f"{r['median_test_accuracy']:.2f} / {r['median_val_accuracy']:.2f}"

    def codes(r: dict[str, Any]) -> str:
        return f"{r['code_bytes']:,}" if "code_bytes" in r else "-"

    spread = max(
        r["median_test_accuracy"] - r["min_test_accuracy"] for r in d["rows"] if r["trained"]
    )

    lines = [
        "## Quantization-aware training and binary/ternary weights, cnn on digits32"
        " (`bench/quant_qat.py`)",
        "",
        f"Zoo cnn ({d['float_test_accuracy']:.2f}% test, {d['float_artifact_bytes']:,} B fp32"
        f" artifact). Every trained variant: {b['steps']} steps of {b['optimizer'].upper()}"
        f" (lr {b['lr']}, momentum {b['momentum']}, {b['lr_schedule']}, batch"
        f" {b['batch_size']}), seeds {b['seeds']}. Cells: test % / val % of the saved-and-loaded"
        " model, medians over the seeds (the lowest seed is at most"
        f" {spread:.2f} points below the median); 270 images each, one image = 0.37 points."
        " rtn changes the Linear only (convs stay float, its artifact is in brackets); ptq is"
        " the QAT format with no training; convs are per output channel, the Linear per channel"
        " at 8 bits and in groups of 128 below (int8 / int4 kernels at 8 / 4 bits, packed float"
        " compute otherwise).",
        "",
        "| bits | rtn (Linear only) | ptq | qat-ste | lsq | artifact B (ptq/qat/lsq) | / fp32 |"
        " integer codes B |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for bits in (8, 4, 2):
        lsq = rows[f"lsq-{bits}"]
        lines.append(
            f"| {bits} | {cell(f'rtn-{bits}')} ({rows[f'rtn-{bits}']['artifact_bytes']:,} B) |"
            f" {cell(f'ptq-{bits}')} |"
            f" {cell(f'qat-ste-{bits}')} | {cell(f'lsq-{bits}')} | {lsq['artifact_bytes']:,} |"
            f" {lsq['artifact_ratio']:.1%} | {codes(lsq)} |"
        )
    if "lsq-2-channel" in rows:
        r = rows["lsq-2-channel"]
        lines.append(
            f"| 2, per channel | - | {cell('ptq-2-channel')} | {cell('qat-ste-2-channel')} |"
            f" {cell('lsq-2-channel')} | {r['artifact_bytes']:,} | {r['artifact_ratio']:.1%} |"
            f" {codes(r)} |"
        )
    lines += saturated_note(d["float_test_accuracy"])
    lines += [
        "",
        "| binary / ternary (conv2, conv3; conv1 and Linear float) | test / val % |"
        " artifact B | / fp32 | integer codes B |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (
        "binary-untrained",
        "binary",
        "ternary-untrained",
        "ternary",
        "ptq-2-inner",
        "lsq-2-inner",
    ):
        r = rows[name]
        lines.append(
            f"| {name} | {cell(name)} | {r['artifact_bytes']:,} | {r['artifact_ratio']:.1%} |"
            f" {codes(r)} |"
        )
    lines += saturated_note(d["float_test_accuracy"])
    if "lsq-4-a8" in rows:
        lines += [
            "",
            f"LSQ 4-bit with 8-bit fake-quantized layer inputs: {cell('lsq-4-a8')} test / val %"
            " (simulated activations, float compute).",
        ]
    lines += [
        "",
        "Integer codes = the stored integer weights alone (packed codes, int8 and int4 buffers);"
        " the rest of an artifact is scales, float layers, batch norms and the manifest. Packed"
        " layers (convs; binary, ternary and 2-bit weights) are stored at their real size and"
        " computed in float: no speed-up is claimed for them.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
