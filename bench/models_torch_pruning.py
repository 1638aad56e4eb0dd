"""Structured channel pruning on real architectures (issue 20): Torch-Pruning used directly
against netchisel's `prune.structured` (granularity channels), model by model.

Run: .venv/bin/python bench/models_torch_pruning.py  ->  bench/results/models_torch_pruning.json

Models: the architectures of the test matrix (`tests/models/archs.py`: torchvision, timm and
Hugging Face transformers classes in tiny configurations, random weights, nothing downloaded).
Both arms remove 30% of the channels of every group they prune, by L1 magnitude:

- `torch_pruning`: `tp.pruner.MetaPruner(model, example_inputs, MagnitudeImportance(p=1),
  pruning_ratio=0.3, ignored_layers=[the output layer])`, then `step()`: the recipe of
  Torch-Pruning's README. The output layer is every Linear/Conv whose output width is the
  model output's last dimension (classes, vocabulary; for BERT and T5, which return hidden
  states, the layers writing the residual stream). Hugging Face models get `use_cache=False`
  set by hand first (without it the traced output is a cache object and tracing fails at once).
- `netchisel`: `netchisel.prune_(model, StructuredConfig(granularity="channels", ratio=0.3),
  task)` with the matrix's task (example inputs only), nothing set by hand.

An arm succeeds when it raises nothing, the pruned model runs the example inputs to the
original output shape, and it has fewer parameters. Recorded per model and arm: success, the
error's first line, parameters before and after, the output shape check, wall time (one
thread; an arm still running after TIMEOUT seconds is stopped and counted as a failure). Seeds
0-2 build the random weights; success and parameter counts are reported per seed, time as the
median (min-max). A case that timed out at seed 0 is not run again.

Anchors: Torch-Pruning (Fang et al., DepGraph, CVPR 2023) is the library both arms use for the
dependency graph. Target (issue 20): netchisel succeeds wherever Torch-Pruning succeeds, and
on more models.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import write_result
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIO = 0.3
TIMEOUT = 90
SEEDS = (0, 1, 2)


class _Timeout(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Timeout(f"still running after {TIMEOUT} s")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _output(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    from tests.models.archs import Arch

    with torch.no_grad():
        return Arch.output(model(*inputs))


def _torch_pruning(model: nn.Module, inputs: tuple[Tensor, ...], width: int) -> None:
    import torch_pruning as tp

    for m in model.modules():  # what a user must do by hand for Torch-Pruning
        config = getattr(m, "config", None)
        if hasattr(config, "use_cache"):
            config.use_cache = False
    ignored = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == width)
        or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width)
    ]
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=ignored,
    )
    pruner.step()


def _netchisel(model: nn.Module, arch: Any) -> None:
    import netchisel as nc
    from netchisel.prune import StructuredConfig
    from tests.models.test_matrix import task_of

    nc.prune_(model, StructuredConfig(granularity="channels", ratio=RATIO), task_of(arch))


def run_case(name: str, arm: str, seed: int) -> dict[str, Any]:
    """One (model, arm, seed): success, error, parameters, output shape, seconds."""
    from tests.models.archs import ARCHS

    arch = ARCHS[name]
    model = arch.build(seed)
    inputs = arch.inputs()
    reference = _output(model, inputs)
    before = _params(model)
    entry: dict[str, Any] = {"params_before": before}
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    try:
        if arm == "torch_pruning":
            _torch_pruning(model, inputs, reference.shape[-1])
        else:
            _netchisel(model, arch)
        model.eval()
        out = _output(model, inputs)
        entry["seconds"] = time.perf_counter() - start
        entry["params_after"] = _params(model)
        entry["output_shape_ok"] = tuple(out.shape) == tuple(reference.shape)
        entry["success"] = entry["output_shape_ok"] and entry["params_after"] < before
        if not entry["output_shape_ok"]:
            entry["error"] = f"output shape {list(out.shape)} != {list(reference.shape)}"
        elif not entry["success"]:
            entry["error"] = "no parameter removed"
    except BaseException as e:  # a failing arm is a result, not a crash
        if isinstance(e, KeyboardInterrupt):
            raise
        entry["seconds"] = time.perf_counter() - start
        entry["success"] = False
        entry["timed_out"] = isinstance(e, _Timeout)
        entry["error"] = (
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        )
    finally:
        signal.alarm(0)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from tests.models.archs import ARCHS

    names = args.models or list(ARCHS)
    models: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {"library": ARCHS[name].library}
        for arm in ("torch_pruning", "netchisel"):
            runs = []
            for seed in args.seeds:
                entry = run_case(name, arm, seed)
                runs.append({"seed": seed, **entry})
                print(name, arm, seed, entry.get("success"), entry.get("error", ""), flush=True)
                if entry.get("timed_out"):
                    break
            seconds = [r["seconds"] for r in runs]
            row[arm] = {
                "success": all(r["success"] for r in runs),
                "seeds_ok": sum(r["success"] for r in runs),
                "seeds_run": len(runs),
                "params_before": runs[0]["params_before"],
                "params_after": runs[0].get("params_after"),
                "seconds": {
                    "median": statistics.median(seconds),
                    "min": min(seconds),
                    "max": max(seconds),
                },
                "error": next((r["error"] for r in runs if "error" in r), None),
                "runs": runs,
            }
        models[name] = row
    tp_ok = [n for n, r in models.items() if r["torch_pruning"]["success"]]
    nc_ok = [n for n, r in models.items() if r["netchisel"]["success"]]
    data = {
        "setup": {"ratio": RATIO, "timeout_s": TIMEOUT, "seeds": args.seeds, "threads": 1},
        "models": models,
        "summary": {
            "models": len(models),
            "torch_pruning_ok": len(tp_ok),
            "netchisel_ok": len(nc_ok),
            "only_torch_pruning": sorted(set(tp_ok) - set(nc_ok)),
            "only_netchisel": sorted(set(nc_ok) - set(tp_ok)),
            "meets_target": set(tp_ok) <= set(nc_ok),
        },
    }
    path = write_result("models_torch_pruning", data)
    print(path)
    print(render(json.loads(path.read_text())))


def _arm_cell(a: dict[str, Any]) -> str:
    if a["success"]:
        return f"ok, {a['params_before']:,} -> {a['params_after']:,}"
    why = (a["error"] or "").replace("|", "/")
    return f"**fails** ({a['seeds_ok']}/{a['seeds_run']} seeds): {why[:110]}"


def _time(a: dict[str, Any]) -> str:
    s = a["seconds"]
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of bench/results/models_torch_pruning.json."""
    s, summary = d["setup"], d["summary"]
    lines = [
        "## Structured channels on real architectures: Torch-Pruning directly vs netchisel"
        " (`bench/models_torch_pruning.py`)",
        "",
        f"`python bench/models_torch_pruning.py` ({d['date']}). The architectures of the model"
        f" matrix (tiny configurations, random weights), {100 * s['ratio']:.0f}% of the channels"
        " of each group by L1 magnitude. Torch-Pruning: `MetaPruner` as in its README, output"
        " layer ignored, `use_cache=False` set by hand on Hugging Face models; netchisel:"
        " `prune.structured` with nothing set by hand. Success = no error, same output shape,"
        f" fewer parameters, on each of seeds {', '.join(str(x) for x in s['seeds'])}; time in"
        f" seconds, median (min-max), one thread, stopped after {s['timeout_s']} s.",
        "",
        "| model | library | Torch-Pruning | s | netchisel | s |",
        "|---|---|---|---:|---|---:|",
    ]
    for name, r in d["models"].items():
        tp_arm, nc_arm = r["torch_pruning"], r["netchisel"]
        lines.append(
            f"| {name} | {r['library']} | {_arm_cell(tp_arm)} | {_time(tp_arm)} |"
            f" {_arm_cell(nc_arm)} | {_time(nc_arm)} |"
        )
    only_tp = ", ".join(summary["only_torch_pruning"]) or "none"
    only_nc = ", ".join(summary["only_netchisel"]) or "none"
    verdict = "meets" if summary["meets_target"] else "misses"
    lines += [
        "",
        f"Torch-Pruning succeeds on {summary['torch_pruning_ok']} of {summary['models']} models,"
        f" netchisel on {summary['netchisel_ok']}. Only Torch-Pruning: {only_tp}. Only"
        f" netchisel: {only_nc}. Target (netchisel wherever Torch-Pruning succeeds): {verdict}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
