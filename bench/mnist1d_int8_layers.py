"""Why the static int8 MNIST-1D CNN is slower than float in eager mode: layer by layer.

Run: .venv/bin/python bench/mnist1d_int8_layers.py  ->  bench/results/mnist1d_int8_layers.json

The recipe benchmark (`bench/mnist1d_recipe.py`) measured the int8 model slower than float at
batch 1 and batch 100. This script times each layer of the zoo `mnist1d_cnn` alone, float
against its `quantize.static_int8` replacement, on the inputs that layer really sees (captured
from test sequences), alternating A/B with one thread (`compare_latency`), and times the int8
layer's input quantization alone (the uint8 rounding each layer does before oneDNN's kernel).
A layer this small (25 channels over 40 samples) does a few thousand multiply-adds per
sequence, so a fixed cost per call, if there is one, decides the ratio.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.core.context import Context
from netchisel.measure import compare_latency
from netchisel.quantize.formats.static_int8 import StaticInt8Weight
from netchisel.quantize.static_int8 import StaticInt8Config, quantize_static_int8
from netchisel.zoo import data, train

BATCHES = (1, 100)


def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named layer receives when `model` runs on `x`."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[n].register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0]))
        for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = data.task("mnist1d")
    fp32 = train.pretrained("mnist1d_cnn").eval()
    config = StaticInt8Config(calibration_samples=256)
    int8 = quantize_static_int8(copy.deepcopy(fp32), config, Context(task, quiet=True)).eval()
    q_layers = {n: m for n, m in int8.named_modules() if isinstance(m, StaticInt8Weight)}
    f_layers = dict(fp32.named_modules())
    x_test = task.splits["test"].tensors[0]  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    whole: dict[str, Any] = {}
    for batch in BATCHES:
        inputs = layer_inputs(fp32, list(q_layers), x_test[:batch])
        for name, q in q_layers.items():
            f, x = f_layers[name], inputs[name]
            with torch.no_grad():
                layer = compare_latency(
                    lambda f=f, x=x: f(x),
                    lambda q=q, x=x: q(x),
                    batch_size=batch,
                    rounds=args.rounds,
                )
                quant = compare_latency(
                    lambda f=f, x=x: f(x),
                    lambda q=q, x=x: q._quantized_input(x),
                    batch_size=batch,
                    rounds=args.rounds,
                )
            rows.append(
                {
                    "layer": name,
                    "batch": batch,
                    "kind": type(q).__name__,
                    "input_shape": list(x.shape),
                    "fp32_us": 1000 * layer.a.median_ms,
                    "int8_us": 1000 * layer.b.median_ms,
                    "int8_input_quantize_us": 1000 * quant.b.median_ms,
                    "fp32_over_int8": layer.speedup,
                }
            )
            print(rows[-1], flush=True)
        x = x_test[:batch]
        with torch.no_grad():
            cmp = compare_latency(
                lambda x=x: fp32(x), lambda x=x: int8(x), batch_size=batch, rounds=args.rounds
            )
        whole[str(batch)] = {
            "fp32_us": 1000 * cmp.a.median_ms,
            "int8_us": 1000 * cmp.b.median_ms,
            "fp32_over_int8": cmp.speedup,
        }
    write_result(
        "mnist1d_int8_layers",
        {"rounds": args.rounds, "threads": 1, "layers": rows, "whole_model": whole},
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: per layer, float vs int8 and the int8 input rounding alone."""
    lines = [
        "## Static int8 on the MNIST-1D CNN, layer by layer (`bench/mnist1d_int8_layers.py`)",
        "",
        f"`python bench/mnist1d_int8_layers.py` ({d['date']}). Each layer of the zoo"
        " `mnist1d_cnn` alone, float vs its static int8 replacement, on the inputs it sees"
        f" (test sequences); A/B alternating, {d['threads']} thread, {d['rounds']} rounds;"
        " microseconds per call (median). *Rounding*: the int8 layer's uint8 input quantization"
        " alone, part of its time.",
        "",
        "| batch | layer | input | fp32 µs | int8 µs | of which rounding µs | fp32 / int8 |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in d["layers"]:
        shape = "x".join(str(s) for s in r["input_shape"])
        lines.append(
            f"| {r['batch']} | {r['layer']} | {shape} | {r['fp32_us']:.1f} | {r['int8_us']:.1f}"
            f" | {r['int8_input_quantize_us']:.1f} | {r['fp32_over_int8']:.2f}x |"
        )
    lines.append("")
    for batch, w in d["whole_model"].items():
        lines.append(
            f"Whole model, batch {batch}: fp32 {w['fp32_us']:.0f} µs, int8 {w['int8_us']:.0f} µs"
            f" (fp32 / int8 {w['fp32_over_int8']:.2f}x)."
        )

    def span(batch: int, key: str) -> str:
        values = [r[key] for r in d["layers"] if r["batch"] == batch]
        return f"{min(values):.0f}-{max(values):.0f}"

    slower = all(r["fp32_over_int8"] < 1 for r in d["layers"])
    lines += [
        "",
        f"At batch 1 an int8 layer takes {span(1, 'int8_us')} µs whatever its size (float:"
        f" {span(1, 'fp32_us')} µs), {span(1, 'int8_input_quantize_us')} µs of it the input"
        " rounding: a fixed cost per call that a layer of a few thousand multiply-adds per"
        " sequence never pays back."
        + (
            " Every int8 layer is slower than its float layer at both batch sizes."
            if slower
            else ""
        )
        + " Static int8 pays where arithmetic dominates (the digits32 CNN recipe above)"
        "; for a model this small, ship the pruned float model, or measure under"
        " torch.compile first (the recipe section).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
