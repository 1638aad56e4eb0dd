"""Head pruning with grouped-query attention on the zoo llama, recovered by distillation
(issue 21).

Run: .venv/bin/python bench/llm_heads.py  ->  bench/results/llm_heads.json

Model: the zoo `llama` (a transformers `LlamaForCausalLM`: 4 layers, 4 query heads sharing 2
key/value heads, 803,968 parameters) trained on the zoo text. `prune.structured` with
`granularity: heads` at ratio 0.5 removes whole key/value groups (one of the two per layer,
with its two query heads), so the query heads per kv group stay equal and the pruned model is
still a `LlamaForCausalLM` with `num_key_value_heads` 1. Importance: l1 of the heads' weights.
Recovery: `distill` from the unpruned model (token-level KL at temperature 1, alpha 0) for
`STEPS` steps of the text task's train split, seeds 0-2 (the seed sets the batch order).
Perplexity on the test split (non-overlapping 128-byte windows, every byte scored once).
Latency: the pruned model against the unpruned one, A/B alternating in one run on one thread
(`compare_latency`), at batch 1 and batch 8 of 128-token windows; tokens/s = batch * 128 /
median seconds.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from common import ab_entry, spread, write_result

import netchisel as nc
from netchisel.distill import DistillConfig, distill_
from netchisel.measure import compare_latency
from netchisel.prune import StructuredConfig
from netchisel.zoo import data, train

STEPS = 100
SEEDS = (0, 1, 2)


def _heads(model: Any) -> list[int]:
    """[query heads, key/value heads] of the first decoder layer, read from its projections
    (the pruning changes the modules; `model.config` keeps the numbers it was built with)."""
    attn = model.model.layers[0].self_attn
    return [attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim]


def main() -> None:
    task = data.task("text", block_size=128, batch_size=32)
    dense = train.pretrained("llama").eval()
    dense_ppl = task.evaluate(dense, "test")["perplexity"]
    runs = []
    pruned_eval = None
    for seed in SEEDS:
        model = copy.deepcopy(dense)
        nc.prune_(model, StructuredConfig(granularity="heads", ratio=0.5), task=task, seed=seed)
        after = task.evaluate(model, "test")["perplexity"]
        distill_(
            model,
            DistillConfig(steps=STEPS, lr=1e-3, alpha=0.0, temperature=1.0),
            task,
            teacher=dense,
            seed=seed,
        )
        recovered = task.evaluate(model.eval(), "test")["perplexity"]
        runs.append({"seed": seed, "pruned": after, "recovered": recovered})
        pruned_eval = model
        print(runs[-1], flush=True)
    assert pruned_eval is not None
    params = {
        "dense": sum(p.numel() for p in dense.parameters()),
        "pruned": sum(p.numel() for p in pruned_eval.parameters()),
    }
    heads = {"dense": _heads(dense), "pruned": _heads(pruned_eval)}
    latency = {}
    for batch in (1, 8):
        x = torch.randint(0, 256, (batch, 128), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cmp = compare_latency(
                lambda x=x: dense(x),
                lambda x=x: pruned_eval(x),
                batch_size=batch,
                labels=("dense", "pruned"),
            )
        entry = ab_entry(cmp)
        entry["tokens_per_s"] = {
            "dense": batch * 128 / (cmp.a.median_ms / 1e3),
            "pruned": batch * 128 / (cmp.b.median_ms / 1e3),
        }
        latency[f"batch_{batch}"] = entry
    write_result(
        "llm_heads",
        {
            "steps": STEPS,
            "dense_test_perplexity": dense_ppl,
            "runs": runs,
            "pruned": spread([r["pruned"] for r in runs]),
            "recovered": spread([r["recovered"] for r in runs]),
            "params": params,
            "heads": heads,
            "latency": latency,
        },
    )


def render(d: dict[str, Any]) -> str:
    """BENCHMARKS.md section."""
    p, r = d["pruned"], d["recovered"]
    lines = [
        "## Head pruning with grouped-query attention, zoo llama (`bench/llm_heads.py`)",
        "",
        f"Half the key/value groups removed with their query heads (heads {d['heads']['dense']}"
        f" -> {d['heads']['pruned']} as [query, kv]; parameters {d['params']['dense']:,} -> "
        f"{d['params']['pruned']:,}); {d['steps']} distillation steps; test perplexity, median "
        "(min-max) of seeds 0-2.",
        "",
        "| model | test perplexity | tokens/s batch 1 | tokens/s batch 8 |",
        "|---|---:|---:|---:|",
    ]
    b1, b8 = d["latency"]["batch_1"], d["latency"]["batch_8"]
    lines.append(
        f"| dense | {d['dense_test_perplexity']:.3f} | {b1['tokens_per_s']['dense']:,.0f} | "
        f"{b8['tokens_per_s']['dense']:,.0f} |"
    )
    lines.append(f"| pruned | {p['median']:.3f} ({p['min']:.3f}-{p['max']:.3f}) | | |")
    lines.append(
        f"| pruned + distilled | {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}) | "
        f"{b1['tokens_per_s']['pruned']:,.0f} | {b8['tokens_per_s']['pruned']:,.0f} |"
    )
    lines.append("")
    lines.append(
        f"Speed-up (dense time / pruned time, A/B in one run): {b1['speedup']:.2f}x at batch "
        f"1, {b8['speedup']:.2f}x at batch 8."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
