"""The prune -> distill -> static int8 recipe end to end on the MNIST-1D CNN (issue 17, item 6).

Run: .venv/bin/python bench/mnist1d_recipe.py   ->  bench/results/mnist1d_recipe.json

Runs `examples/recipes/mnist1d_cnn.yaml` through `netchisel.pipeline.runner.run_recipe` once
per seed of `SEEDS` (the recipe's `seed:` replaced, nothing else): the trained zoo
`mnist1d_cnn` (`zoo.pretrained`, the same fp32 model for every seed), its Conv1d channels
pruned by L1 until the MACs are at most half (`target_macs_ratio: 0.5`), recovered by `distill`
from the original (1,000 steps of Adam, lr 1e-2 cosine, batches of 100, T 4, alpha 0.5), then
`quantize.static_int8` (256 calibration sequences). The seed sets the distillation's data
order and the calibration sample; pruning is deterministic.

For every stage the JSON keeps, per seed, what the run's report says: val accuracy (the task's
metric, 500 sequences), test accuracy (the `evaluate` step after it, 1,000 sequences), params,
MACs, bytes on disk (the saved artifact), the report's latency (batch 100, one after the other)
and the stage's seconds; the summary gives the median and min-max over the seeds (MACs are of
one batch of the profile's 100). The same recipe is also run stopped before quantizing, which
gives the pruned, distilled fp32 model (checked to score the same as the full run's distill
stage). The original, that fp32 model and each seed's final int8 artifact (loaded back) are
timed side by side with the alternating A/B harness (`compare_latency`, one thread, eager) at
batch 1 and 100; for seed 0 also with the final artifact compiled (`compile` backend:
torch.compile with inductor freezing, where the int8 kernels are fused), against the original
eager and compiled.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import ab_entry, spread, write_result  # bench/ is on sys.path when a script in it runs

from netchisel.artifact.store import load
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.pipeline.recipe import load_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.zoo import data, train

RECIPE = Path(__file__).parents[1] / "examples" / "recipes" / "mnist1d_cnn.yaml"
SEEDS = (0, 1, 2)
BATCHES = (1, 100)


def stage_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model-changing step (and the original), with the test accuracy of the
    `evaluate` step that follows it."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        if step["name"] == "evaluate":
            rows[-1]["test"] = step["records"]["test_accuracy"]
            continue
        latency = step["latency"]
        rows.append(
            {
                "stage": step["name"],
                "seconds": step["seconds"],
                "val": step["metrics"]["accuracy"],
                "test": None,
                "params": step["profile"]["params"],
                "macs": step["profile"]["macs"],
                "bytes_on_disk": step["profile"]["bytes_on_disk"],
                "latency_ms": {
                    "median": latency["median_ms"],
                    "p10": latency["p10_ms"],
                    "p90": latency["p90_ms"],
                },
                "records": {
                    k: v
                    for k, v in step["records"].items()
                    if k not in ("per_layer", "losses", "history")
                },
            }
        )
    return rows


def side_by_side(
    models: dict[str, torch.nn.Module], pairs: list[tuple[str, str, str, str]]
) -> dict[str, Any]:
    """A/B latency, one thread, alternating: each (a, backend a, b, backend b) at each batch."""
    task = data.task("mnist1d")
    out: dict[str, Any] = {}
    for batch in BATCHES:
        inputs = task.example_inputs(batch, split="test")
        runners: dict[tuple[str, str], Any] = {}
        for a, ba, b, bb in pairs:
            for name, backend in ((a, ba), (b, bb)):
                if (name, backend) not in runners:
                    runners[name, backend] = make_runner(models[name], inputs, backend, threads=1)
            cmp = compare_latency(
                runners[a, ba],
                runners[b, bb],
                batch_size=batch,
                threads=1,
                rounds=30,
                calls_per_round=50 if batch == 1 else 10,
                labels=(a, b),
            )
            key = f"{a}[{ba}]/{b}[{bb}]@{batch}"
            out[key] = ab_entry(cmp)
            print(f"{key}: {cmp.speedup:.2f}", flush=True)
    return out


EAGER_PAIRS = [
    ("original", "eager", "final", "eager"),
    ("original", "eager", "pruned_distilled_fp32", "eager"),
    ("pruned_distilled_fp32", "eager", "final", "eager"),
]
COMPILED_PAIRS = [  # seed 0 only: compiling takes a while on a shared machine
    ("original", "eager", "final", "compile"),
    ("original", "compile", "final", "compile"),
]


def main() -> None:
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    base = load_recipe(RECIPE)
    original = train.pretrained("mnist1d_cnn").eval()
    runs: list[dict[str, Any]] = []
    for seed in SEEDS:
        recipe = dataclasses.replace(base, seed=seed)
        # The same recipe stopped before quantizing: the pruned, distilled fp32 model (the
        # same seed gives the same model; its test accuracy is checked equal below).
        fp32_recipe = dataclasses.replace(recipe, stages=recipe.stages[:-2])
        with tempfile.TemporaryDirectory() as tmp:
            result = run_recipe(recipe, output=Path(tmp) / "run", quiet=True)
            fp32_result = run_recipe(fp32_recipe, output=Path(tmp) / "fp32", quiet=True)
            final = load(result.directory / "model")
            fp32 = load(fp32_result.directory / "model")
            artifact_bytes = result.report["artifact"]["bytes"]
            rows = stage_rows(result.report["steps"])
            fp32_rows = stage_rows(fp32_result.report["steps"])
        assert fp32_rows[-1]["test"] == rows[-2]["test"], (fp32_rows[-1]["test"], rows[-2]["test"])
        models = {"original": original, "final": final, "pruned_distilled_fp32": fp32}
        pairs = EAGER_PAIRS + (COMPILED_PAIRS if seed == SEEDS[0] else [])
        latency = side_by_side(models, pairs)
        for row in rows:
            print(seed, row["stage"], row["test"], row["val"], row["macs"], row["bytes_on_disk"])
        runs.append(
            {
                "seed": seed,
                "stages": rows,
                "final_artifact_bytes": artifact_bytes,
                "latency_side_by_side": latency,
            }
        )
    names = [r["stage"] for r in runs[0]["stages"]]
    summary = []
    for i, name in enumerate(names):
        per = [run["stages"][i] for run in runs]
        summary.append(
            {
                "stage": name,
                "test": spread([p["test"] for p in per], by_seed=True),
                "val": spread([p["val"] for p in per], by_seed=True),
                "macs": spread([p["macs"] for p in per], by_seed=True),
                "params": spread([p["params"] for p in per], by_seed=True),
                "bytes_on_disk": spread([p["bytes_on_disk"] for p in per], by_seed=True),
                "report_latency_ms_median": spread(
                    [p["latency_ms"]["median"] for p in per], by_seed=True
                ),
            }
        )
    speedups = {
        key: spread([run["latency_side_by_side"][key]["speedup"] for run in runs], by_seed=True)
        for key in runs[0]["latency_side_by_side"]
        if all(key in run["latency_side_by_side"] for run in runs)
    }
    compiled = {
        key: value for key, value in runs[0]["latency_side_by_side"].items() if "compile" in key
    }
    result_data = {
        "recipe": "examples/recipes/mnist1d_cnn.yaml",
        "model": "zoo mnist1d_cnn (the paper's CNN), trained reference",
        "task": "mnist1d: val (the report's metric, 500) and test (1,000) sequences",
        "seeds": list(SEEDS),
        "profile": base.profile.to_dict(),
        "summary": summary,
        "speedup_side_by_side": speedups,
        "compiled_side_by_side_seed0": compiled,
        "macs_note": "the report's MACs are of one batch of the profile's batch_size (100)",
        "runs": runs,
        "threads": 1,
    }
    path = write_result("mnist1d_recipe", result_data)
    print(render({"benchmark": "mnist1d_recipe", **result_data}))
    print(f"wrote {path}")


def _cell(s: dict[str, Any], fmt: str = ".1f") -> str:
    if s["min"] == s["max"]:
        return f"{s['median']:{fmt}}"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/mnist1d_recipe.json)."""
    summary, sp = d["summary"], d["speedup_side_by_side"]
    lines = [
        "## One recipe: prune -> distill -> static int8 on the MNIST-1D CNN "
        "(`bench/mnist1d_recipe.py`)",
        "",
        f"`{d['recipe']}` through `run_recipe`, seeds {d['seeds']} (the recipe's `seed:`). "
        "Cells: median (min-max) over the seeds; one value where all seeds agree. Accuracy % "
        "on test (1,000) and val (500); MACs of one batch of 100 (the profile's batch); bytes "
        "of the saved artifact.",
        "",
        "| stage | test % | val % | params | MACs | bytes on disk |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {r['stage']} | {_cell(r['test'])} | {_cell(r['val'])} | "
            f"{_cell(r['params'], ',.0f')} | {_cell(r['macs'], ',.0f')} | "
            f"{_cell(r['bytes_on_disk'], ',.0f')} |"
        )
    first, last = summary[0], summary[-1]
    fewer_bytes = first["bytes_on_disk"]["median"] / last["bytes_on_disk"]["median"]

    def ratio(key: str) -> str:
        return f"{_cell(sp[key], '.2f')}x"

    e = "[eager]"
    lines += [
        "",
        f"Original -> final: {fewer_bytes:.1f}x fewer bytes,"
        f" {first['macs']['median'] / last['macs']['median']:.2f}x fewer MACs, test"
        f" drop {first['test']['median'] - last['test']['median']:+.1f} points (median)."
        " Latency side by side (alternating A/B, one thread; A / B ratio of medians, above 1"
        " = B faster; median (min-max) over the seeds' models):",
        "",
        "| A / B | batch 1 | batch 100 |",
        "|---|---:|---:|",
    ]
    for a, b in (
        ("original", "final"),
        ("original", "pruned_distilled_fp32"),
        ("pruned_distilled_fp32", "final"),
    ):
        lines.append(
            f"| {a} / {b} (eager) | {ratio(f'{a}{e}/{b}{e}@1')} | {ratio(f'{a}{e}/{b}{e}@100')} |"
        )
    comp = d.get("compiled_side_by_side_seed0", {})
    for a, b in (("original[eager]", "final[compile]"), ("original[compile]", "final[compile]")):
        if f"{a}/{b}@1" in comp:
            lines.append(
                f"| {a} / {b} (seed 0 only) | {comp[f'{a}/{b}@1']['speedup']:.2f}x "
                f"| {comp[f'{a}/{b}@100']['speedup']:.2f}x |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
