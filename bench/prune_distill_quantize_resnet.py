"""Benchmark 5 (issue 5): one recipe prune -> distill -> static int8 on the zoo ResNet-20.

Run: .venv/bin/python bench/prune_distill_quantize_resnet.py
  ->  bench/results/prune_distill_quantize_resnet.json
Run: .venv/bin/python bench/prune_distill_quantize_resnet.py --model cnn
  ->  bench/results/prune_distill_quantize_cnn.json  (the recipe `netchisel demo` runs)

Runs `src/netchisel/recipes/demo_resnet.yaml` (`netchisel demo --model resnet`; with
`--model cnn`, `demo.yaml`, the same stages on the zoo cnn) as it is, through
`netchisel.pipeline.runner.run_recipe` (the reference resnet is trained first if it is not
cached): half the channels removed by `prune.structured` (l1), recovered by `distill` from the
original (T 4, alpha 0.5, 6 epochs, AdamW lr 0.01), quantized by `quantize.static_int8`
(256 calibration images). For every stage the JSON keeps what the report says: val accuracy
(the task's metric), test accuracy (the `evaluate` step after it), params, MACs, FLOPs, bytes
on disk (the saved artifact) and in memory, latency (eager, one thread, batch 64: median and
p10/p90 of 30 timed runs, one stage after the other), the energy estimate and the stage's
seconds. The report's latencies are taken minutes apart on a shared machine, so the original
and the final artifact (loaded back) are also timed side by side with the alternating A/B
harness (`compare_latency`) at batch 64 and 1.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import saturated_note, write_result  # bench/ is on sys.path when a script in it runs

from netchisel.artifact.store import load
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.pipeline.recipe import load_recipe
from netchisel.pipeline.runner import run_recipe
from netchisel.zoo import data, train

RECIPES = Path(__file__).parents[1] / "src" / "netchisel" / "recipes"
DEMOS = {  # --model -> the recipe `netchisel demo --model` runs, and what the JSON calls it
    "resnet": ("demo_resnet.yaml", "zoo resnet (ResNet-20, width 16), trained reference"),
    "cnn": ("demo.yaml", "zoo cnn (three conv-bn-relu-pool stages + Linear), trained reference"),
}
PROFILE_KEYS = ("params", "macs", "flops", "bytes_on_disk", "bytes_in_memory", "energy_uj")


def stage_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model-changing step (and the original), with the test accuracy of the
    `evaluate` step that follows it (None where the recipe evaluates none: after pruning)."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        if step["name"] == "evaluate":
            rows[-1]["accuracy"]["test"] = step["records"]["test_accuracy"]
            continue
        latency = step["latency"]
        rows.append(
            {
                "stage": step["name"],
                "config": step["config"],
                "seconds": step["seconds"],
                "accuracy": {"val": step["metrics"]["accuracy"], "test": None},
                **{key: step["profile"][key] for key in PROFILE_KEYS},
                "latency_ms": {
                    "median": latency["median_ms"],
                    "p10": latency["p10_ms"],
                    "p90": latency["p90_ms"],
                },
                "records": {k: v for k, v in step["records"].items() if k != "per_layer"},
            }
        )
    return rows


def side_by_side(zoo_model: str, final: torch.nn.Module) -> dict[str, Any]:
    """Original vs the final artifact, alternating A/B, one thread, eager."""
    task = data.task("digits32")
    original = train.pretrained(zoo_model).eval()
    out: dict[str, Any] = {}
    for batch in (64, 1):
        inputs = task.example_inputs(batch, split="test")
        cmp = compare_latency(
            make_runner(original, inputs, "eager", threads=1),
            make_runner(final, inputs, "eager", threads=1),
            batch_size=batch,
            threads=1,
            rounds=20,
            calls_per_round=20 if batch == 1 else 3,
            labels=("original", "final"),
        )
        out[f"original/final@{batch}"] = {
            "speedup": cmp.speedup,
            "a_median_ms": cmp.a.median_ms,
            "b_median_ms": cmp.b.median_ms,
        }
        print(f"batch {batch}: original/final = {cmp.speedup:.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEMOS), default="resnet")
    zoo_model = parser.parse_args().model
    recipe_file, description = DEMOS[zoo_model]
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only add contention
    recipe = load_recipe(RECIPES / recipe_file)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_recipe(recipe, output=Path(tmp) / "run", quiet=True)
        final = load(result.directory / "model")
        artifact_bytes = result.report["artifact"]["bytes"]
    rows = stage_rows(result.report["steps"])
    for row in rows:
        print(row["stage"], row["accuracy"], row["bytes_on_disk"], row["latency_ms"], flush=True)
    result_data = {
        "recipe": f"src/netchisel/recipes/{recipe_file}",
        "model": description,
        "task": "digits32: val (the report's metric) and test splits, 270 images each",
        "profile": recipe.profile.to_dict(),
        "stages": rows,
        "final_artifact_bytes": artifact_bytes,
        "latency_side_by_side": side_by_side(zoo_model, final),
        "threads": 1,
    }
    path = write_result(f"prune_distill_quantize_{zoo_model}", result_data)
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of one run's result `d` (bench/results/
    prune_distill_quantize_resnet.json, or _cnn.json for `--model cnn`)."""
    stages, ab = d["stages"], d["latency_side_by_side"]
    p = d["profile"]

    def test_val(acc: dict[str, float | None]) -> str:
        test = "-" if acc["test"] is None else f"{acc['test']:.2f}"
        return f"{test} / {acc['val']:.2f}"

    cnn = d["recipe"].endswith("/demo.yaml")
    lines = [
        "## One recipe: prune -> distill -> static int8 on "
        + ("the zoo CNN, the demo" if cnn else "ResNet-20")
        + " (`bench/prune_distill_quantize_resnet.py"
        + (" --model cnn" if cnn else "")
        + "`)",
        "",
        f"`{d['recipe']}` run as it is (`run_recipe`) on the {d['model']} (digits32). Each row"
        " is the report's profile after that stage: accuracy % test / val (270 images each;"
        " the recipe evaluates test after distill and int8 only),"
        f" bytes of the saved artifact, latency at batch {p['batch_size']} ({p['backend']},"
        f" {p['threads']} thread, median of {p['repeats']} with p10-p90; stages timed one after"
        " the other on a shared machine), energy an estimate from per-operation energies.",
        "",
        "| stage | accuracy | params | MACs | FLOPs | bytes on disk | latency ms | energy µJ (est.)"
        " | stage s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in stages:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['stage']} | {test_val(r['accuracy'])} |"
            f" {r['params']:,} | {r['macs']:,} | {r['flops']:,} | {r['bytes_on_disk']:,} |"
            f" {lat['median']:.1f} ({lat['p10']:.1f}-{lat['p90']:.1f}) | {r['energy_uj']:.1f} |"
            f" {r['seconds']:.0f} |"
        )
    first, last = stages[0], stages[-1]
    if first["accuracy"]["test"] is not None:
        lines += saturated_note(first["accuracy"]["test"])
    lines += [
        "",
        f"Original -> final: {first['bytes_on_disk'] / last['bytes_on_disk']:.1f}x fewer bytes,"
        f" {first['macs'] / last['macs']:.2f}x fewer MACs; side by side (alternating A/B, one"
        f" thread, eager) the final artifact runs {ab['original/final@64']['speedup']:.2f}x"
        f" faster at batch 64 and {ab['original/final@1']['speedup']:.2f}x at batch 1.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
