"""Deep Compression (Han et al., ICLR 2016) of the MNIST-1D MLP: prune, share weights, Huffman.

Run: .venv/bin/python bench/mnist1d_deep_compression.py
  ->  bench/results/mnist1d_deep_compression.json

The trained zoo `mnist1d_mlp` (40-100-100-10, 15,210 params, `zoo.train.pretrained`, the
MNIST-1D paper's recipe on the task's 3,500 train sequences) goes through the stages of
bench/quant_deep_compression.py (the digits LeNet-300-100 version), with three seeds (the data
order of every fine-tuning):

1. dense: the zoo reference model, fp32 (`dense` codec);
2. pruned: `prune.iterative`, global magnitude to each of `SPARSITIES` (50/70/80/90%) of the
   weights in 8 geometric rounds of 300 fine-tuning steps each (AdamW, lr 1e-2 = the MNIST-1D
   recipe's lr, cosine within each round; stored by the `bitmask` codec: a bit per weight +
   the fp32 nonzeros);
3. + k-means: `quantize.kmeans`, 5-bit indices (the paper's FC width; index 0 is the pruned
   zero), centroids fine-tuned 300 steps, indices stored with the `packed` codec (fixed-width
   values and relative indices: the paper's stage before Huffman);
4. + Huffman: the same model, indices stored with the `huffman` codec.

Sizes are real files written by `netchisel.save`: artifact = model.safetensors + manifest.json
(`artifact_bytes`); the ratio is the dense fp32 artifact's bytes over the stage's artifact
bytes. Accuracy is on the 1,000-sequence test split (one sequence = 0.1 points) of the artifact
loaded back; the drop is against the dense model, per seed; median and min-max over the seeds.
Unlike the 270-image digits split, MNIST-1D is far from its ceiling (the MLP scores ~65%), so a
stage that costs accuracy can show it.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import spread, write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

import netchisel as nc
from netchisel.artifact.store import WEIGHTS, artifact_bytes, set_codec
from netchisel.core.context import Context
from netchisel.core.train import fit, train_settings
from netchisel.prune.schedule import IterativeConfig, prune_iterative
from netchisel.quantize.formats import ClusteredLinear
from netchisel.quantize.kmeans import KMeansConfig, quantize_kmeans
from netchisel.zoo import data, train

MODEL = "mnist1d_mlp"
TASK = "mnist1d"
SEEDS = (0, 1, 2)
BITS = 5
SPARSITIES = (0.5, 0.7, 0.8, 0.9)
LR = 1e-2  # the MNIST-1D recipe's lr (zoo.train.MNIST1D_SETTINGS); the default 1e-3 recovers less


def prune_config(sparsity: float) -> IterativeConfig:
    return IterativeConfig(sparsity=sparsity, rounds=8, finetune_steps=300, lr=LR, scope="global")


KMEANS = KMeansConfig(bits=BITS, finetune_steps=300, lr=1e-3)
STAGES = ("dense", "pruned", "k-means", "k-means + Huffman")


def sizes(model: nn.Module, path: Path) -> dict[str, Any]:
    nc.save(model, path)
    return {
        "artifact_bytes": artifact_bytes(path),
        "safetensors_bytes": (path / WEIGHTS).stat().st_size,
        "manifest_bytes": (path / "manifest.json").stat().st_size,
    }


def run_seed(dense: nn.Module, sparsity: float, seed: int, work: Path) -> dict[str, Any]:
    task = data.task(TASK)
    row: dict[str, Any] = {"seed": seed}
    work = work / f"s{sparsity}"
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    ctx = Context(task, quiet=True, seed=seed)
    prune_iterative(model, prune_config(sparsity), ctx)
    row["prune_seconds"] = round(time.perf_counter() - start, 2)
    row["sparsity"] = ctx.records["sparsity"]
    row["pruned"] = sizes(model, work / f"pruned-{seed}")
    untuned = copy.deepcopy(model)
    quantize_kmeans(
        untuned,
        KMeansConfig(bits=BITS, finetune_steps=0, lr=1e-3),
        Context(task, quiet=True, seed=seed),
    )
    row["kmeans_no_finetune_test_accuracy"] = task.evaluate(untuned, "test")["accuracy"]
    start = time.perf_counter()
    ctx = Context(task, quiet=True, seed=seed)
    quantize_kmeans(model, KMEANS, ctx)
    row["kmeans_seconds"] = round(time.perf_counter() - start, 2)
    row["distinct_values"] = ctx.records["distinct_values"]
    row["k-means + Huffman"] = sizes(model, work / f"huffman-{seed}")
    for name, m in model.named_modules():
        if isinstance(m, ClusteredLinear):
            set_codec(model, f"{name}.indices", "packed")
    row["k-means"] = sizes(model, work / f"packed-{seed}")
    paths = {"pruned": "pruned", "k-means": "packed", "k-means + Huffman": "huffman"}
    for stage, prefix in paths.items():
        loaded = nc.load(work / f"{prefix}-{seed}")
        row[stage]["test_accuracy"] = task.evaluate(loaded, "test")["accuracy"]
        row[stage]["val_accuracy"] = task.evaluate(loaded, "val")["accuracy"]
    return row


def dense_control(dense: nn.Module, seed: int) -> float:
    """Test % of the dense model after the pruning schedule's fine-tuning with no pruning (the
    same rounds of steps, lr and seed): what the fine-tuning alone does."""
    task = data.task(TASK)
    model = copy.deepcopy(dense)
    config = prune_config(SPARSITIES[0])
    ctx = Context(task, quiet=True, seed=seed)
    for _ in range(config.rounds):
        fit(model, task, train_settings(config, config.finetune_steps), ctx)
    return task.evaluate(model, "test")["accuracy"]


def main() -> None:
    torch.set_num_threads(1)  # the small mlp trains fastest on one thread
    started = time.perf_counter()
    task = data.task(TASK)
    dense = train.pretrained(MODEL)
    work = Path(tempfile.mkdtemp(prefix="mnist1d_deep_compression_"))
    dense_size = sizes(dense, work / "dense")
    dense_test = task.evaluate(nc.load(work / "dense"), "test")["accuracy"]
    dense_val = task.evaluate(dense, "val")["accuracy"]
    print(f"{MODEL}: dense test {dense_test:.2f}%  {dense_size['artifact_bytes']} B artifact")
    control = [dense_control(dense, seed) for seed in SEEDS]
    print(f"dense + the same fine-tuning, no pruning: {control}")
    tables = []
    for sparsity in SPARSITIES:
        rows = []
        for seed in SEEDS:
            row = run_seed(dense, sparsity, seed, work)
            rows.append(row)
            print(
                f"  sparsity {sparsity} seed {seed}: "
                + "  ".join(
                    f"{s} {row[s]['test_accuracy']:.2f}% {row[s]['artifact_bytes']} B"
                    for s in STAGES[1:]
                )
            )
        table = [
            {
                "stage": "dense",
                "test_accuracy": spread([dense_test]),
                "drop_points": spread([0.0]),
                **dense_size,
                "artifact_ratio": spread([1.0]),
            }
        ]
        for stage in STAGES[1:]:
            table.append(
                {
                    "stage": stage,
                    "test_accuracy": spread([r[stage]["test_accuracy"] for r in rows]),
                    "drop_points": spread([dense_test - r[stage]["test_accuracy"] for r in rows]),
                    "artifact_bytes": spread([r[stage]["artifact_bytes"] for r in rows]),
                    "artifact_ratio": spread(
                        [dense_size["artifact_bytes"] / r[stage]["artifact_bytes"] for r in rows]
                    ),
                }
            )
        print(f"\nsparsity {sparsity}")
        print(f"{'stage':18s} {'test % med (min-max)':>24s} {'drop':>20s} {'ratio':>20s}")
        for t in table:
            a, d, q = t["test_accuracy"], t["drop_points"], t["artifact_ratio"]
            print(
                f"{t['stage']:18s} {a['median']:7.2f} ({a['min']:.2f}-{a['max']:.2f})"
                f" {d['median']:+6.2f} ({d['min']:+.2f}..{d['max']:+.2f})"
                f" {q['median']:6.1f}x ({q['min']:.1f}-{q['max']:.1f})"
            )
        tables.append(
            {
                "sparsity": sparsity,
                "prune": prune_config(sparsity).to_dict(),
                "table": table,
                "rows": rows,
            }
        )
    path = write_result(
        "mnist1d_deep_compression",
        {
            "paper": "Han, Mao, Dally: Deep Compression, ICLR 2016 (LeNet-300-100: 40x, table 1)",
            "model": MODEL,
            "task": TASK,
            "params": sum(p.numel() for p in dense.parameters()),
            "sparsities": list(SPARSITIES),
            "kmeans": KMEANS.to_dict(),
            "seeds": list(SEEDS),
            "test_size": 1000,
            "dense_test_accuracy": dense_test,
            "dense_val_accuracy": dense_val,
            "dense_finetuned_control": {
                "note": "the dense model after the same 8 x 300 fine-tuning steps, no pruning",
                "test_accuracy": control,
                "summary": spread(control),
            },
            "size_note": (
                "artifact = model.safetensors + manifest.json (artifact_bytes); ratio = dense fp32 "
                "artifact bytes / stage artifact bytes, per seed; median (min-max) over seeds"
            ),
            "by_sparsity": tables,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/mnist1d_deep_compression.json)."""

    def cell(s: dict[str, float], fmt: str, suffix: str = "") -> str:
        if s["min"] == s["max"]:
            return f"{s['median']:{fmt}}{suffix}"
        return f"{s['median']:{fmt}}{suffix} ({s['min']:{fmt}} to {s['max']:{fmt}})"

    p = d["by_sparsity"][0]["prune"]
    lines = [
        "## Deep Compression, MLP on MNIST-1D (`bench/mnist1d_deep_compression.py`)",
        "",
        f"The zoo `{d['model']}` ({d['params']:,} params, dense test "
        f"{d['dense_test_accuracy']:.1f}%; after the same fine-tuning with no pruning "
        f"{cell(d['dense_finetuned_control']['summary'], '.1f')}%): prune by global magnitude "
        f"({p['rounds']} rounds of "
        f"{p['finetune_steps']} fine-tuning steps, lr {p['lr']:g}), share weights by "
        f"k-means ({d['kmeans']['bits']}-bit indices, centroids fine-tuned "
        f"{d['kmeans']['finetune_steps']} steps), then Huffman-code the indices. Ratio = fp32 "
        "artifact bytes / stage artifact bytes (model.safetensors + manifest.json). Test % on "
        f"the {d['test_size']:,}-sequence test split (1 sequence = 0.1 points); median (min-max) "
        f"over seeds {d['seeds']} (the fine-tuning data order). Published for LeNet-300-100 on "
        "MNIST: 40x at the same error (Han et al., ICLR 2016, table 1).",
        "",
        "| sparsity | stage | test % | drop (pts, − = gain) | artifact B | ratio |",
        "|---:|---|---:|---:|---:|---:|",
    ]

    dense = d["by_sparsity"][0]["table"][0]
    lines.append(
        f"| 0% | dense | {cell(dense['test_accuracy'], '.1f')} | 0 |"
        f" {dense['artifact_bytes']:,} | 1.0x |"
    )
    for block in d["by_sparsity"]:
        for r in block["table"][1:]:
            lines.append(
                f"| {100 * block['sparsity']:.0f}% | {r['stage']} |"
                f" {cell(r['test_accuracy'], '.1f')} | {cell(r['drop_points'], '+.1f')} |"
                f" {cell(r['artifact_bytes'], ',.0f')} | {cell(r['artifact_ratio'], '.1f', 'x')} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
