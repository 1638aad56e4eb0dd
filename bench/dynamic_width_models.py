"""Which layers `dynamic.width` can slim on models we did not write (torchvision, timm), and
what the widths cost: the plan search and its proof (`width_plan.plan_slimmable`) on each
model built with random weights (the plan is a property of the structure), inputs 64x64, widths
0.25 / 0.5 / 1.0. Per model: the sliced layers, exact MACs per sample at each width as a share
of the full model's, the planning time (one thread), or the one-line refusal.

Run: .venv/bin/python bench/dynamic_width_models.py  (-> bench/results/dynamic_width_models.json)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import write_result
from torch import nn

from netchisel.core.errors import NetChiselError
from netchisel.dynamic.width_model import WidthModel, width_macs
from netchisel.dynamic.width_plan import plan_slimmable

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "models"))
from _torchvision import timm, torchvision

WIDTHS = [0.25, 0.5, 1.0]
TORCHVISION = [
    "resnet50",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "vgg11_bn",
    "mnasnet0_5",
    "squeezenet1_0",
    "convnext_tiny",
    "googlenet",
    "densenet121",
    "regnet_x_400mf",
    "resnext50_32x4d",
]
TIMM = ["resnet18", "resnet26d", "efficientnet_b0", "mobilenetv3_small_050"]


def one(name: str, net: nn.Module) -> dict[str, Any]:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    try:
        plan = plan_slimmable(net.eval(), WIDTHS, x)
    except NetChiselError as e:
        return {"model": name, "refused": str(e).split("; supported")[0]}
    seconds = time.perf_counter() - t0
    macs, _, static = width_macs(WidthModel(net, plan, WIDTHS, nn.Identity()), x)
    row = {
        "model": name,
        "sliced_layers": sum(kind != "norm" for kind in plan.kinds),
        "macs_share": [m / static for m in macs],
        "static_macs": static,
        "planning_seconds": round(seconds, 1),
    }
    print(row, flush=True)
    return row


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    tv, tm = torchvision().models, timm()
    rows = []
    for name in TORCHVISION:
        torch.manual_seed(0)
        rows.append(one(f"torchvision {name}", getattr(tv, name)(weights=None, num_classes=10)))
    for name in TIMM:
        torch.manual_seed(0)
        rows.append(one(f"timm {name}", tm.create_model(name, pretrained=False, num_classes=10)))
    result = {
        "setup": {"widths": WIDTHS, "input": [2, 3, 64, 64], "threads": 1, "weights": "random"},
        "models": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"-> {write_result('dynamic_width_models', result)}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark."""
    lines = [
        "## dynamic.width on torchvision and timm models (`bench/dynamic_width_models.py`)",
        "",
        f"{d['date']}; random weights, 64x64 inputs, widths 0.25 / 0.5 / 1.0; the plan search "
        "and its proof; MACs per sample at each width as a share of the full model's.",
        "",
        "| model | sliced layers | MACs at 0.25 / 0.5 | planning (s) |",
        "|---|---:|---|---:|",
    ]
    for r in d["models"]:
        if "refused" in r:
            lines.append(f"| {r['model']} | refused: {r['refused']} | | |")
            continue
        share = " / ".join(f"{100 * s:.1f}%" for s in r["macs_share"][:2])
        lines.append(f"| {r['model']} | {r['sliced_layers']} | {share} | {r['planning_seconds']} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
