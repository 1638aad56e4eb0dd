"""Dynamic int8 per layer: torch's `quantize_dynamic` against netchisel's three modes.

Run: .venv/bin/python bench/quant_dynamic_layers.py  ->  bench/results/quant_dynamic_layers.json

Whole-model timings of MiniLM (bench/quant_minilm.py) swing by 15-20% between runs on a shared
machine, more than the differences between the modes. Here each Linear of one MiniLM block
(four 384x384, one 384x1536, one 1536x384; random weights, seed 0) is timed alone, the peer's
layer and our three in turns (`round_robin`, 30 rounds of 5 calls, one thread), at 2,048 rows
(32 sentences x 64 tokens, the MiniLM bench's batch) and at 1 row. The block's cost is the sum
over its six layers of each layer's median; the ratio is the peer's block over ours. The
output error is relative (Frobenius) to the float layer on the same random input.
"""

from __future__ import annotations

import copy
import statistics
import warnings
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from torch import nn

from netchisel.measure.latency import round_robin
from netchisel.quantize.formats.dynamic_int8 import DynamicInt8Linear, fbgemm_full_range

BLOCK = {(384, 384): 4, (384, 1536): 1, (1536, 384): 1}  # (in, out) -> layers per block
ROWS = (2048, 1)
MODES = {
    "per-token, per-channel": ("per_token", "per_channel"),
    "per-tensor, per-channel": ("per_tensor", "per_channel"),
    "per-tensor, per-tensor": ("per_tensor", "per_tensor"),
}


def layers(shape: tuple[int, int]) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
        peer = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(copy.deepcopy(linear)), {nn.Linear}, dtype=torch.qint8
        )[0]
    ours = {
        name: DynamicInt8Linear.from_float(linear, act, weights)
        for name, (act, weights) in MODES.items()
    }
    return {"float": linear, "peer": peer, **ours}


def main() -> None:
    rows: list[dict[str, Any]] = []
    for shape, count in BLOCK.items():
        models = layers(shape)
        for n in ROWS:
            x = torch.randn(n, shape[0])
            timed = {k: m for k, m in models.items() if k != "float"}
            with torch.inference_mode():
                reference = models["float"](x)
                samples, _ = round_robin(
                    [lambda m=m, x=x: m(x) for m in timed.values()], rounds=30, calls=5, warmup=5
                )
                errors = {
                    k: float((m(x) - reference).norm() / reference.norm()) for k, m in timed.items()
                }
            us = {k: statistics.median(s) * 1e3 for k, s in zip(timed, samples, strict=True)}
            rows.append(
                {"in": shape[0], "out": shape[1], "rows": n, "per_block": count}
                | {"us": us, "relative_error": errors}
            )
            print(shape, n, {k: round(v, 1) for k, v in us.items()})
    blocks: dict[str, Any] = {}
    for n in ROWS:
        total = {
            k: sum(r["us"][k] * r["per_block"] for r in rows if r["rows"] == n)
            for k in ("peer", *MODES)
        }
        blocks[str(n)] = {
            "block_us": total,
            "speed_ratio_ours_over_peer": {k: total["peer"] / total[k] for k in MODES},
        }
        print(
            n,
            "rows:",
            {k: round(v, 3) for k, v in blocks[str(n)]["speed_ratio_ours_over_peer"].items()},
        )
    write_result(
        "quant_dynamic_layers",
        {
            "threads": 1,
            "full_activation_range": fbgemm_full_range(),
            "rows": rows,
            "blocks": blocks,
        },
    )


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/quant_dynamic_layers.json)."""
    lines = [
        "## Dynamic int8 per layer, MiniLM shapes (`bench/quant_dynamic_layers.py`)",
        "",
        "Each Linear of one MiniLM block timed alone, torch's `quantize_dynamic` layer and "
        f"netchisel's three modes in turns, {d['threads']} thread; full 8-bit activation range: "
        f"{d['full_activation_range']}. Microseconds per call (relative output error to float).",
        "",
        "| in x out | rows | peer | per-token, per-channel | per-tensor, per-channel "
        "| per-tensor, per-tensor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        cells = " | ".join(f"{us:.1f} ({r['relative_error'][k]:.4f})" for k, us in r["us"].items())
        lines.append(f"| {r['in']} x {r['out']} | {r['rows']} | {cells} |")
    lines += ["", "A block (4 x 384x384, 384x1536, 1536x384), speed over the peer's:", ""]
    for rows, b in d["blocks"].items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in b["speed_ratio_ours_over_peer"].items())
        lines.append(f"- {rows} rows: {ratios}")
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
