"""Benchmark 5: one-shot LLM pruning of the zoo gpt on the pydoc text, side by side.

Magnitude, Wanda and SparseGPT at 50 % unstructured, 2:4 and 4:8, from the same trained
model and the same calibration set (the task's first 128 shuffled train windows of 128 bytes),
without any fine-tuning afterwards. All three prune the 24 Linear layers inside the
transformer blocks and leave the embeddings and the LM head dense, as both papers do.
Comparison groups follow the papers: magnitude ranks each layer's weights together, Wanda each
output row, SparseGPT each block of 128 columns (adaptively, with weight updates). Ablations
at 50 %: the group of magnitude (row) and of Wanda (layer), and SparseGPT's block size (16, 32,
64; one is chosen on val perplexity, test stays held out).

Why Wanda can help is measured too: `input_norm_spread` is, per pruned layer, the largest
input-feature norm ||X_j|| over the median one on the calibration set (LLMs with outlier
features reach 20-100x; Wanda reduces to magnitude when all norms are equal).

The target (issue 3): at 50 % unstructured, the perplexity increase of Wanda and of SparseGPT
is at most one third of magnitude's. Published anchor at 50 % unstructured, OPT-125M on
WikiText-2: dense 27.66, magnitude 193, Wanda 38.99, SparseGPT 36.85 (Frantar & Alistarh 2023;
Sun et al. 2023).

A width check repeats the three methods at 50 % on a zoo gpt twice as wide (256, 3.3 M
parameters, the same training recipe; trained once and cached, about 9 minutes on an idle
2-core CPU): does a bigger model on this corpus grow the outlier features Wanda needs?

Run: .venv/bin/python bench/prune_llm.py   ->  bench/results/prune_llm.json
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.masks import sparsity
from netchisel.core.modules import select_modules
from netchisel.core.registry import handler
from netchisel.prune.importance import collect_stats
from netchisel.prune.sparsegpt import SparseGPTConfig
from netchisel.prune.unstructured import UnstructuredConfig
from netchisel.zoo import data, train

BLOCK_LAYERS = (r"blocks\..*",)
CALIBRATION = 128  # windows of the task's block size (128 bytes): 16,384 calibration tokens
PATTERNS = ("unstructured", "2:4", "4:8")
# SparseGPT picks its mask afresh at every block of columns. The paper's 128 is a sixth of
# OPT-125M's 768-wide layers; here it is all 128 columns of 18 of the 24 layers (one block, no
# adaptive selection), so smaller blocks are tried too and one is chosen on val perplexity.
# (For N:M the block size cannot change the result: the mask is chosen per group of M.)
ABLATION_BLOCKSIZES = (16, 32, 64)
ANCHOR = {
    "source": "OPT-125M, WikiText-2 perplexity, 50% unstructured: magnitude and SparseGPT from "
    "Frantar & Alistarh 2023 (SparseGPT), Wanda from Sun et al. 2023 (Wanda)",
    "dense": 27.66,
    "magnitude": 193.0,
    "wanda": 38.99,
    "sparsegpt": 36.85,
}


def configs(
    pattern: str, layers: tuple[str, ...] = BLOCK_LAYERS, ablations: bool = True
) -> dict[str, StageConfig]:
    """The methods compared at one pattern (ablations only at 50 % unstructured)."""
    out: dict[str, StageConfig] = {
        "magnitude": UnstructuredConfig(
            sparsity=0.5, importance="l1", pattern=pattern, layers=layers
        ),
        "wanda": UnstructuredConfig(
            sparsity=0.5,
            importance="wanda",
            group="row",
            pattern=pattern,
            layers=layers,
            calibration_samples=CALIBRATION,
        ),
        "sparsegpt": SparseGPTConfig(
            sparsity=0.5, pattern=pattern, layers=layers, calibration_samples=CALIBRATION
        ),
    }
    if ablations and pattern == "unstructured":
        out["magnitude (row)"] = UnstructuredConfig(
            sparsity=0.5, importance="l1", group="row", layers=layers
        )
        out["wanda (layer)"] = UnstructuredConfig(
            sparsity=0.5,
            importance="wanda",
            group="layer",
            layers=layers,
            calibration_samples=CALIBRATION,
        )
        for size in ABLATION_BLOCKSIZES:
            out[f"sparsegpt (blocksize {size})"] = SparseGPTConfig(
                sparsity=0.5,
                blocksize=size,
                layers=layers,
                calibration_samples=CALIBRATION,
            )
    return out


def input_norm_spread(
    model: nn.Module, layers: tuple[str, ...], task: Any, samples: int
) -> dict[str, float]:
    """Per layer, the largest input-feature norm ||X_j|| over the median one."""
    selected = select_modules(model, (nn.Linear,), layers)
    stats = collect_stats(model, selected, task, "activations", samples)
    spread = {}
    for name, layer_stats in stats.items():
        assert layer_stats.input_sq is not None
        norms = layer_stats.input_sq.sqrt()
        spread[name] = float(norms.max() / norms.median())
    return spread


def width_check(n_embd: int) -> dict[str, Any]:
    """Magnitude, Wanda and SparseGPT at 50 % on a zoo gpt `n_embd` wide (paper settings)."""
    dense = train.pretrained("gpt", n_embd=n_embd)
    task = data.task("text", block_size=128)
    spread = input_norm_spread(dense, BLOCK_LAYERS, task, CALIBRATION)
    base = {split: task.evaluate(dense, split)["perplexity"] for split in ("val", "test")}
    out: dict[str, Any] = {
        "n_embd": n_embd,
        "params": sum(p.numel() for p in dense.parameters()),
        "input_norm_spread_median": float(torch.tensor(list(spread.values())).median()),
        "input_norm_spread_max": max(spread.values()),
        "dense": base,
        "increase": {},
    }
    for method, config in configs("unstructured", ablations=False).items():
        model = copy.deepcopy(dense)
        handler(type(config))(model, config, Context(task, quiet=True, seed=0))
        ppl = {split: task.evaluate(model, split)["perplexity"] for split in ("val", "test")}
        out["increase"][method] = {split: ppl[split] - base[split] for split in ppl}
    out["ratio_to_magnitude_increase"] = {
        split: {
            m: out["increase"][m][split] / out["increase"]["magnitude"][split]
            for m in ("wanda", "sparsegpt")
        }
        for split in ("val", "test")
    }
    print(f"width {n_embd}: {out['ratio_to_magnitude_increase']}")
    return out


def block_weights(model: nn.Module) -> list[str]:
    return [
        f"{n}.weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("blocks.")
    ]


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    dense = train.pretrained("gpt")
    task = data.task("text", block_size=128)
    names = block_weights(dense)
    spread = input_norm_spread(dense, BLOCK_LAYERS, task, CALIBRATION)
    dense_metrics = {split: task.evaluate(dense, split) for split in ("val", "test")}
    ppl = {split: m["perplexity"] for split, m in dense_metrics.items()}
    print(f"dense           val {ppl['val']:7.3f}  test {ppl['test']:7.3f}")
    rows: list[dict[str, Any]] = []
    for pattern in PATTERNS:
        for method, config in configs(pattern).items():
            model = copy.deepcopy(dense)
            ctx = Context(task, quiet=True, seed=0)
            t0 = time.perf_counter()
            handler(type(config))(model, config, ctx)
            seconds = time.perf_counter() - t0
            metrics = {split: task.evaluate(model, split) for split in ("val", "test")}
            row: dict[str, Any] = {
                "pattern": pattern,
                "method": method,
                "prune_seconds": round(seconds, 2),
                "block_sparsity": sparsity(model, names),
                "val_perplexity": metrics["val"]["perplexity"],
                "test_perplexity": metrics["test"]["perplexity"],
                "val_increase": metrics["val"]["perplexity"] - ppl["val"],
                "test_increase": metrics["test"]["perplexity"] - ppl["test"],
            }
            if "layer_output_error" in ctx.records:
                errors = ctx.records["layer_output_error"]
                row["mean_layer_output_error"] = sum(errors.values()) / len(errors)
                row["max_damping"] = max(ctx.records["damping"].values())
            rows.append(row)
            print(
                f"{pattern:12s} {method:16s} val {row['val_perplexity']:7.3f}  "
                f"test {row['test_perplexity']:7.3f}  ({seconds:5.1f} s)"
            )
    at_half = {r["method"]: r for r in rows if r["pattern"] == "unstructured"}
    sweep = {128: at_half["sparsegpt"]}
    sweep.update({b: at_half[f"sparsegpt (blocksize {b})"] for b in ABLATION_BLOCKSIZES})
    chosen = min(sweep, key=lambda b: sweep[b]["val_perplexity"])
    at_half["sparsegpt (blocksize chosen on val)"] = sweep[chosen]
    target: dict[str, Any] = {"sparsegpt_blocksize_chosen_on_val": chosen}
    for split in ("val", "test"):
        base = at_half["magnitude"][f"{split}_increase"]
        ratios = {
            m: at_half[m][f"{split}_increase"] / base
            for m in ("wanda", "sparsegpt", "sparsegpt (blocksize chosen on val)")
        }
        target[split] = {
            "magnitude_increase": base,
            "ratio_to_magnitude_increase": ratios,
            "met_with_paper_defaults": ratios["wanda"] <= 1 / 3 and ratios["sparsegpt"] <= 1 / 3,
            "met_by": [m for m, r in ratios.items() if r <= 1 / 3],
        }
    anchor_ratios = {
        m: (ANCHOR[m] - ANCHOR["dense"]) / (ANCHOR["magnitude"] - ANCHOR["dense"])
        for m in ("wanda", "sparsegpt")
    }
    path = write_result(
        "prune_llm",
        {
            "model": "zoo gpt (4 layers, 128 wide, byte tokens), trained by netchisel.zoo",
            "text_fingerprint": data.text_fingerprint(),
            "pruned_layers": len(names),
            "calibration": f"{CALIBRATION} train windows of 128 bytes (task.calibration_batches)",
            "fine_tuning": "none",
            "threads": torch.get_num_threads(),
            "dense": {"val_perplexity": ppl["val"], "test_perplexity": ppl["test"]},
            "input_norm_spread": spread,
            "rows": rows,
            "target_at_50pct": target,
            "anchor": {**ANCHOR, "ratio_to_magnitude_increase": anchor_ratios},
            "width_check": width_check(256),
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )
    for split in ("val", "test"):
        ratios = target[split]["ratio_to_magnitude_increase"]
        print(
            f"{split}: increase / magnitude's: "
            + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items())
            + " (target <= 0.333)"
        )
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/prune_llm.json)."""
    lines = [
        "## LLM pruning, zoo gpt on the pydoc text (`bench/prune_llm.py`)",
        "",
        f"Perplexity val / test; dense {d['dense']['val_perplexity']:.3f} /"
        f" {d['dense']['test_perplexity']:.3f}. No fine-tuning; same calibration windows for all.",
        "",
        "| pattern | method | val ppl | test ppl |",
        "|---|---|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['pattern']} | {r['method']} | {r['val_perplexity']:.3f} |"
            f" {r['test_perplexity']:.3f} |"
        )
    lines += ["", "At 50%: each method's perplexity increase as a fraction of magnitude's"]
    lines += ["(target <= 0.333):", "", "| method | val | test |", "|---|---:|---:|"]
    target = d["target_at_50pct"]
    for method, ratio in target["val"]["ratio_to_magnitude_increase"].items():
        test = target["test"]["ratio_to_magnitude_increase"][method]
        lines.append(f"| {method} | {ratio:.2f} | {test:.2f} |")
    lines += [
        "",
        "Missed with the paper's defaults (block size 128); see docs/pruning.md for why this",
        "small model differs from the published OPT-125M anchor.",
    ]
    wide = d.get("width_check")
    if wide:
        ratios = wide["ratio_to_magnitude_increase"]
        lines += [
            "",
            f"Width check, a zoo gpt {wide['n_embd']} wide ({wide['params']:,} parameters, same"
            f" recipe), 50%: largest input-feature norm over the median at most"
            f" {wide['input_norm_spread_max']:.1f}x; increase over magnitude's, val / test:"
            f" Wanda {ratios['val']['wanda']:.2f} / {ratios['test']['wanda']:.2f}, SparseGPT"
            f" {ratios['val']['sparsegpt']:.2f} / {ratios['test']['sparsegpt']:.2f}.",
        ]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
