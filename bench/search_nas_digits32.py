"""Benchmark 2 of search: multi-objective NAS on digits32, accuracy vs measured latency.

Run: .venv/bin/python bench/search_nas_digits32.py [--trials 32]
  ->  bench/results/search_nas_digits32.json and search_nas_digits32.svg

The search is `examples/search/nas_digits32.yaml` as shipped (only the output directory and,
when given, the trial count are overridden): the macro space under the zoo ResNet's fixed
widths, every candidate trained from scratch for the same short budget (the spec's finetune
stage), objectives val accuracy (maximise) and latency at batch 1 on one thread, eager
(minimise), strategy TPE. TPE, not NSGA-II: 32 trials are fewer than one NSGA-II generation
at Optuna's default population (50), and MOTPE (Ozaki et al., "Multiobjective tree-structured
Parzen estimator for computationally expensive optimization problems", GECCO 2020) models the
non-dominated trials after 10 random ones, which is what a budget this small needs.

The two hand-designed zoo models are evaluated in the same run, the same way: built by
`macro_net` at their points (the zoo ResNet-20 is a point of the searched space; the zoo
MobileNetV2 is a point of the 5-stage macro space under `MOBILENET_KWARGS`, same layers and
parameter count as `zoo.models.mobilenet`, see tests/search/nas/test_macro.py), trained and
measured by `evaluate_candidate` with the spec's recipe, before the search starts.

The latencies the search saw are single measurements taken minutes apart on a shared machine
(one model can be timed while another job peaks), so after the search every saved model, the
trials' and the zoo models', is timed again in one round-robin loop: `RR_ROUNDS` rounds, each
timing a block of `RR_CALLS` calls of every model in a rotating order (one thread, batch 1,
eager); the median over the rounds' calls is the model's re-measured latency, which the table
and the plot show. A front point dominates a zoo model when its val accuracy is >= the zoo
model's and it is faster both in the round-robin and in an alternating A/B timing of the two
(`compare_latency`); the A/B speed-up is the "by how much". Whether it was also faster in the
search's own single measurements is recorded beside. Test accuracy of the front is
reported beside, never used to select.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from common import RESULTS, load_result, saturated_note, write_result  # bench/ on sys.path
from optuna.trial import TrialState

import netchisel as nc
from netchisel.measure.latency import compare_latency, make_runner, time_calls
from netchisel.search.evaluate import evaluate_candidate
from netchisel.search.nas import MOBILENET_KWARGS
from netchisel.search.report import best_trials
from netchisel.search.spec import load_search_spec
from netchisel.search.study import run_search

SPEC = Path(__file__).parent.parent / "examples" / "search" / "nas_digits32.yaml"
ROUNDS, CALLS = 20, 10  # A/B re-check: 20 alternating blocks of 10 calls each
RR_ROUNDS, RR_CALLS = 20, 5  # round-robin re-measurement of every model


def resnet20_point() -> dict[str, Any]:
    """zoo resnet (depth 20, width 16): 3 conv blocks of kernel 3 per stage, width 1."""
    point: dict[str, Any] = {"width_mult": 1.0}
    for i in (1, 2, 3):
        point |= {f"s{i}_blocks": 3, f"s{i}_kernel": 3}
        point |= {f"s{i}_op{j}": "conv" for j in (1, 2, 3)}
    return point


def mobilenet_point() -> dict[str, Any]:
    """zoo mobilenet (MobileNetV2 1.0): its fixed widths and its inverted-residual stages."""
    point: dict[str, Any] = {**MOBILENET_KWARGS, "width_mult": 1.0}
    for i, (blocks, expand) in enumerate(zip((1, 2, 3, 3, 2), (1, 6, 6, 6, 6), strict=True), 1):
        point |= {f"s{i}_blocks": blocks, f"s{i}_kernel": 3}
        for j in range(1, blocks + 1):
            point |= {f"s{i}_op{j}": "separable", f"s{i}_expand{j}": expand}
    return point


def describe(candidate: dict[str, Any]) -> str:
    """A short architecture string: width, then per stage kernel and block ops."""
    stages = []
    i = 1
    while f"s{i}_blocks" in candidate:
        ops = []
        for j in range(1, candidate[f"s{i}_blocks"] + 1):
            op = candidate[f"s{i}_op{j}"]
            extra = candidate.get(f"s{i}_expand{j}") or candidate.get(f"s{i}_groups{j}")
            ops.append({"separable": "sep", "grouped": "grp"}.get(op, op) + (str(extra or "")))
        stages.append(f"k{candidate[f's{i}_kernel']}:" + ",".join(ops))
        i += 1
    return f"w{candidate['width_mult']:g} " + " | ".join(stages)


def row(
    number: int | str, metrics: dict[str, float], test: dict[str, float], cand: Any
) -> dict[str, Any]:
    return {
        "trial": number,
        "val_accuracy": metrics["accuracy"],
        "test_accuracy": test["accuracy"],
        "latency_ms": metrics["latency_ms"],
        "macs": int(metrics["macs"]),
        "params": int(metrics["params"]),
        "architecture": describe(cand),
        "candidate": cand,
    }


def ab_speedup(zoo: torch.nn.Module, point: torch.nn.Module, inputs: Any) -> dict[str, float]:
    """Alternating A/B latency, zoo model (A) vs front point (B): speedup = A / B medians."""
    cmp = compare_latency(
        make_runner(zoo, inputs, "eager", threads=1),
        make_runner(point, inputs, "eager", threads=1),
        batch_size=1,
        threads=1,
        rounds=ROUNDS,
        calls_per_round=CALLS,
    )
    return {
        "zoo_median_ms": cmp.a.median_ms,
        "point_median_ms": cmp.b.median_ms,
        "zoo_p10_p90_ms": [cmp.a.p10_ms, cmp.a.p90_ms],
        "point_p10_p90_ms": [cmp.b.p10_ms, cmp.b.p90_ms],
        "speedup": cmp.speedup,
    }


def round_robin(models: dict[Any, torch.nn.Module], inputs: Any) -> dict[Any, float]:
    """Median ms per model, every model timed in each round (rotating order), one thread."""
    runners = {key: make_runner(m, inputs, "eager", threads=1) for key, m in models.items()}
    keys = list(runners)
    samples: dict[Any, list[float]] = {key: [] for key in keys}
    with torch.inference_mode():
        for key in keys:
            time_calls(runners[key], RR_CALLS)  # warm-up
        for r in range(RR_ROUNDS):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                samples[key] += time_calls(runners[key], RR_CALLS)
    return {key: statistics.median(v) for key, v in samples.items()}


def plot(
    trials: list[dict[str, Any]],
    front: list[dict[str, Any]],
    zoo: dict[str, dict[str, Any]],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 90.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = [t for t in trials if t["val_accuracy"] >= floor]
    ax.scatter(
        [t["remeasured_ms"] for t in shown],
        [t["val_accuracy"] for t in shown],
        c="0.65",
        s=18,
        label=f"trial ({len(trials) - len(shown)} below {floor:g}% not shown)",
    )
    ax.plot(
        [t["remeasured_ms"] for t in front],
        [t["val_accuracy"] for t in front],
        "o-",
        c="C3",
        label="Pareto front found (val accuracy, latency in the search)",
    )
    for (name, z), marker in zip(zoo.items(), ("s", "D"), strict=True):
        ax.scatter(
            [z["remeasured_ms"]], [z["val_accuracy"]], marker=marker, s=60, label=f"zoo {name}"
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("latency ms (batch 1, 1 thread, eager; all models re-timed round-robin)")
    ax.set_ylabel("val accuracy %")
    ax.set_title("NAS on digits32: macro space, TPE, same training budget")
    ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, format=path.suffix[1:])
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="default: the spec's")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread to train too: more only adds contention on 2 cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    spec = load_search_spec(SPEC)
    work = Path(tempfile.mkdtemp(prefix="search_nas_digits32_"))

    zoo: dict[str, dict[str, Any]] = {}
    for name, point in (("resnet", resnet20_point()), ("mobilenet", mobilenet_point())):
        tick = time.perf_counter()
        evaluation = evaluate_candidate(spec, point, work / "zoo" / name)
        zoo[name] = row(name, evaluation.metrics, evaluation.test_metrics, point)
        zoo[name]["seconds"] = time.perf_counter() - tick
        zoo[name]["artifact"] = evaluation.artifact
        print(
            f"zoo {name}: {zoo[name]['val_accuracy']:.2f}% val, {zoo[name]['latency_ms']:.2f} ms",
            flush=True,
        )

    tick = time.perf_counter()
    result = run_search(spec, output=work / "search", trials=args.trials)
    search_seconds = time.perf_counter() - tick
    study = result.study
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front_trials = sorted(
        best_trials(complete, spec.objectives.directions()), key=lambda t: t.values[1]
    )

    def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        r = row(
            t.number,
            t.user_attrs["metrics"],
            t.user_attrs["test_metrics"],
            t.user_attrs["candidate"],
        )
        r["seconds"] = t.duration.total_seconds() if t.duration else None
        return r

    trials = [trial_row(t) for t in complete]
    front = [trial_row(t) for t in front_trials]
    artifacts: dict[Any, Path] = {
        t.number: work / "search" / t.user_attrs["artifact"] for t in complete
    }
    artifacts |= {name: z.pop("artifact") for name, z in zoo.items()}
    inputs = (torch.zeros(1, 1, 32, 32),)
    loaded = {key: nc.load(path).eval() for key, path in artifacts.items()}
    remeasured = round_robin(loaded, inputs)
    for r in [*trials, *front, *zoo.values()]:
        r["remeasured_ms"] = remeasured[r["trial"]]

    dominance: dict[str, Any] = {}
    for name, z in zoo.items():
        checks = []
        for p in front:
            if p["val_accuracy"] < z["val_accuracy"]:
                continue
            ab = ab_speedup(loaded[name], loaded[p["trial"]], inputs)
            checks.append(
                {
                    "trial": p["trial"],
                    "val_gain_points": p["val_accuracy"] - z["val_accuracy"],
                    "test_gain_points": p["test_accuracy"] - z["test_accuracy"],
                    "faster_in_search": p["latency_ms"] < z["latency_ms"],
                    "faster_round_robin": p["remeasured_ms"] < z["remeasured_ms"],
                    "ab": ab,
                    "faster_ab": ab["speedup"] > 1.0,
                }
            )
        confirmed = [c for c in checks if c["faster_round_robin"] and c["faster_ab"]]
        dominance[name] = {
            "dominated": bool(confirmed),
            "dominating_points": len(confirmed),
            "fastest": max(confirmed, key=lambda c: c["ab"]["speedup"], default=None),
            "most_accurate": max(confirmed, key=lambda c: c["val_gain_points"], default=None),
            "checks": checks,
        }
        verdict = f"{len(confirmed)} front points dominate it" if confirmed else "not dominated"
        print(f"zoo {name}: {verdict}", flush=True)

    figure = RESULTS / "search_nas_digits32.svg"
    plot(trials, front, zoo, figure)
    spec_text = SPEC.read_text()
    path = write_result(
        "search_nas_digits32",
        {
            "spec": "examples/search/nas_digits32.yaml",
            "spec_text": spec_text,
            "trials": len(trials),
            "strategy": spec.strategy,
            "threads": 1,
            "ab": {"rounds": ROUNDS, "calls_per_round": CALLS, "batch": 1, "backend": "eager"},
            "round_robin": {"rounds": RR_ROUNDS, "calls_per_round": RR_CALLS},
            "zoo": zoo,
            "front": front,
            "dominance": dominance,
            "front_test_accuracy_median": statistics.median(p["test_accuracy"] for p in front),
            "all_trials": trials,
            "search_seconds": search_seconds,
            "wall_seconds": time.perf_counter() - started,
            "plot": "bench/results/search_nas_digits32.svg",
        },
    )
    print(f"wrote {path} and {figure} in {time.perf_counter() - started:.0f} s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/search_nas_digits32.json)."""
    spec = yaml.safe_load(d["spec_text"])
    budget = spec["recipe"]["stages"][0]["finetune"]
    prof = spec["recipe"]["profile"]
    ab, rr = d["ab"], d["round_robin"]
    lines = [
        "## Search: multi-objective NAS on digits32 (`bench/search_nas_digits32.py`)",
        "",
        f"`{d['spec']}` as shipped: the macro space under the zoo ResNet's widths, every"
        f" candidate trained from scratch for {budget['epochs']:g} epochs (AdamW lr"
        f" {budget['lr']:g}), objectives val accuracy and latency (batch {prof['batch_size']},"
        f" {prof['threads']} thread, {prof['backend']}, median of {prof['repeats']}), strategy"
        f" {d['strategy']}, {d['trials']} trials. The zoo ResNet-20 and MobileNetV2, built at"
        " their macro-space points, are trained and measured the same way in the same run. The"
        " latencies the search saw are single timings minutes apart on a shared machine, so every"
        f" saved model is timed again round-robin ({rr['rounds']} rounds of"
        f" {rr['calls_per_round']} calls each, rotating order). A front point dominates a zoo"
        " model when its val accuracy is >= and it is faster both round-robin and in an"
        f" alternating A/B timing of the two ({ab['rounds']} x {ab['calls_per_round']} calls);"
        " the speed-up quoted is the A/B one. Test accuracy never selects. Search"
        f" {d['search_seconds'] / 60:.1f} min, whole benchmark {d['wall_seconds'] / 60:.1f} min"
        " on a shared 2-core machine. Plot: `bench/results/search_nas_digits32.svg`.",
        "",
        "| model | val % | test % | ms in search | ms round-robin | MACs | params | architecture |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [(f"zoo {name}", z) for name, z in d["zoo"].items()]
    rows += [(f"front: trial {p['trial']}", p) for p in d["front"]]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['val_accuracy']:.2f} | {r['test_accuracy']:.2f} |"
            f" {r['latency_ms']:.2f} | {r['remeasured_ms']:.2f} | {r['macs']:,} | {r['params']:,} |"
            f" {r['architecture'].replace('|', chr(92) + '|')} |"
        )
    lines += saturated_note(max(z["test_accuracy"] for z in d["zoo"].values()))
    lines.append("")
    for name, dom in d["dominance"].items():
        if not dom["dominated"]:
            lines.append(f"- zoo {name}: **not dominated** by the front found.")
            continue
        fast, acc = dom["fastest"], dom["most_accurate"]
        lines.append(
            f"- zoo {name}: dominated by {dom['dominating_points']} front points. Fastest: trial"
            f" {fast['trial']}, {fast['ab']['speedup']:.2f}x faster A/B"
            f" ({fast['ab']['zoo_median_ms']:.2f} vs {fast['ab']['point_median_ms']:.2f} ms),"
            f" val {fast['val_gain_points']:+.2f} points (test {fast['test_gain_points']:+.2f})."
            f" Most accurate: trial {acc['trial']}, val {acc['val_gain_points']:+.2f} points"
            f" (test {acc['test_gain_points']:+.2f}), {acc['ab']['speedup']:.2f}x faster."
        )
    met = all(dom["dominated"] for dom in d["dominance"].values())
    zoo = load_result("zoo_reference")
    reference = zoo["models"]["mobilenet"] if zoo else None
    trained = (
        f" ({reference['val']['accuracy']:.2f}% after its {reference['settings']['epochs']}-epoch"
        " reference recipe)"
        if reference
        else ""
    )
    lines += [
        "",
        f"Median test accuracy of the front: {d['front_test_accuracy_median']:.2f}%. Target (the"
        " front dominates both zoo models at >= 1 point each): "
        + ("met." if met else "**not met**.")
        + " The budget is short for the 17-block MobileNetV2: it reaches"
        f" {d['zoo']['mobilenet']['val_accuracy']:.2f}% val here{trained}, so its domination"
        " says as much about the budget as about the search. One image of the 270 is"
        f" {100 / 270:.2f} points, within training noise.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
