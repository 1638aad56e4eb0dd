"""Benchmark 3 (issue 5): truncated SVD of the zoo gpt's MLP layers at half their parameters.

Run: .venv/bin/python bench/factorize_gpt.py   ->  bench/results/factorize_gpt.json

The trained zoo gpt (4 layers, 128 wide, byte tokens, trained on the pydoc text) has two MLP
Linears per block (128 -> 512 and 512 -> 128, 8 in all, 526,848 of its 875,264 parameters).
`factorize.svd` with `param_ratio=0.5` and `layers=[blocks\\.\\d+\\.mlp\\.fc_(in|out)]` replaces
each by two Linears of rank 50 / 51, the largest ranks whose weights and bias fit in half the
layer's parameters. Perplexity (val and test windows of 128 bytes) is measured on the original,
right after the SVD, and after recovery by the `distill` stage: token-level KL to the original
model (`ctx.teacher`, temperature 1, alpha 0: no label term) for `RECOVERY_STEPS` AdamW steps
of 32 windows (a fixed budget, 30 % of the reference training's 1000 steps). The recovered
model is saved as an artifact and loaded back, and its outputs must match bit for bit.

MACs are exact (`count_flops`, one window of 128 tokens); latency is measured with the
alternating A/B harness (`compare_latency`, one thread, eager) at batch 1 and 32 windows.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import ab_entry, write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.context import Context
from netchisel.distill import DistillConfig
from netchisel.distill.distiller import distill
from netchisel.factorize import SVDConfig
from netchisel.factorize.svd import factorize_svd
from netchisel.measure import count_flops
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.zoo import data, train

MLP_LAYERS = (r"blocks\.\d+\.mlp\.fc_(in|out)",)
PARAM_RATIO = 0.5
RECOVERY_STEPS = 300
RECOVERY = DistillConfig(
    steps=RECOVERY_STEPS, lr=1e-3, weight_decay=0.01, temperature=1.0, alpha=0.0, kind="lm"
)
BATCHES = (1, 32)


def perplexities(model: nn.Module, task: Any) -> dict[str, float]:
    return {split: task.evaluate(model, split)["perplexity"] for split in ("val", "test")}


def mlp_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".mlp.fc_" in n and "blocks." in n)


def latency(models: dict[str, nn.Module], task: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in BATCHES:
        inputs = task.example_inputs(batch, split="test")
        runners = {n: make_runner(m, inputs, "eager", threads=1) for n, m in models.items()}
        cmp = compare_latency(
            runners["original"],
            runners["svd"],
            batch_size=batch,
            threads=1,
            rounds=20,
            calls_per_round=10 if batch == 1 else 2,
            labels=("original", "svd"),
        )
        out[f"original/svd@{batch}"] = ab_entry(cmp)
        print(f"batch {batch}: original/svd = {cmp.speedup:.3f}", flush=True)
    return out


def main() -> None:
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    torch.manual_seed(0)
    task = data.task("text", block_size=128)
    original = train.pretrained("gpt").eval()
    one = task.example_inputs(1, split="test")
    before = perplexities(original, task)
    print(f"original: {before}", flush=True)

    model = copy.deepcopy(original)
    ctx = Context(task, teacher=original, quiet=True)
    start = time.perf_counter()
    factorize_svd(model, SVDConfig(param_ratio=PARAM_RATIO, layers=MLP_LAYERS), ctx)
    svd_seconds = time.perf_counter() - start
    svd_records = dict(ctx.records)
    after_svd = perplexities(model, task)
    print(f"after SVD: {after_svd}", flush=True)

    ctx = Context(task, teacher=original, quiet=True)
    start = time.perf_counter()
    distill(model, RECOVERY, ctx)
    recovery_seconds = time.perf_counter() - start
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        directory = nc.save(model, Path(tmp) / "model")
        loaded = nc.load(directory)
        with torch.no_grad():
            assert torch.equal(loaded(*one), model(*one)), "artifact is not bit-exact"
        svd_bytes = artifact_bytes(directory)
        original_bytes = artifact_bytes(nc.save(original, Path(tmp) / "original"))
    after_recovery = perplexities(loaded, task)
    print(f"after recovery ({recovery_seconds:.0f} s): {after_recovery}", flush=True)

    result = {
        "model": "zoo gpt (4 layers, n_embd 128, byte tokens), trained reference",
        "task": "pydoc text, windows of 128 bytes; perplexity per byte on val and test",
        "layers": list(MLP_LAYERS),
        "param_ratio": PARAM_RATIO,
        "recovery": {
            "stage": "distill",
            **{k: v for k, v in RECOVERY.to_dict().items() if k not in ("hints", "attention")},
            "batch_size_used": task.batch_size,
            "seconds": recovery_seconds,
        },
        "original": {
            "perplexity": before,
            "params": sum(p.numel() for p in original.parameters()),
            "mlp_params": mlp_params(original),
            "macs": count_flops(original, one).macs,
            "artifact_bytes": original_bytes,
        },
        "svd": {
            "perplexity_before_recovery": after_svd,
            "perplexity_after_recovery": after_recovery,
            "params": sum(p.numel() for p in model.parameters()),
            "mlp_params": mlp_params(model),
            "macs": count_flops(model, one).macs,
            "artifact_bytes": svd_bytes,
            "ranks": {n: r["rank"] for n, r in svd_records["factorized"].items()},
            "energy_kept": {n: r["energy_kept"] for n, r in svd_records["factorized"].items()},
            "factorize_seconds": svd_seconds,
        },
        "latency": latency({"original": original, "svd": model}, task),
        "threads": 1,
        "latency_harness": "compare_latency: alternating A/B blocks, ratio of medians",
    }
    path = write_result("factorize_gpt", result)
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/factorize_gpt.json)."""
    o, s, r = d["original"], d["svd"], d["recovery"]
    ranks = sorted(set(s["ranks"].values()))
    lines = [
        "## SVD of the gpt's MLP layers at half their parameters (`bench/factorize_gpt.py`)",
        "",
        f"`factorize.svd` (param_ratio {d['param_ratio']}) on the 8 MLP Linears of the zoo gpt "
        f"(ranks {', '.join(map(str, ranks))}), then recovery by `{r['stage']}` (token KL to the "
        f"original, temperature {r['temperature']}, alpha {r['alpha']}, {r['steps']} AdamW steps "
        f"of {r['batch_size_used']} windows, lr {r['lr']}). Perplexity per byte; MACs of one "
        "128-byte window; latency A/B on one thread (original / SVD; > 1 is faster).",
        "",
        "| model | params | MLP params | MACs | val ppl | test ppl | artifact B |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| original | {o['params']:,} | {o['mlp_params']:,} | {o['macs']:,} "
        f"| {o['perplexity']['val']:.3f} | {o['perplexity']['test']:.3f} "
        f"| {o['artifact_bytes']:,} |",
        f"| SVD, before recovery | {s['params']:,} | {s['mlp_params']:,} | {s['macs']:,} "
        f"| {s['perplexity_before_recovery']['val']:.3f} "
        f"| {s['perplexity_before_recovery']['test']:.3f} | |",
        f"| SVD, after recovery | {s['params']:,} | {s['mlp_params']:,} | {s['macs']:,} "
        f"| {s['perplexity_after_recovery']['val']:.3f} "
        f"| {s['perplexity_after_recovery']['test']:.3f} | {s['artifact_bytes']:,} |",
        "",
    ]
    for key, lat in d["latency"].items():
        batch = key.split("@")[1]
        lines.append(
            f"- batch {batch}: {lat['a_median_ms']:.2f} ms -> {lat['b_median_ms']:.2f} ms "
            f"(original / SVD = {lat['speedup']:.2f}x)"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
