"""The plots of a run's report.html (matplotlib, rendered to inline SVG text)."""

from __future__ import annotations

import io
from typing import Any


def report_plots(report: dict[str, Any]) -> list[str]:
    """The figures of a run's report.html as SVG texts: the primary metric against bytes on
    disk and latency, parameters and FLOPs per layer (first and last step), each step's
    sensitivity curves and dynamic trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = report.get("task") or {}
    primary = task.get("primary_metric")
    steps = report["steps"]
    figures = []
    for key, label in (("bytes_on_disk", "bytes on disk"), ("latency_ms", "latency (ms)")):
        points = [
            (s["profile"].get(key), s["metrics"].get(primary), s["name"])
            for s in steps
            if s["profile"].get(key) is not None and primary in s["metrics"]
        ]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(str(primary))
        ax.set_title(f"{primary} vs {label}")
        figures.append(svg_text(fig))
    for key, label in (("params", "parameters"), ("flops", "FLOPs")):
        first, last = steps[0]["per_module"][key], steps[-1]["per_module"][key]
        names = [n for n in last if n and not any(o.startswith(n + ".") for o in last)]
        names = [n for n in names if max(last.get(n, 0), first.get(n, 0)) > 0]
        names = sorted(names, key=lambda n: -max(last.get(n, 0), first.get(n, 0)))[:20]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1.2))
        ys = range(len(names))
        ax.barh(
            [y + 0.2 for y in ys], [first.get(n, 0) for n in names], 0.4, label=steps[0]["name"]
        )
        ax.barh(
            [y - 0.2 for y in ys], [last.get(n, 0) for n in names], 0.4, label=steps[-1]["name"]
        )
        ax.set_yticks(list(ys), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} per layer (leaf modules)")
        ax.legend(fontsize=7)
        figures.append(svg_text(fig))
    for step in steps:
        data = step.get("records", {}).get("sensitivity")
        if data:
            figures.append(_sensitivity_plot(step["name"], data))
        if data := step.get("records", {}).get("dynamic"):
            figures += _dynamic_plots(step["name"], data)
    plt.close("all")
    return figures


def _sensitivity_plot(name: str, data: dict[str, Any]) -> str:
    """Metric vs ratio, one line per layer; an x marks the ratio the stage chose."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    chosen = data.get("chosen") or {}
    for layer, curve in data["curves"].items():
        (line,) = ax.plot(data["ratios"], curve, "o-", markersize=3, linewidth=1, label=layer)
        if layer in chosen:
            at = float(np.interp(chosen[layer], data["ratios"], curve))
            ax.plot([chosen[layer]], [at], "x", color=line.get_color(), markersize=8)
    ax.axhline(data["baseline"], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(data.get("x_label", "fraction of one layer's weights pruned (that layer alone)"))
    ax.set_ylabel(str(data["metric"]))
    ax.set_title(f"sensitivity ({name})" + (": x = chosen" if chosen else ""))
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return svg_text(fig)


def _dynamic_plots(name: str, data: dict[str, Any]) -> list[str]:
    """The record's metric (accuracy, perplexity, ...) against mean MACs over the sweep
    (static model and chosen point marked), and the histogram of the paths taken."""
    import matplotlib.pyplot as plt

    split = data.get("split", "calibration")
    metric = data.get("metric", "accuracy (%)")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    sweep = sorted(data["sweep"], key=lambda p: p["mean_macs"])
    ax.plot([p["mean_macs"] for p in sweep], [p["value"] for p in sweep], "o-", label="sweep")
    ax.plot([data["static"]["mean_macs"]], [data["static"]["value"]], "s", label="static")
    ax.plot(
        [data["chosen"]["mean_macs"]],
        [data["chosen"]["value"]],
        "x",
        markersize=9,
        label="chosen",
    )
    ax.set_xlabel("mean MACs per sample")
    ax.set_ylabel(f"{metric} on {split}")
    ax.set_title(f"{name}: {metric.split(' (')[0]} vs mean MACs")
    ax.legend(fontsize=7)
    figures = [svg_text(fig)]
    paths = list(data["histogram"])
    fig, ax = plt.subplots(figsize=(4.5, 0.3 * len(paths) + 1.2))
    ax.barh(range(len(paths)), [100 * data["histogram"][p] for p in paths])
    ax.set_yticks(list(range(len(paths))), paths, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"share of the {split} split (%)")
    ax.set_title(f"{name}: paths taken")
    figures.append(svg_text(fig))
    return figures


def svg_text(fig: Any) -> str:
    """A matplotlib figure as inline SVG text (closes nothing: the caller owns the figure)."""
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]
