"""Mixture of experts on the zoo gpt (issue 19, benchmark 2): MoEfication of the trained model
(with and without a distillation recovery), Switch layers trained from scratch against dense
models, and Switch layers upcycled from the trained gpt; with and without the balancing loss.

Run: .venv/bin/python bench/dynamic_moe.py  ->  bench/results/dynamic_moe.json
(`--part moefy`, `--part switch` or `--part upcycle` runs one part and merges it into the
JSON; `--arms a,b` runs only those arms of the switch or upcycle part, merged.)

Model and data: the zoo's trained `gpt` (4 layers, n_embd 128, FFN 128 -> 512 -> 128, GELU,
byte tokens, trained on the pydoc text for 1,000 steps of 32 windows) and its task (windows of
128 bytes; bits per byte and perplexity per byte on the test split).

Routing figures (every Switch and upcycled arm) are measured on the **test split** (all its
windows, eval mode, the task's batches of 32 windows = 4,096 tokens per forward, which is
what capacity applies to), per layer:
- `load_cv_by_layer`: the coefficient of variation (population std / mean) over the E
  experts of the number of assignments each receives, **before capacity** (a token routed to
  an expert counts whether or not it is then dropped; top-k: k assignments per token);
- `load_cv_kept_by_layer`: the same over the assignments each expert **served** (after
  capacity);
- `dropped_by_layer`: the fraction of the assignments over capacity;
- `router_entropy_by_layer`: the router's mean per-token entropy (nats; ln 8 = 2.079 is flat);
- the arm's `load_cv` (the issue's field) is the largest per-layer CV before capacity;
  `load_entropy` is the entropy of the load shares (ln 8 even), the mean over layers.
Target: `load_cv` < 0.2 with the balancing loss. The JSON's top-level `load_cv` is the
median over seeds of `upcycle_balance_1` (part 3, balance weight 1 = 100x Switch's alpha);
`load_cv_met` asks every seed to be under 0.2; `load_cv_by_arm` has every arm's median.

1. MoEfication (`dynamic.moe`, method moefy; Zhang et al. 2022): each of the 4 FFNs is split
   into E = 8 experts of 64 hidden units by co-activation on 64 train windows (8,192 tokens),
   and a Linear router per layer is trained (300 steps) to pick the top-k experts by output
   norm (`router_target: output_norm`). k = 2 with seeds 0-2; k = 1, 4 and 8 (all experts:
   the dense model) with seed 0, for the MACs-quality curve. `router_target: activation`
   (MoEfication's own target: the sum of each expert's positive activations) at k = 2,
   seeds 0-2. Recovery (`finetune_steps`): the experts distilled from the dense gpt
   (per-position KL, routers and the rest fixed), `MOEFY_FINETUNE` steps of 8 windows, for k =
   1, 2 (seeds 0-2) and 4. Per arm: active FFN MACs per token (router + k experts, exact
   from the shapes; the model's count on a real forward is checked against `count_flops`),
   test perplexity and bits per byte, router recall on held-out calibration tokens, and the
   expected MACs per window under the val routing (`Profile.dynamic`).
2. Switch from scratch (`dynamic.moe`, method switch, init scratch; Fedus et al. 2021):
   E = 8 experts, top-1, capacity factor 1.25, balance 0.01 (Switch's alpha), against the
   dense gpt trained the same way, all from the same untrained gpt (seeded), `SWITCH_STEPS`
   AdamW steps of `SWITCH_BATCH` windows, lr 3e-3, weight decay 0.01, cosine schedule: an
   under-trained comparison (the zoo gpt gets 1,000 steps of 32 windows, 40x the data).
   `switch`: experts of 512 hidden units, each a dense FFN's size, so equal active
   parameters (and 8x the FFN parameters); `switch_equal_total`: experts of 64 units, so the
   dense model's FFN parameters in all and an eighth of them active. (A dense gpt with 8x
   wider FFNs would be the other equal-total comparison; it does not fit this machine's
   budget.) `switch_no_balance` trains `switch` with balance 0; `switch_balance_0.1` and
   `switch_balance_1` with 10x and 100x Switch's weight, and `switch_400_steps` with
   Switch's weight for 4x the steps; `switch_1600_steps`, `switch_balance_1_1600_steps` and
   `dense_1600_steps` train 16x as long (added with `--part switch --arms ...`). Seeds 0-2.
   The routing of the arms in the committed JSON was measured on the val split (their
   `routing_split`), by the run of 2026-12-06, before this script measured routing on test;
   `--part switch` re-measures them on test. Part 3 records how much of the FFN inputs'
   second moment is their mean over tokens (`mlp_input_mean_share_by_layer`, first 64 test
   windows; 1 = every token the same vector) for the untrained gpt, the dense gpt after
   part 2's 100 and 1,600 steps and the trained zoo gpt.
3. Upcycling (`dynamic.moe`, method switch, init upcycle; Komatsuzaki et al. 2022): every
   expert a copy of the trained gpt's FFN, a fresh router, top-2 with gates renormalised over
   the two (so the layer starts as the dense block; Sparse Upcycling routes its decoder
   top-2), capacity 1.25, then the whole model fine-tuned `UPCYCLE_STEPS` steps of 8 windows
   at lr 1e-3 (weight decay 0.01, cosine) with the balancing loss at weight 1, 0.01
   (Switch's alpha), 0 (the ablation) and 0.01 with the router z-loss (1e-3, ST-MoE, Zoph et
   al. 2022) and input jitter (0.01, Switch), 0.1, and top-1 (Switch's routing, softmax
   gate) at weight 1; seeds 0-2. Beside them `dense_finetuned`: the trained dense gpt
   fine-tuned the same way (the same steps and batches; an upcycled top-2 layer runs twice
   the dense FFN's MACs).
4. Latency, A/B alternating in one run (`compare_latency`, one thread, eager) of the
   saved-and-loaded MoEfied model (k = 2) against the dense one at batch 1 and 8 windows.

The training lengths are scaled down to fit a 2-core machine shared by several jobs (one
thread each).

Anchors: MoEfication keeps about 97% of the original performance on downstream tasks using
10-30% of the FFN (T5, ReLU FFNs; Zhang et al. 2022); Switch-Base reaches the dense T5-Base
quality ~7x faster at equal FLOPs per token (Fedus et al. 2021); without a balancing loss,
routers collapse onto few experts (Shazeer et al. 2017).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from typing import Any

import torch
from common import ab_speedups, load_result, shipped, spread, write_result
from torch import nn

from netchisel.core.context import Context
from netchisel.core.train import TrainSettings, fit
from netchisel.dynamic.moe import MoEConfig, moe
from netchisel.dynamic.moe_costs import load_cv, load_entropy, measure_routing
from netchisel.measure import count_flops
from netchisel.zoo import data, gpt, train

SEEDS = (0, 1, 2)
EXPERTS = 8
MOEFY_K = (1, 2, 4, 8)
HEADLINE_K = 2  # seeds 0-2; the other k (the MACs-quality curve) seed 0 only
MOEFY = {"calibration_samples": 64, "router_steps": 300, "router_lr": 1e-2, "router_batch": 256}
MOEFY_FINETUNE = {"finetune_steps": 200, "lr": 1e-3, "batch_size": 8}
FINETUNE_K = (1, 2, 4)
SWITCH_STEPS = 100
# Switch arms: each expert's hidden width. 512 = the dense FFN (top-1: equal active
# parameters); 64 = 512 / 8 (equal total FFN parameters, an eighth of them active).
# Each arm: (expert width, balance). 0.1 and 1 = 10x and 100x Switch's weight.
ARMS = {
    "dense": (0, 0.0),
    "switch": (512, 0.01),
    "switch_equal_total": (64, 0.01),
    "switch_no_balance": (512, 0.0),
    "switch_balance_0.1": (512, 0.1),
    "switch_balance_1": (512, 1.0),
    "switch_400_steps": (512, 0.01),  # 4x longer: does Switch's weight reach the target?
    # 16x longer: is the miss from scratch under-training? (and the dense model alike)
    "dense_1600_steps": (0, 0.0),
    "switch_1600_steps": (512, 0.01),
    "switch_balance_1_1600_steps": (512, 1.0),
}
LONGER = {  # arms trained for other than SWITCH_STEPS
    "switch_400_steps": 400,
    "dense_1600_steps": 1600,
    "switch_1600_steps": 1600,
    "switch_balance_1_1600_steps": 1600,
}
ALL_ARMS = dict(ARMS)
SWITCH_BATCH = 8
TRAIN = {"lr": 3e-3, "weight_decay": 0.01}
CAPACITY = 1.25
BALANCE = 0.01
TARGET_CV = 0.2
UPCYCLE_STEPS = 200
UPCYCLE_TRAIN = {"lr": 1e-3, "weight_decay": 0.01}
# Upcycled arms: (top_k, balance, z_loss, jitter); None: the dense gpt fine-tuned alike.
UPCYCLE_ARMS: dict[str, tuple[int, float, float, float] | None] = {
    "dense_finetuned": None,
    "upcycle_balance_1": (2, 1.0, 0.0, 0.0),
    "upcycle_no_balance": (2, 0.0, 0.0, 0.0),
    "upcycle_balance_0.01": (2, 0.01, 0.0, 0.0),
    "upcycle_balance_0.01_z_jitter": (2, 0.01, 1e-3, 0.01),
    "upcycle_balance_0.1": (2, 0.1, 0.0, 0.0),
    "upcycle_top1_balance_1": (1, 1.0, 0.0, 0.0),
}
ONE_SEED: set[str] = set()  # arms run with seed 0 only (none now)
HEADLINE_ARM = "upcycle_balance_1"  # the issue's `load_cv`
MOEFY_ONLY: set[str] = set()  # --arms: only these MoEfication arms (k2, k2_finetuned, ...)


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


def mlp_input_mean_share(model: nn.Module, task: Any, windows: int = 64) -> dict[str, float]:
    """Per FFN: |mean over tokens of its input|^2 / mean over tokens of |input|^2 on the first
    `windows` test windows (1: every token brings the same vector; a router then cannot tell
    tokens apart)."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))
        )
        for n, m in model.named_modules()
        if n.endswith(".mlp")
    ]
    x = task.example_inputs(windows, split="test")
    try:
        with torch.no_grad():
            model.eval()(*x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, parts in seen.items():
        h = torch.cat(parts).double()
        out[name] = float(h.mean(0).square().sum() / h.square().sum(1).mean())
    return out


def routing_fields(model: nn.Module, task: Any, split: str = "test") -> dict[str, Any]:
    """The routing of every MoE layer over `split` (see the module docstring)."""
    inner = getattr(model, "model", model)  # layer names as in the zoo gpt: blocks.0.mlp
    layers = measure_routing(inner, task, split)["layers"]
    by = {
        "load_cv_by_layer": {n: load_cv(r["load"]) for n, r in layers.items()},
        "load_cv_kept_by_layer": {n: load_cv(r["kept"]) for n, r in layers.items()},
        "dropped_by_layer": {n: r["dropped"] / sum(r["load"]) for n, r in layers.items()},
        "router_entropy_by_layer": {n: r["router_entropy"] for n, r in layers.items()},
    }
    return {
        "routing_split": split,
        "load_cv": max(by["load_cv_by_layer"].values()),
        "load_cv_kept": max(by["load_cv_kept_by_layer"].values()),
        "dropped_fraction": sum(r["dropped"] for r in layers.values())
        / sum(sum(r["load"]) for r in layers.values()),
        "router_entropy": sum(r["router_entropy"] for r in layers.values()) / len(layers),
        "load_entropy": sum(load_entropy(r["load"]) for r in layers.values()) / len(layers),
        **by,
        "load_by_layer": {n: r["load"] for n, r in layers.items()},
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds' rows of one arm: floats as spreads, per-layer dicts as per-layer spreads."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = spread([r[key] for r in rows], by_seed=True)
        elif key.endswith("_by_layer") and key != "load_by_layer":
            out[key] = {n: spread([r[key][n] for r in rows]) for n in value}
        elif key != "load_by_layer":
            out[key] = value
    return out


def moefy_run(
    reference: nn.Module, task: Any, one: tuple[torch.Tensor, ...], seed: int, **fields: Any
) -> tuple[dict[str, Any], nn.Module]:
    model = copy.deepcopy(reference)
    ctx = Context(task, seed=seed, quiet=True)
    start = time.perf_counter()
    config = MoEConfig(method="moefy", experts=EXPERTS, **MOEFY, **fields)  # type: ignore[arg-type]
    dyn = moe(model, config, ctx)
    seconds = time.perf_counter() - start
    costs = dyn.dynamic_costs(one)  # type: ignore[operator]
    layer = next(iter(costs["layers"].values()))
    # The count of the real forward: outside + served tokens * expert MACs, exactly.
    counted = count_flops(dyn, one).macs
    assert counted == costs["example_macs"]
    recall = ctx.records["router_recall"]
    row = {
        **bits(dyn, task, ("test",)),
        "active_ffn_macs_per_token": layer["active_macs_per_token"],
        "expected_macs_per_window": float(costs["expected_macs"]),
        "router_recall": sum(recall.values()) / len(recall),
        "seconds": seconds,
    }
    if "finetune_final_loss" in ctx.records:
        row["finetune_first_kl"] = ctx.records["finetune_first_loss"]
        row["finetune_final_kl"] = ctx.records["finetune_final_loss"]
    print(f"moefy {fields} seed {seed}: {row['test_bpb']:.4f} bpb ({seconds:.0f} s)", flush=True)
    return row, dyn


def moefy_arms(reference: nn.Module, task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    plan: list[tuple[str, int, dict[str, Any]]] = []
    for k in MOEFY_K:
        plan.append((f"k{k}", k, {}))
    for k in FINETUNE_K:
        plan.append((f"k{k}_finetuned", k, MOEFY_FINETUNE))
    plan.append((f"k{HEADLINE_K}_activation_target", HEADLINE_K, {"router_target": "activation"}))
    out: dict[str, Any] = {}
    for name, k, fields in plan:
        if MOEFY_ONLY and name not in MOEFY_ONLY:
            continue
        rows = []
        for seed in SEEDS if k == HEADLINE_K else SEEDS[:1]:
            row, dyn = moefy_run(reference, task, one, seed, top_k=k, **fields)
            rows.append(row)
            if name == f"k{HEADLINE_K}" and seed == SEEDS[0]:
                out["_model_k2"] = dyn
        out[name] = {
            "top_k": k,
            **{key: value for key, value in fields.items() if key != "batch_size"},
            **summarise(rows),
            "active_ffn_macs_per_token": rows[0]["active_ffn_macs_per_token"],
        }
    return out


def params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    ffn = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    return {"params": total, "ffn_params": ffn}


def moe_row(
    model: nn.Module,
    config: MoEConfig,
    ctx: Context,
    task: Any,
    one: tuple[torch.Tensor, ...],
    row: dict[str, Any],
) -> tuple[nn.Module, int]:
    """Run the moe stage; fill `row` with its routing fields and final balance loss; return
    the MoE model and its active FFN MACs per token (first MoE layer)."""
    model = moe(model, config, ctx)
    costs = model.dynamic_costs(one)  # type: ignore[operator]
    row.update(routing_fields(model, task))
    row["final_balance_loss"] = ctx.records["final_balance_loss"]
    return model, next(iter(costs["layers"].values()))["active_macs_per_token"]


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
            if hidden == 0:  # a dense arm
                steps = LONGER.get(arm, SWITCH_STEPS)
                fit(model, task, dataclasses.replace(settings, steps=steps), ctx)
                model.eval()
                ffn_active = ffn_macs_per_token(model, one)
                row["mlp_input_mean_share_by_layer"] = mlp_input_mean_share(model, task)
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
                model, ffn_active = moe_row(model, config, ctx, task, one, row)
            row.update(bits(model, task, ("test",)))
            row["seconds"] = time.perf_counter() - start
            runs.setdefault(arm, []).append(row)
            inner = getattr(model, "model", model)
            shapes[arm] = {**params(inner), "active_ffn_macs_per_token_per_layer": ffn_active}
            print(
                f"{arm} seed {seed}: {row['test_bpb']:.4f} bpb ({row['seconds']:.0f} s)", flush=True
            )
    out: dict[str, Any] = {}
    for arm, rows in runs.items():
        out[arm] = {**shapes[arm], **summarise(rows)}
        if ARMS[arm][0] != 0:
            out[arm]["balance"] = ARMS[arm][1]
        if ARMS[arm][0] != 0 or arm in LONGER:
            out[arm]["steps"] = LONGER.get(arm, SWITCH_STEPS)
    return out


def upcycle_arms(reference: nn.Module, task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    settings = TrainSettings(steps=UPCYCLE_STEPS, batch_size=SWITCH_BATCH, **UPCYCLE_TRAIN)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for arm, spec in UPCYCLE_ARMS.items():
        rows = []
        for seed in SEEDS[:1] if arm in ONE_SEED else SEEDS:
            model = copy.deepcopy(reference)
            ctx = Context(task, seed=seed, quiet=True)
            start = time.perf_counter()
            row: dict[str, Any] = {}
            if spec is None:
                fit(model, task, settings, ctx)
                model.eval()
                active = ffn_macs_per_token(model, one)
            else:
                top_k, balance, z_loss, jitter = spec
                config = MoEConfig(
                    method="switch",
                    init="upcycle",
                    experts=EXPERTS,
                    top_k=top_k,
                    capacity_factor=CAPACITY,
                    balance=balance,
                    z_loss=z_loss,
                    jitter=jitter,
                    steps=UPCYCLE_STEPS,
                    batch_size=SWITCH_BATCH,
                    **UPCYCLE_TRAIN,  # type: ignore[arg-type]
                )
                model, active = moe_row(model, config, ctx, task, one, row)
                row["final_z_loss"] = ctx.records["final_z_loss"]
            row.update(bits(model, task, ("test",)))
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            inner = getattr(model, "model", model)
            print(
                f"{arm} seed {seed}: {row['test_bpb']:.4f} bpb, CV {row.get('load_cv')}", flush=True
            )
        out[arm] = {
            **params(inner),
            "active_ffn_macs_per_token_per_layer": active,
            **summarise(rows),
        }
        if spec is not None:
            keys = ("top_k", "balance", "z_loss", "jitter")
            out[arm].update(dict(zip(keys, spec, strict=True)))
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
    print(f"dense: {dense['test_bpb']:.4f} bpb", flush=True)
    moefy = moefy_arms(reference, task, one)
    if "_model_k2" not in moefy:  # some arms re-run (--arms): the latency A/B is kept
        return {"dense": dense, "moefy": {"finetune": MOEFY_FINETUNE, "arms": moefy}}
    model_k2 = moefy.pop("_model_k2")
    loaded, artifact = shipped(model_k2, task.example_inputs(2, split="test"))
    latency = ab_speedups(
        {"dense": reference, "moefy_k2": loaded}, [("dense", "moefy_k2")], task, (1, 8), (5, 2)
    )
    print({k: round(v["speedup"], 3) for k, v in latency.items()}, flush=True)
    return {
        "dense": dense,
        "moefy": {
            "config": MOEFY,
            "finetune": MOEFY_FINETUNE,
            "arms": moefy,
            "artifact_bytes_k2": artifact,
        },
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


def upcycle_part(task: Any, one: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Switch layers upcycled from the trained gpt, fine-tuned with and without balancing."""
    reference = train.pretrained("gpt").eval()
    torch.manual_seed(0)
    untrained = gpt()
    shares = {"untrained": mlp_input_mean_share(untrained, task)}
    # The dense arm of part 2 (seed 0): what a from-scratch router sees after SWITCH_STEPS.
    settings = TrainSettings(steps=SWITCH_STEPS, batch_size=SWITCH_BATCH, **TRAIN)  # type: ignore[arg-type]
    fit(untrained, task, settings, Context(task, seed=0, quiet=True))
    shares[f"scratch_{SWITCH_STEPS}_steps"] = mlp_input_mean_share(untrained, task)
    shares["trained"] = mlp_input_mean_share(reference, task)
    return {
        "upcycle": {
            "steps": UPCYCLE_STEPS,
            "batch_windows": SWITCH_BATCH,
            "train": UPCYCLE_TRAIN,
            "capacity_factor": CAPACITY,
            "mlp_input_mean_share_by_layer": shares,
            "arms": upcycle_arms(reference, task, one),
        }
    }


def load_cv_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's `load_cv` field: the headline upcycled arm (median over seeds of the
    largest per-layer CV on test), with the target and every arm's median beside it."""
    by_arm = {}
    for part in ("switch", "upcycle"):
        for name, arm in result.get(part, {}).get("arms", {}).items():
            if "load_cv" in arm:
                by_arm[name] = arm["load_cv"]["median"]
    cv = by_arm.get(HEADLINE_ARM)
    return {
        "load_cv": cv,
        "load_cv_arm": HEADLINE_ARM,
        "load_cv_target": TARGET_CV,
        "load_cv_met": cv is not None
        and max(result["upcycle"]["arms"][HEADLINE_ARM]["load_cv"]["by_seed"]) < TARGET_CV,
        "load_cv_by_arm": by_arm,
    }


PARTS = {"moefy": dense_part, "switch": switch_part, "upcycle": upcycle_part}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run, not for the JSON")
    parser.add_argument(
        "--arms", default="", help="switch / upcycle: only these arms (comma-separated), merged"
    )
    parser.add_argument(
        "--part",
        choices=("all", *PARTS, "merge"),
        default="all",
        help="run one part and merge it into the existing JSON (the parts share no state); "
        "merge: run nothing, re-derive the summary fields of the JSON",
    )
    args = parser.parse_args()
    global SEEDS, SWITCH_STEPS, UPCYCLE_STEPS, MOEFY_K, FINETUNE_K, ARMS, UPCYCLE_ARMS
    if args.arms:
        chosen = args.arms.split(",")
        MOEFY_ONLY.update(n for n in chosen if n.startswith("k"))
        ARMS = {n: ARMS[n] for n in chosen if n in ARMS}
        UPCYCLE_ARMS = {n: UPCYCLE_ARMS[n] for n in chosen if n in UPCYCLE_ARMS}
    if args.quick:
        SEEDS, SWITCH_STEPS, UPCYCLE_STEPS, MOEFY_K, FINETUNE_K = (0,), 5, 5, (2, 8), (2,)
        MOEFY["router_steps"] = 20
        LONGER.update(dict.fromkeys(LONGER, 5))
        MOEFY_FINETUNE["finetune_steps"] = 5
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    task = data.task("text", block_size=128)
    one = task.example_inputs(1, split="test")
    result: dict[str, Any] = {
        "model": "zoo gpt (4 layers, n_embd 128, FFN 512, byte tokens)",
        "task": "pydoc text, windows of 128 bytes; bits per byte and perplexity on test",
        "seeds": list(SEEDS),
        "experts": EXPERTS,
    }
    seconds: dict[str, float] = {}
    for part, run in PARTS.items():
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
        for part in ("switch", "upcycle", "moefy"):  # some arms re-run: keep the others
            if args.arms and part in old and part in result:
                arms = {**old[part]["arms"], **result[part]["arms"]}
                result[part] = {**old[part], **result[part], "arms": arms}
        result = {**old, **result}
    for arm in result.get("switch", {}).get("arms", {}).values():
        if "load_cv" in arm and "routing_split" not in arm:
            arm["routing_split"] = "val"  # measured by the run before test-split routing
    for part in ("switch", "upcycle"):  # runs that named layers through MoEModel's child
        for arm in result.get(part, {}).get("arms", {}).values():
            for key in [k for k in arm if k.endswith("_by_layer")]:
                arm[key] = {n.removeprefix("model."): v for n, v in arm[key].items()}
    if "upcycle" in result and HEADLINE_ARM in result["upcycle"]["arms"]:
        result.update(load_cv_summary(result))
    result["seconds"] = seconds
    path = write_result("dynamic_moe", result)
    print(f"wrote {path}")


def _range(s: dict[str, Any], fmt: str = ".3f") -> str:
    if s["min"] == s["max"]:  # one seed
        return f"{s['median']:{fmt}}"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _cell(arm: dict[str, Any], key: str, fmt: str = ".2f", scale: float = 1.0) -> str:
    if key not in arm:
        return ""
    v = arm[key]
    if scale != 1.0:
        v = {k: x * scale for k, x in v.items() if k != "by_seed"}
    return _range(v, fmt)


def _seeds(arm: dict[str, Any]) -> int:
    return len(arm["test_bpb"].get("by_seed", [None]))


def _moefy_lines(d: dict[str, Any]) -> list[str]:
    dense, mo = d["dense"], d["moefy"]["arms"]
    ft = d["moefy"].get("finetune", {})
    lines = [
        "## Mixture of experts on the gpt (`bench/dynamic_moe.py`)",
        "",
        f"MoEfication of the trained zoo gpt: each FFN split into {d['experts']} experts by "
        "co-activation, a Linear router per layer; active FFN MACs per token and layer (router "
        "+ k experts) against test bits per byte, median (min-max) over the seeds. "
        f"`finetuned`: the experts then distilled from the dense gpt for "
        f"{ft.get('finetune_steps', '?')} steps of {ft.get('batch_size', '?')} windows "
        "(routers fixed).",
        "",
        "| model | seeds | active FFN MACs/token/layer | test bits/byte | test perplexity "
        "| router recall |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dense | | {dense['ffn_macs_per_token_per_layer']:,} | {dense['test_bpb']:.3f} "
        f"| {dense['test_ppl']:.3f} | |",
    ]
    for name, arm in mo.items():
        label = f"MoEfied, top-{arm['top_k']}"
        if name.endswith("_finetuned"):
            label += ", finetuned"
        if name.endswith("_activation_target"):
            label += ", router target: activation"
        lines.append(
            f"| {label} | {_seeds(arm)} | {arm['active_ffn_macs_per_token']:,} "
            f"| {_range(arm['test_bpb'])} | {_range(arm['test_ppl'])} "
            f"| {_range(arm['router_recall'], '.2f')} |"
        )
    return lines


def _routing_table(arms: dict[str, Any], steps: int) -> list[str]:
    lines = [
        "| arm | balance | steps | seeds | params | FFN MACs/token/layer | test bits/byte "
        "| routing split | load CV | load CV after capacity | dropped | load entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, arm in arms.items():
        dropped = _cell(arm, "dropped_fraction", ".1f", 100.0)
        lines.append(
            f"| {name} | {arm.get('balance', '')} | {arm.get('steps', steps)} | {_seeds(arm)} "
            f"| {arm['params']:,} | {arm['active_ffn_macs_per_token_per_layer']:,} "
            f"| {_range(arm['test_bpb'])} | {arm.get('routing_split', '')} "
            f"| {_cell(arm, 'load_cv')} "
            f"| {_cell(arm, 'load_cv_kept')} | {dropped + '%' if dropped else ''} "
            f"| {_cell(arm, 'load_entropy')} |"
        )
    return lines


def _per_layer(arms: dict[str, Any]) -> list[str]:
    rows = [(n, a) for n, a in arms.items() if "load_cv_by_layer" in a]
    if not rows:
        return []
    layers = list(rows[0][1]["load_cv_by_layer"])
    lines = [
        "",
        "Load CV per layer before capacity (median over the seeds):",
        "",
        "| arm | " + " | ".join(layers) + " |",
        "|---|" + "---:|" * len(layers),
    ]
    for name, arm in rows:
        cells = [f"{arm['load_cv_by_layer'][n]['median']:.2f}" for n in layers]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/dynamic_moe.json)."""
    sw = d["switch"]
    lines = _moefy_lines(d)
    lines += [
        "",
        f"Switch layers from scratch ({sw['steps']} steps of {sw['batch_windows']} windows: an "
        f"under-trained comparison; E = {d['experts']}, top-1, capacity "
        f"{sw['capacity_factor']}) against the dense gpt trained the same way, at equal active "
        "parameters (experts of 512 units) and equal FFN parameters (experts of 64 units: 8 x "
        "64 = the dense 512). Load CV: the largest per-layer coefficient of variation of the "
        "experts' assignments on the routing split (target < 0.2), before and after capacity; "
        "dropped assignments; load entropy (mean over layers; ln 8 = 2.08 is even).",
        "",
        *_routing_table(sw["arms"], sw["steps"]),
        *_per_layer(sw["arms"]),
    ]
    dense = {
        arm.get("steps", sw["steps"]): share
        for arm in sw["arms"].values()
        if (share := arm.get("mlp_input_mean_share_by_layer"))
    }
    if dense and "upcycle" in d:
        known = d["upcycle"]["mlp_input_mean_share_by_layer"]

        def span(values: list[float]) -> str:
            return f"{min(values):.2f}-{max(values):.2f}"

        after = "; ".join(
            f"dense after {steps} steps, medians over seeds "
            f"{span([v['median'] for v in share.values()])} (all seeds "
            f"{span([v['min'] for v in share.values()] + [v['max'] for v in share.values()])})"
            for steps, share in dense.items()
        )
        lines += [
            "",
            "Share of the FFN inputs' second moment that is their mean over tokens (1: every "
            "token brings the same vector), per layer: untrained gpt "
            f"{span(list(known['untrained'].values()))}; {after}; "
            f"trained zoo gpt {span(list(known['trained'].values()))}.",
        ]
    if "upcycle" in d:
        up = d["upcycle"]
        lines += [
            "",
            f"Upcycled from the trained gpt (every expert a copy of its FFN, top-2 with "
            f"renormalised gates unless named top1, capacity {up['capacity_factor']}), "
            f"fine-tuned {up['steps']} steps of {up['batch_windows']} windows at lr "
            f"{up['train']['lr']}; `dense_finetuned` is the dense gpt fine-tuned alike. The "
            f"issue's `load_cv` ({d.get('load_cv_arm')}): {d.get('load_cv', float('nan')):.3f} "
            f"(target < {d.get('load_cv_target')}; met: {d.get('load_cv_met')}).",
            "",
            *_routing_table(up["arms"], up["steps"]),
            *_per_layer(up["arms"]),
        ]
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
