"""Deep Compression (Han et al., ICLR 2016) on LeNet-300-100: prune, share weights, Huffman.

Run: .venv/bin/python bench/quant_deep_compression.py  ->  bench/results/quant_deep_compression.json

Two shapes of the zoo mlp: the digits one (64-300-100-10, 50,610 params, 8x8 inputs) and the
one closest to the paper's MNIST network (1024-300-100-10, 338,610 params, the 32x32 digits;
the paper's has 784 inputs and 266,610 params). For each, with three seeds (the data order of
every fine-tuning):

1. dense: the zoo reference model, fp32;
2. pruned: `prune.iterative`, global magnitude to 95% of the weights in 8 rounds of 300
   fine-tuning steps (stored by the `bitmask` codec: a bit per weight + the fp32 nonzeros);
3. + k-means: `quantize.kmeans`, 5-bit indices (the paper's FC width; index 0 is the pruned
   zero, so 31 centroids), centroids fine-tuned 300 steps, indices stored with the `packed`
   codec: fixed-width values and relative indices (the paper's stage before Huffman);
4. + Huffman: the same model, indices stored with the `huffman` codec;
5. fp16 floats: the same steps with `float16: true`, which keeps the codebooks and biases in
   float16 after fine-tuning (not in the paper; in this small model the fp32 biases alone are
   about a fifth of the k-means + Huffman artifact).

Sizes are real files written by `netchisel.save`: `artifact` = model.safetensors + manifest.json
(what `load` reads, `artifact_bytes`), `safetensors` = model.safetensors alone. Ratios are
against the dense model's file of the same kind. Accuracy is on the 270-image test split of
the artifact loaded back (one image = 0.37 points), median over the seeds. Targets: >= 30x
smaller than fp32 with <= 0.5 points drop. Published for LeNet-300-100 on MNIST: 40x at the
same error (Han et al. 2016, table 1); their figure 1 gives 9-13x after pruning, 27-31x after
quantization and 35-49x after Huffman coding across their models.

Also measured: the indices of every layer in each layout (raw bytes, dense/relative fixed width,
dense/relative Huffman, with the entropy bound), Huffman decode time of the largest index
tensor, a bit-width sweep (seed 0), and dense vs clustered latency (A/B, alternating): the
clustered layers compute with a gathered float weight, so no speed-up is expected.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

import netchisel as nc
from netchisel.artifact.huffman import code_lengths, decode, encode, entropy_bits
from netchisel.artifact.int_codecs import INDEX_BITS, to_relative
from netchisel.artifact.store import WEIGHTS, artifact_bytes, set_codec
from netchisel.core.context import Context
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.prune.schedule import IterativeConfig, prune_iterative
from netchisel.quantize.formats import ClusteredLinear
from netchisel.quantize.kmeans import KMeansConfig, quantize_kmeans
from netchisel.zoo import data, train

SEEDS = (0, 1, 2)
BITS = 5
SWEEP_BITS = (3, 4, 5, 6, 8)
PRUNE = IterativeConfig(sparsity=0.95, rounds=8, finetune_steps=300, scope="global")
MODELS = {
    "mlp-64 (digits 8x8)": ({"in_features": 64}, "digits"),
    "mlp-1024 (digits 32x32)": ({"in_features": 1024}, "digits32"),
}
HALF = "k-means + Huffman, fp16 floats"
STAGES = ("dense", "pruned", "k-means", "k-means + Huffman", HALF)


def kmeans(bits: int, finetune: bool = True, float16: bool = False) -> KMeansConfig:
    return KMeansConfig(bits=bits, finetune_steps=300 if finetune else 0, lr=1e-3, float16=float16)


def sizes(model: nn.Module, path: Path) -> dict[str, Any]:
    nc.save(model, path)
    return {
        "artifact_bytes": artifact_bytes(path),
        "safetensors_bytes": (path / WEIGHTS).stat().st_size,
        "manifest_bytes": (path / "manifest.json").stat().st_size,
    }


def clustered_layers(model: nn.Module) -> dict[str, ClusteredLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ClusteredLinear)}


def huffman_bytes(symbols: np.ndarray, alphabet: int) -> tuple[int, float]:
    """Bytes of a length table + Huffman stream, and the entropy bound of the stream (bytes)."""
    freqs = np.bincount(symbols, minlength=alphabet)
    bits = int((freqs * code_lengths(freqs)).sum())
    return alphabet + math.ceil(bits / 8), entropy_bits(freqs) * len(symbols) / 8


def index_layouts(indices: torch.Tensor) -> dict[str, Any]:
    """The indices of one layer in every layout the codecs choose between, in bytes."""
    flat = indices.numpy().reshape(-1).astype(np.int64)
    alphabet = int(flat.max()) + 1
    width = max(1, (alphabet - 1).bit_length())
    dense_huffman, dense_entropy = huffman_bytes(flat, alphabet)
    best: dict[str, Any] = {}
    for index_bits in INDEX_BITS:
        gaps, values = to_relative(flat, index_bits)
        v_bytes, v_entropy = huffman_bytes(values, alphabet)
        g_bytes, g_entropy = huffman_bytes(gaps, 2**index_bits)
        fixed = math.ceil(len(gaps) * width / 8) + math.ceil(len(gaps) * index_bits / 8)
        if not best or v_bytes + g_bytes < best["relative_huffman"]:
            best = {
                "index_bits": index_bits,
                "entries": len(gaps),
                "relative_huffman": v_bytes + g_bytes,
                "relative_entropy_bound": v_entropy + g_entropy,
                "relative_fixed_same_index_bits": fixed,
            }
    return {
        "shape": list(indices.shape),
        "nonzero": int(np.count_nonzero(flat)),
        "raw_uint8": flat.size,
        "dense_fixed": math.ceil(flat.size * width / 8),
        "dense_huffman": dense_huffman,
        "dense_entropy_bound": dense_entropy,
        **best,
    }


def run_seed(dense: nn.Module, task_name: str, seed: int, work: Path) -> dict[str, Any]:
    task = data.task(task_name)
    row: dict[str, Any] = {"seed": seed}
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    ctx = Context(task, quiet=True, seed=seed)
    prune_iterative(model, PRUNE, ctx)
    row["prune_seconds"] = round(time.perf_counter() - start, 2)
    row["sparsity"] = ctx.records["sparsity"]
    row["pruned"] = sizes(model, work / f"pruned-{seed}")
    row["pruned"]["test_accuracy"] = task.evaluate(nc.load(work / f"pruned-{seed}"), "test")[
        "accuracy"
    ]
    untuned = copy.deepcopy(model)
    quantize_kmeans(untuned, kmeans(BITS, finetune=False), Context(task, quiet=True, seed=seed))
    half = copy.deepcopy(model)
    quantize_kmeans(half, kmeans(BITS, float16=True), Context(task, quiet=True, seed=seed))
    row[HALF] = sizes(half, work / f"half-{seed}")
    row[HALF]["test_accuracy"] = task.evaluate(nc.load(work / f"half-{seed}"), "test")["accuracy"]
    row["kmeans_no_finetune_test_accuracy"] = task.evaluate(untuned, "test")["accuracy"]
    start = time.perf_counter()
    ctx = Context(task, quiet=True, seed=seed)
    quantize_kmeans(model, kmeans(BITS), ctx)
    row["kmeans_seconds"] = round(time.perf_counter() - start, 2)
    row["distinct_values"] = ctx.records["distinct_values"]
    row["weight_relative_error"] = ctx.records["weight_relative_error"]
    huffman_path = work / f"huffman-{seed}"
    row["k-means + Huffman"] = sizes(model, huffman_path)
    for name in clustered_layers(model):
        set_codec(model, f"{name}.indices", "packed")
    row["k-means"] = sizes(model, work / f"packed-{seed}")
    for stage, path in (("k-means", work / f"packed-{seed}"), ("k-means + Huffman", huffman_path)):
        loaded = nc.load(path)
        row[stage]["test_accuracy"] = task.evaluate(loaded, "test")["accuracy"]
    row["layouts"] = {n: index_layouts(m.indices) for n, m in clustered_layers(model).items()}
    row["model"] = model
    return row


def bits_sweep(pruned_seed0: nn.Module, task_name: str, work: Path) -> list[dict[str, Any]]:
    task = data.task(task_name)
    out = []
    for bits in SWEEP_BITS:
        model = copy.deepcopy(pruned_seed0)
        quantize_kmeans(model, kmeans(bits), Context(task, quiet=True, seed=0))
        size = sizes(model, work / f"sweep-{bits}")
        out.append(
            {"bits": bits, **size, "test_accuracy": task.evaluate(model, "test")["accuracy"]}
        )
    return out


def decode_seconds(indices: torch.Tensor) -> float:
    flat = indices.numpy().reshape(-1).astype(np.int64)
    lengths = code_lengths(np.bincount(flat))
    stream, nbits = encode(flat, lengths)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        decode(stream, lengths, len(flat), nbits)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, kwargs: dict[str, Any], task_name: str) -> dict[str, Any]:
    task = data.task(task_name)
    dense = train.pretrained("mlp", **kwargs)
    work = Path(tempfile.mkdtemp(prefix="deep_compression_"))
    dense_size = sizes(dense, work / "dense")
    dense_test = task.evaluate(dense, "test")["accuracy"]
    print(f"{name}: dense {dense_test:.2f}%  {dense_size['artifact_bytes']} B artifact")
    rows = []
    pruned_seed0: nn.Module | None = None
    for seed in SEEDS:
        row = run_seed(dense, task_name, seed, work)
        if seed == 0:
            pruned_seed0 = nc.load(work / "pruned-0")
        rows.append(row)
        print(
            f"  seed {seed}: sparsity {row['sparsity']:.3f}  "
            + "  ".join(
                f"{s} {row[s]['test_accuracy']:.2f}% {row[s]['artifact_bytes']} B"
                for s in STAGES[1:]
            )
        )
    table = [
        {
            "stage": "dense",
            "median_test_accuracy": dense_test,
            "median_drop_points": 0.0,
            **dense_size,
            "artifact_ratio": 1.0,
            "safetensors_ratio": 1.0,
        }
    ]
    for stage in STAGES[1:]:
        acc = statistics.median(r[stage]["test_accuracy"] for r in rows)
        art = max(r[stage]["artifact_bytes"] for r in rows)  # the largest of the seeds
        st = max(r[stage]["safetensors_bytes"] for r in rows)
        table.append(
            {
                "stage": stage,
                "median_test_accuracy": acc,
                "median_drop_points": dense_test - acc,
                "worst_drop_points": max(dense_test - r[stage]["test_accuracy"] for r in rows),
                "artifact_bytes": art,
                "safetensors_bytes": st,
                "manifest_bytes": max(r[stage]["manifest_bytes"] for r in rows),
                "artifact_ratio": dense_size["artifact_bytes"] / art,
                "safetensors_ratio": dense_size["safetensors_bytes"] / st,
            }
        )
    final = table[-1]
    assert pruned_seed0 is not None
    model0 = rows[0]["model"]
    biggest = max(clustered_layers(model0).values(), key=lambda m: m.indices.numel())
    inputs64 = task.example_inputs(64)
    latency = compare_latency(
        make_runner(dense.eval(), inputs64, "eager", threads=1),
        make_runner(model0.eval(), inputs64, "eager", threads=1),
        batch_size=64,
        threads=1,
        rounds=20,
        calls_per_round=20,
        labels=("dense", "clustered"),
    )
    for r in rows:
        del r["model"]
    return {
        "model": name,
        "kwargs": kwargs,
        "task": task_name,
        "params": sum(p.numel() for p in dense.parameters()),
        "dense_test_accuracy": dense_test,
        "table": table,
        "meets_size_artifact": final["artifact_ratio"] >= 30,
        "meets_size_safetensors": final["safetensors_ratio"] >= 30,
        "meets_accuracy": final["median_drop_points"] <= 0.5,
        "rows": rows,
        "bits_sweep_seed0": bits_sweep(pruned_seed0, task_name, work),
        "huffman_decode_seconds": {
            "shape": list(biggest.indices.shape),
            "median_of_5": decode_seconds(biggest.indices),
        },
        "latency_batch64": latency.to_dict(),
    }


def main() -> None:
    torch.set_num_threads(1)  # the small mlps train fastest on one thread
    started = time.perf_counter()
    results = [bench_model(name, kw, task) for name, (kw, task) in MODELS.items()]
    for r in results:
        print(
            f"\n{r['model']} ({r['params']:,} params), test accuracy median of {len(SEEDS)} seeds"
        )
        print(
            f"{'stage':18s} {'test %':>7s} {'drop':>6s} {'artifact B':>11s} {'ratio':>6s} "
            f"{'safetensors B':>13s} {'ratio':>6s}"
        )
        for t in r["table"]:
            print(
                f"{t['stage']:18s} {t['median_test_accuracy']:7.2f} {t['median_drop_points']:+6.2f}"
                f" {t['artifact_bytes']:11d} {t['artifact_ratio']:5.1f}x"
                f" {t['safetensors_bytes']:13d} {t['safetensors_ratio']:5.1f}x"
            )
        lat = r["latency_batch64"]
        print(f"latency batch 64 dense/clustered: {lat['speedup']:.2f}x")
    path = write_result(
        "quant_deep_compression",
        {
            "paper": "Han, Mao, Dally: Deep Compression, ICLR 2016 (LeNet-300-100: 40x, table 1)",
            "prune": PRUNE.to_dict(),
            "kmeans": kmeans(BITS).to_dict(),
            "seeds": list(SEEDS),
            "targets": {"min_ratio": 30, "max_drop_points": 0.5},
            "size_note": (
                "artifact = model.safetensors + manifest.json (artifact_bytes); safetensors = "
                "model.safetensors alone; ratios against the dense file of the same kind; the "
                "largest size of the seeds"
            ),
            "latency_note": (
                "clustered layers compute with a gathered float weight: no speed-up expected"
            ),
            "models": results,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/quant_deep_compression.json)."""
    t = d["targets"]
    lines = [
        "## Deep Compression, LeNet-300-100 on digits (`bench/quant_deep_compression.py`)",
        "",
        f"Prune 95% (global magnitude, 8 rounds with fine-tuning), share weights by k-means "
        f"({d['kmeans']['bits']}-bit indices, centroids fine-tuned), then Huffman-code the "
        "indices (relative-index sparse layout). Sizes are saved files: artifact = "
        "model.safetensors + manifest.json; ratios against the fp32 file of the same kind; "
        f"test % median of seeds {d['seeds']}. Targets: >= {t['min_ratio']}x with <= "
        f"{t['max_drop_points']} points drop. Published (MNIST, 784 inputs): 40x (Han et al., "
        "ICLR 2016, table 1).",
        "",
    ]
    for m in d["models"]:
        lines += [
            f"**{m['model']}**, {m['params']:,} params",
            "",
            "| stage | test % | drop (pts, − = gain) | artifact B | ratio | safetensors B"
            " | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in m["table"]:
            lines.append(
                f"| {r['stage']} | {r['median_test_accuracy']:.2f} |"
                f" {r['median_drop_points']:+.2f} | {r['artifact_bytes']:,} |"
                f" {r['artifact_ratio']:.1f}x | {r['safetensors_bytes']:,} |"
                f" {r['safetensors_ratio']:.1f}x |"
            )
        layouts = m["rows"][0]["layouts"].values()
        dense = sum(x["dense_huffman"] for x in layouts)
        relative = sum(min(x["dense_huffman"], x["relative_huffman"]) for x in layouts)
        lat = m["latency_batch64"]
        lines += [
            "",
            f"Indices of seed 0: {dense:,} B Huffman-coding every index, {relative:,} B in "
            "the relative-index layout (what is stored). Speed of the clustered model vs dense "
            f"at batch 64: {lat['speedup']:.2f}x (it computes with a gathered float weight; "
            "< 1 is slower).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
