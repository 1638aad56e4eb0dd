"""Mixture of experts on the zoo gpt (issue 19, benchmark 2): MoEfication of the trained model,
and Switch layers trained from scratch against dense models, with and without the balancing
loss.

Run: .venv/bin/python bench/dynamic_moe.py  ->  bench/results/dynamic_moe.json
(`--part moefy` or `--part switch` runs one part and merges it into the JSON.)

Model and data: the zoo's trained `gpt` (4 layers, n_embd 128, FFN 128 -> 512 -> 128, byte
tokens, trained on the pydoc text) and its task (windows of 128 bytes; bits per byte and
perplexity per byte on the val and test splits).

1. MoEfication (`dynamic.moe`, method moefy; Zhang et al. 2022): each of the 4 FFNs is split
   into E = 8 experts of 64 hidden units by co-activation on 64 train windows (8,192 tokens),
   and a Linear router per layer is trained (300 steps) to pick the experts with the largest
   outputs. k = 2 (the issue's headline) with seeds 0-2; k = 1, 4 and 8 (all experts: equals
   the dense model) with seed 0, for the MACs-quality curve. Per arm: active FFN MACs per
   token (router + k experts, exact from the shapes; the model's count on a real forward is
   checked against `count_flops`), test perplexity and bits per byte,
   router recall on held-out calibration tokens, and the expected MACs per window under the
   val routing (`Profile.dynamic`). A seed sets the k-means start, router init and data order.
2. Switch from scratch (`dynamic.moe`, method switch, init scratch; Fedus et al. 2021):
   E = 8 experts, top-1, capacity factor 1.25, balance 0.01 (Switch's alpha), against the
   dense gpt trained the same way, all from the same untrained gpt (seeded), `SWITCH_STEPS`
   AdamW steps of `SWITCH_BATCH` windows, lr 3e-3, weight decay 0.01, cosine schedule.
   `switch`: experts of 512 hidden units, each a dense FFN's size, so equal active
   parameters (and 8x the FFN parameters); `switch_equal_total`: experts of 64 units, so the
   dense model's FFN parameters in all and an eighth of them active. (A dense gpt with 8x
   wider FFNs would be the other equal-total comparison; it costs ~5x the dense training and
   does not fit this machine's budget.) The ablation `switch_no_balance` trains `switch` with
   balance 0; `switch_balance_0.1` and `switch_balance_1` with 10x and 100x Switch's weight,
   and `switch_400_steps` with Switch's weight for 4x the steps (no dense run of that
   length beside it), to see what the load CV needs to reach the target. Per arm: test bits
   per byte, and on the val split: load coefficient of variation (`load_cv`, population
   std / mean of the assignments each expert gets, the largest over the 4 layers; target
   < 0.2 with the balancing loss), dropped assignments (over capacity), the router's mean
   per-token entropy and the entropy of the expert load (ln 8 = 2.079 is even), averaged
   over layers. Seeds 0-2.
3. Latency, A/B alternating in one run (`compare_latency`, one thread, eager) of the
   saved-and-loaded MoEfied model (k = 2) against the dense one at batch 1 and 8 windows.

The training lengths are scaled down to fit a 2-core machine shared by several jobs (one
thread each): the Switch comparison is an early-training comparison (100 steps of 8 windows;
the zoo trains the reference gpt for 1,000 steps of 32 windows), not converged models.

Anchors: MoEfication keeps about 97% of the original performance on downstream tasks using
10-30% of the FFN (T5, ReLU FFNs; Zhang et al. 2022); Switch-Base reaches the dense T5-Base
quality ~7x faster at equal FLOPs per token (Fedus et al. 2021); without a balancing loss,
routers collapse onto few experts (Shazeer et al. 2017).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from common import ab_speedups, load_result, shipped, spread, write_result
from torch import nn

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.dynamic.moe import MoEConfig, moe
from netchisel.dynamic.moe_costs import load_cv, load_entropy
from netchisel.measure import count_flops
from netchisel.zoo import data, gpt, train

SEEDS = (0, 1, 2)
EXPERTS = 8
MOEFY_K = (1, 2, 4, 8)
HEADLINE_K = 2  # seeds 0-2; the other k (the MACs-quality curve) seed 0 only
MOEFY = {"calibration_samples": 64, "router_steps": 300, "router_lr": 1e-2, "router_batch": 256}
SWITCH_STEPS = 100
# Switch arms: each expert's hidden width. 512 = the dense FFN (top-1: equal active
# parameters); 64 = 512 / 8 (equal total FFN parameters, an eighth of them active).
# Each arm: (expert width, balance). 0.1 and 1 = 10x and 100x Switch's weight: 100 steps
# are too few for 0.01 to even the load out.
ARMS = {
    "dense": (0, 0.0),
    "switch": (512, 0.01),
    "switch_equal_total": (64, 0.01),
    "switch_no_balance": (512, 0.0),
    "switch_balance_0.1": (512, 0.1),
    "switch_balance_1": (512, 1.0),
    "switch_400_steps": (512, 0.01),  # 4x longer: does Switch's weight reach the target?
}
LONGER = {"switch_400_steps": 400}  # arms trained for other than SWITCH_STEPS
ALL_ARMS = dict(ARMS)
SWITCH_BATCH = 8
TRAIN = {"lr": 3e-3, "weight_decay": 0.01}
CAPACITY = 1.25
BALANCE = 0.01
TARGET_CV = 0.2


def bits(
    model: nn.Module, task: Any, splits: tuple[str, ...] = ("val", "test")
) -> dict[str, float]:
    out = {}
    for split in splits:
        m = task.evaluate(model, split)
        out[f"{split}_bpb"] = m["bits_per_token"]
        out[f"{split}_ppl"] = m["perplexity"]
    return out


def ffn_macs_per_token(model: nn.Module, one: tuple[torch.Tensor, ...]) -> int:
    """Exact FFN MACs per token and layer (count_flops on one window, the blocks' mlps)."""
    count = count_flops(model, one)
    tokens = one[0].numel()
    mlp = [v for k, v in count.macs_by_module.items() if k.endswith(".mlp")]
    return sum(mlp) // (tokens * len(mlp))


def routing_summary(dyn: nn.Module) -> dict[str, Any]:
    routing = dyn.routing  # type: ignore[union-attr]
    layers = routing["layers"]
    load = {n: r["load"] for n, r in layers.items()}
    return {
        "load_cv": max(load_cv(x) for x in load.values()),
        "load_cv_by_layer": {n: load_cv(x) for n, x in load.items()},
        "dropped_fraction": sum(r["dropped"] for r in layers.values())
        / sum(sum(r["load"]) for r in layers.values()),
        "router_entropy": sum(r["router_entropy"] for r in layers.values()) / len(layers),
        "load_entropy": sum(load_entropy(x) for x in load.values()) / len(layers),
        "load_by_layer": load,
    }


def moefy_arms(reference: nn.Module, task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in MOEFY_K:
        runs = []
        for seed in SEEDS if k == HEADLINE_K else SEEDS[:1]:
            model = copy.deepcopy(reference)
            ctx = Context(task, seed=seed, quiet=True)
            start = time.perf_counter()
            config = MoEConfig(method="moefy", experts=EXPERTS, top_k=k, **MOEFY)  # type: ignore[arg-type]
            dyn = moe(model, config, ctx)
            seconds = time.perf_counter() - start
            costs = dyn.dynamic_costs(one)  # type: ignore[operator]
            layer = next(iter(costs["layers"].values()))
            # The count of the real forward: outside + served tokens * expert MACs, exactly.
            counted = count_flops(dyn, one).macs
            assert counted == costs["example_macs"]
            runs.append(
                {
                    **bits(dyn, task, ("test",)),
                    "active_ffn_macs_per_token": layer["active_macs_per_token"],
                    "expected_macs_per_window": costs["expected_macs"],
                    "example_macs_per_window": counted,
                    "router_recall": sum(ctx.records["router_recall"].values())
                    / len(ctx.records["router_recall"]),
                    **routing_summary(dyn),
                    "seconds": seconds,
                }
            )
            print(f"moefy k={k} seed {seed}: {runs[-1]['test_bpb']:.4f} bpb", flush=True)
            if k == 2 and seed == SEEDS[0]:
                out["_model_k2"] = dyn
        out[f"k{k}"] = {
            "top_k": k,
            "active_ffn_macs_per_token": runs[0]["active_ffn_macs_per_token"],
            **{
                key: spread([r[key] for r in runs], by_seed=True)
                for key in (
                    "test_bpb",
                    "test_ppl",
                    "router_recall",
                    "expected_macs_per_window",
                    "load_cv",
                    "router_entropy",
                    "seconds",
                )
            },
            "dropped_fraction": max(r["dropped_fraction"] for r in runs),
        }
    return out


def params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    ffn = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    return {"params": total, "ffn_params": ffn}


def switch_arms(task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    settings = TrainSettings(steps=SWITCH_STEPS, batch_size=SWITCH_BATCH, **TRAIN)  # type: ignore[arg-type]
    runs: dict[str, list[dict[str, Any]]] = {}
    shapes: dict[str, Any] = {}
    for seed in SEEDS:
        for arm, (hidden, balance) in ARMS.items():
            torch.manual_seed(seed)
            model = gpt()
            ctx = Context(task, seed=seed, quiet=True)
            start = time.perf_counter()
            row: dict[str, Any] = {}
            if arm == "dense":
                fit(model, task, settings, ctx)
                model.eval()
                ffn_active = ffn_macs_per_token(model, one)
            else:
                config = MoEConfig(
                    method="switch",
                    init="scratch",
                    experts=EXPERTS,
                    top_k=1,
                    expert_hidden=hidden,
                    capacity_factor=CAPACITY,
                    balance=balance,
                    steps=LONGER.get(arm, SWITCH_STEPS),
                    batch_size=SWITCH_BATCH,
                    **TRAIN,  # type: ignore[arg-type]
                )
                model = moe(model, config, ctx)
                costs = model.dynamic_costs(one)  # type: ignore[operator]
                ffn_active = next(iter(costs["layers"].values()))["active_macs_per_token"]
                row.update(routing_summary(model))
                row["final_balance_loss"] = ctx.records["final_balance_loss"]
                row["balance"] = balance
                row["steps"] = LONGER.get(arm, SWITCH_STEPS)
            row.update(bits(model, task, ("test",)))
            row["seconds"] = time.perf_counter() - start
            row["active_ffn_macs_per_token_per_layer"] = ffn_active
            runs.setdefault(arm, []).append(row)
            inner = getattr(model, "model", model)
            shapes[arm] = params(inner)
            print(
                f"{arm} seed {seed}: {row['test_bpb']:.4f} bpb ({row['seconds']:.0f} s)", flush=True
            )
    out: dict[str, Any] = {}
    for arm, rows in runs.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], float) and k != "final_balance_loss"]
        out[arm] = {
            **shapes[arm],
            "active_ffn_macs_per_token_per_layer": rows[0]["active_ffn_macs_per_token_per_layer"],
            **{k: spread([r[k] for r in rows], by_seed=True) for k in keys},
        }
        if "final_balance_loss" in rows[0]:
            out[arm]["final_balance_loss"] = spread([r["final_balance_loss"] for r in rows])
            out[arm]["balance"] = rows[0]["balance"]
            out[arm]["steps"] = rows[0]["steps"]
            out[arm]["load_cv_by_layer"] = {
                layer: spread([r["load_cv_by_layer"][layer] for r in rows])
                for layer in rows[0]["load_cv_by_layer"]
            }
    return out


def dense_part(task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """The trained dense gpt, MoEfication of it, and the latency A/B."""
    reference = train.pretrained("gpt").eval()
    dense = {
        **bits(reference, task),
        **params(reference),
        "ffn_macs_per_token_per_layer": ffn_macs_per_token(reference, one),
        "macs_per_window": count_flops(reference, one).macs,
    }
    print(f"dense: {dense['val_bpb']:.4f} bpb", flush=True)
    moefy = moefy_arms(reference, task, one)
    model_k2 = moefy.pop("_model_k2")
    loaded, artifact = shipped(model_k2, task.example_inputs(2, split="test"))
    latency = ab_speedups(
        {"dense": reference, "moefy_k2": loaded}, [("dense", "moefy_k2")], task, (1, 8), (5, 2)
    )
    print({k: round(v["speedup"], 3) for k, v in latency.items()}, flush=True)
    return {
        "dense": dense,
        "moefy": {"config": MOEFY, "arms": moefy, "artifact_bytes_k2": artifact},
        "latency": latency,
        "threads": 1,
        "latency_harness": "compare_latency: alternating A/B blocks, ratio of medians",
    }


def switch_part(task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Switch from scratch against the dense models, with and without the balancing loss."""
    return {
        "switch": {
            "steps": SWITCH_STEPS,
            "batch_windows": SWITCH_BATCH,
            "train": TRAIN,
            "capacity_factor": CAPACITY,
            "balance": BALANCE,
            "arms": switch_arms(task, one),
        }
    }


def load_cv_summary(arms: dict[str, Any]) -> dict[str, Any]:
    """The issue's `load_cv` field: the Switch arm at Switch's balance weight (median over
    seeds of the largest CV over layers), with the target and the other arms beside it."""
    cv = arms["switch"]["load_cv"]["median"]
    return {
        "load_cv": cv,
        "load_cv_target": TARGET_CV,
        "load_cv_met": cv < TARGET_CV,
        "load_cv_by_arm": {n: a["load_cv"]["median"] for n, a in arms.items() if "load_cv" in a},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run, not for the JSON")
    parser.add_argument(
        "--arms", default="", help="switch: only these arms (comma-separated), merged"
    )
    parser.add_argument(
        "--part",
        choices=("all", "moefy", "switch", "merge"),
        default="all",
        help="run one part and merge it into the existing JSON (the parts share no state); "
        "merge: run nothing, re-derive the summary fields of the JSON",
    )
    args = parser.parse_args()
    global SEEDS, SWITCH_STEPS, MOEFY_K, ARMS
    if args.arms:
        ARMS = {name: ARMS[name] for name in args.arms.split(",")}
    if args.quick:
        SEEDS, SWITCH_STEPS, MOEFY_K = (0,), 5, (2, 8)
        MOEFY["router_steps"] = 20
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    task = data.task("text", block_size=128)
    one = task.example_inputs(1, split="test")
    result: dict[str, Any] = {
        "model": "zoo gpt (4 layers, n_embd 128, FFN 512, byte tokens)",
        "task": "pydoc text, windows of 128 bytes; bits per byte and perplexity on val/test",
        "seeds": list(SEEDS),
        "experts": EXPERTS,
    }
    seconds: dict[str, float] = {}
    for part, run in (("moefy", dense_part), ("switch", switch_part)):
        if args.part in ("all", part):
            start = time.perf_counter()
            result.update(run(task, one))
            seconds[part + (f" ({args.arms})" if args.arms else "")] = time.perf_counter() - start
    if args.quick:
        print(result)
        return
    old = load_result("dynamic_moe") if args.part != "all" else None
    if old is not None:
        old.pop("benchmark", None)
        seconds = {**old.get("seconds", {}), **seconds}
        if args.arms and "switch" in old:  # some arms re-run: keep the others
            result["switch"]["arms"] = {**old["switch"]["arms"], **result["switch"]["arms"]}
        result = {**old, **result}
    if "switch" in result:
        for name, arm in result["switch"]["arms"].items():  # runs from before it was recorded
            if name != "dense" and "balance" not in arm:
                arm["balance"] = ALL_ARMS[name][1]
        result.pop("load_cv_no_balance", None)  # an older summary field, now in load_cv_by_arm
        result.update(load_cv_summary(result["switch"]["arms"]))
    result["seconds"] = seconds
    path = write_result("dynamic_moe", result)
    print(f"wrote {path}")


def _range(s: dict[str, Any], fmt: str = ".3f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/dynamic_moe.json)."""
    dense, mo, sw = d["dense"], d["moefy"]["arms"], d["switch"]["arms"]
    lines = [
        "## Mixture of experts on the gpt (`bench/dynamic_moe.py`)",
        "",
        f"MoEfication of the trained zoo gpt: each FFN split into {d['experts']} experts by "
        "co-activation, a Linear router per layer; active FFN MACs per token and layer (router "
        "+ k experts) against bits per byte, median (min-max) over seeds "
        f"{', '.join(map(str, d['seeds']))}.",
        "",
        "| model | seeds | active FFN MACs/token/layer | test bits/byte | test perplexity "
        "| router recall |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dense | | {dense['ffn_macs_per_token_per_layer']:,} | {dense['test_bpb']:.3f} "
        f"| {dense['test_ppl']:.3f} | |",
    ]
    for arm in mo.values():
        lines.append(
            f"| MoEfied, top-{arm['top_k']} | {len(arm['test_bpb']['by_seed'])} "
            f"| {arm['active_ffn_macs_per_token']:,} | {_range(arm['test_bpb'])} "
            f"| {_range(arm['test_ppl'])} | {_range(arm['router_recall'], '.2f')} |"
        )
    lines += [
        "",
        f"Switch layers from scratch ({d['switch']['steps']} steps of "
        f"{d['switch']['batch_windows']} windows; E = {d['experts']}, top-1, capacity "
        f"{d['switch']['capacity_factor']}) against the dense gpt trained the same way, at "
        "equal active parameters (experts of 512 units) and equal FFN parameters (experts of "
        "64 units: 8 x 64 = the dense 512), median (min-max) over the seeds. Test bits per "
        "byte; on val: load CV (largest over layers; target < 0.2), dropped assignments and "
        "load entropy (mean over layers; ln 8 = 2.08 is even).",
        "",
        "| arm | balance | steps | params | FFN MACs/token/layer | test bits/byte | load CV "
        "| dropped | load entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arm in sw.items():
        cv = _range(arm["load_cv"], ".2f") if "load_cv" in arm else ""
        dropped = f"{100 * arm['dropped_fraction']['median']:.1f}%" if "load_cv" in arm else ""
        ent = _range(arm["load_entropy"], ".2f") if "load_entropy" in arm else ""
        lines.append(
            f"| {name} | {arm.get('balance', '')} | {arm.get('steps', d['switch']['steps'])} "
            f"| {arm['params']:,} "
            f"| {arm['active_ffn_macs_per_token_per_layer']:,} "
            f"| {_range(arm['test_bpb'])} | {cv} | {dropped} | {ent} |"
        )
    lines.append("")
    for key, lat in d["latency"].items():
        batch = key.split("@")[1]
        lines.append(
            f"- batch {batch}: dense {lat['a_median_ms']:.2f} ms, MoEfied top-2 "
            f"{lat['b_median_ms']:.2f} ms (dense / MoE = {lat['speedup']:.2f}x)"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
