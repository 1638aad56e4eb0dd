"""Reports of a run: report.json (all data), report.md (tables) and report.html (tables and
plots, self-contained: inline SVG, no scripts or external files; the plots are `plots.py`)."""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netchisel.core.errors import ArtifactError
from netchisel.core.files import as_if_created
from netchisel.report.plots import report_plots


def write_reports(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write the three report files into `directory`, each atomically."""
    texts = {
        "report.json": json.dumps(report, indent=1, default=str),
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    return write_atomically(texts, directory)


def write_atomically(texts: dict[str, str], directory: str | Path) -> list[Path]:
    """Write `{file name: text}` into `directory`; a reader never sees half a file."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        as_if_created(Path(tmp))
        os.replace(tmp, out / name)
        paths.append(out / name)
    return paths


def read_report(directory: str | Path) -> dict[str, Any]:
    """The report.json of a run (or search) directory, or an error saying what is wrong."""
    path = Path(directory) / "report.json"
    if not path.is_file():
        raise ArtifactError(
            f"{directory} has no report.json: run a recipe with 'netchisel run' first"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is corrupt: {e}") from None
    if "steps" not in data and "search" not in data:
        raise ArtifactError(f"{path} is not a netchisel report (no 'steps' or 'search')")
    return data


# -- tables --------------------------------------------------------------------------------

COLUMNS = (
    ("step", "Step"),
    ("metric", "Metric"),
    ("params", "Params"),
    ("params_nonzero", "Nonzero"),
    ("flops", "FLOPs"),
    ("bytes_on_disk", "Bytes on disk"),
    ("latency", "Latency ms (p10-p90)"),
    ("peak_memory_bytes", "Peak memory"),
    ("energy_uj", "Energy µJ (estimate)"),
    ("seconds", "Stage s"),
)


def table_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row of formatted cells per step.

    `metric` is the task's primary metric on its evaluation split, except in an `evaluate`
    step's row, which shows the split that step evaluated (`accuracy 97.04 (test split)`);
    `score` is the same number for the terminal. `params_nz` adds the nonzero count when
    pruning zeroed weights; `latency_ms` is the median alone.

    Example:
        >>> step = {"name": "evaluate", "config": {"split": "test"}, "seconds": 0.1,
        ...         "metrics": {"accuracy": 98.2}, "records": {"test_accuracy": 97.04},
        ...         "profile": {"params": 100, "params_nonzero": 40, "flops": 2000,
        ...                     "bytes_on_disk": 900, "latency_ms": 0.5,
        ...                     "peak_memory_bytes": 64, "energy_uj": 0.25}}
        >>> row = table_rows({"task": {"primary_metric": "accuracy"}, "steps": [step]})[0]
        >>> row["metric"], row["score"], row["params_nz"]
        ('accuracy 97.04 (test split)', '97.04 (test)', '100 (nz 40)')
    """
    task = report.get("task") or {}
    primary = task.get("primary_metric")
    rows = []
    for step in report["steps"]:
        p = step["profile"]
        metric, score = "-", "-"
        split = evaluated_split(step)
        value = (
            step.get("records", {}).get(f"{split}_{primary}")
            if split
            else step["metrics"].get(primary)
        )
        if value is not None:
            score = f"{value:.4g}" + (f" ({split})" if split else "")
            metric = f"{primary} {value:.4g}" + (f" ({split} split)" if split else "")
        latency = median = "-"
        if p.get("latency_ms") is not None:
            lat = step.get("latency") or {}
            latency = median = f"{p['latency_ms']:.3f}"
            if lat:
                latency += f" ({lat['p10_ms']:.3f}-{lat['p90_ms']:.3f})"
            if is_dynamic(p):  # one batch's own paths, not the expectation: marked
                latency, median = f"{latency} *", f"{median} *"
        params, nonzero = p["params"], p["params_nonzero"]
        rows.append(
            {
                "step": step["name"],
                "metric": metric,
                "score": score,
                "params": f"{params:,}",
                "params_nonzero": f"{nonzero:,}",
                "params_nz": f"{params:,}" + (f" (nz {nonzero:,})" if nonzero < params else ""),
                "flops": f"{human(2 * p['expected_macs'] * p['batch_size'])} exp."
                if is_dynamic(p)
                else human(p["flops"]),
                "bytes_on_disk": human_bytes(p["bytes_on_disk"]),
                "latency": latency,
                "latency_ms": median,
                "peak_memory_bytes": human_bytes(p["peak_memory_bytes"]),
                "energy_uj": f"{p['energy_uj']:.3g}",
                "seconds": f"{step['seconds']:.1f}",
            }
        )
    return rows


def evaluated_split(step: dict[str, Any]) -> str | None:
    """The split an `evaluate` step evaluated (None for any other step).

    Example:
        >>> evaluated_split({"name": "evaluate", "config": {"split": "test"}})
        'test'
    """
    if step["name"] != "evaluate":
        return None
    split = (step.get("config") or {}).get("split")
    return str(split) if split else None


def latency_setup(report: dict[str, Any]) -> str | None:
    """How latency was measured, from what each step's timing really used: the backend, the
    intra-op threads, the calls timed. Steps that differ are named.

    Example:
        >>> lat = {"backend": "eager", "threads": 1, "repeats": 20, "warmup": 5}
        >>> latency_setup({"steps": [{"name": "original", "latency": lat}]})
        'Latency: eager backend, 1 thread, median and p10-p90 of 20 calls after 5 warm-up calls.'
    """
    setups: dict[str, list[str]] = {}
    for step in report["steps"]:
        lat = step.get("latency") or {}
        if "backend" not in lat or "threads" not in lat:
            continue
        threads = f"{lat['threads']} thread" + ("s" if lat["threads"] != 1 else "")
        text = f"{lat['backend']} backend, {threads}"
        if "repeats" in lat:
            text += f", median and p10-p90 of {lat['repeats']} calls"
            text += f" after {lat['warmup']} warm-up calls" if "warmup" in lat else ""
        setups.setdefault(text, []).append(step["name"])
    if not setups:
        return None
    if len(setups) == 1:
        return f"Latency: {next(iter(setups))}."
    return "Latency: " + "; ".join(f"{t} ({', '.join(names)})" for t, names in setups.items()) + "."


def fit_layout(
    layouts: Sequence[Sequence[str]],
    titles: dict[str, str],
    rows: Sequence[dict[str, str]],
    width: int,
) -> Sequence[str]:
    """The first of `layouts` (column keys, widest first) whose table fits in `width`
    terminal columns, or the last one: columns are left out rather than numbers cut.

    Example:
        >>> rows = [{"step": "original", "params": "50,610 (nz 5,430)", "ms": "0.112"}]
        >>> titles = {"step": "step", "params": "params", "ms": "ms"}
        >>> fit_layout([("step", "params", "ms"), ("step", "ms")], titles, rows, 30)
        ('step', 'ms')
    """
    for layout in layouts:
        if table_width(layout, titles, rows) <= width:
            return layout
    return layouts[-1]


def table_width(
    layout: Sequence[str], titles: dict[str, str], rows: Sequence[dict[str, str]]
) -> int:
    """Terminal columns a rich table (default box) takes unwrapped: per column its widest
    cell or title plus 3 (padding and a rule), and 1 for the closing edge.

    Example:
        >>> table_width(("a", "b"), {"a": "a", "b": "bee"}, [{"a": "12345", "b": "1"}])
        15
    """
    return 1 + sum(3 + max([len(titles[key]), *(len(row[key]) for row in rows)]) for key in layout)


DYNAMIC_NOTE = (
    "exp.: a dynamic model's expected FLOPs per batch, 2 x its expected MACs per sample on its"
    " calibration split x the batch size, without the FLOPs beyond MACs (the profiled batch"
    " alone took one set of paths). *: its latency (and energy estimate) are those of the"
    " profiled batch's own paths; a benchmark timing it over a whole split is the one to trust."
)


def is_dynamic(profile: dict[str, Any]) -> bool:
    """Whether a step's profile summary is a dynamic model's: its expected MACs per sample
    (under its calibration split) are not those of the profiled batch.

    Example:
        >>> is_dynamic({"macs": 120, "batch_size": 4, "expected_macs": 30.0})
        False
        >>> is_dynamic({"macs": 120, "batch_size": 4, "expected_macs": 55.5})
        True
    """
    expected = profile.get("expected_macs")
    return expected is not None and not math.isclose(
        expected * profile["batch_size"], profile["macs"], rel_tol=1e-9
    )


def dynamic_note(report: dict[str, Any]) -> str | None:
    """What the `exp.` FLOPs cells mean, if a step has one."""
    return DYNAMIC_NOTE if any(is_dynamic(s["profile"]) for s in report["steps"]) else None


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def dynamic_rows(dynamic: dict[str, Any] | None) -> dict[str, str]:
    """A dynamic model's paths (`Profile.dynamic`) as label -> text: MACs per exit, per width
    or per MoE layer's experts, the share of the calibration split on each path, and the
    expected MACs per sample.

    Example:
        >>> rows = dynamic_rows({"exits": [{"after": "layer1", "threshold": 0.9, "macs": 10,
        ...     "fraction": 0.5}], "expected_macs": 30.0, "mac_reduction": 0.5, "static_macs": 60})
        >>> rows["exit after layer1 (threshold 0.9)"], rows["expected MACs per sample"]
        ('10 MACs, 50.0% of calibration', '30 (50.0% fewer than 60)')
        >>> list(dynamic_rows({"exits": [{"after": "layer2", "threshold": 1.0, "head_runs": False,
        ...     "macs": 20, "fraction": 0.0}]}))
        ['exit after layer2 (never fires)']
        >>> dynamic_rows({"widths": [{"width": 0.5, "macs": 40, "fraction": 0.25}],
        ...     "gate_macs": 2})["width 0.5"]
        '40 MACs (+2 gate), 25.0% of calibration'
        >>> dynamic_rows({"layers": {"h.0.mlp": {"experts": 8, "top_k": 2,
        ...     "active_macs_per_token": 30, "all_experts_macs_per_token": 100,
        ...     "load_cv": 0.25, "dropped_fraction": 0.01}}})["h.0.mlp: top-2 of 8 experts"]
        '30 MACs per token active of 100; load CV 0.25, 1.0% dropped'
    """
    rows: dict[str, str] = {}
    data = dynamic or {}
    for e in data.get("exits", []):
        share = "" if e["fraction"] is None else f", {100 * e['fraction']:.1f}% of calibration"
        where = "the end" if e["threshold"] is None else f"exit after {e['after']}"
        if e["threshold"] is None:
            label = where
        elif e.get("head_runs") is False:  # a threshold that can never fire: the head is off
            label = f"{where} (never fires)"
        else:
            label = f"{where} (threshold {e['threshold']:.4g})"
        rows[label] = f"{e['macs']:,} MACs{share}"
    for w in data.get("widths", []):
        share = "" if w["fraction"] is None else f", {100 * w['fraction']:.1f}% of calibration"
        rows[f"width {w['width']:g}"] = f"{w['macs']:,} MACs (+{data['gate_macs']:,} gate){share}"
    for name, layer in data.get("layers", {}).items():
        text = (
            f"{layer['active_macs_per_token']:,} MACs per token active of "
            f"{layer['all_experts_macs_per_token']:,}"
        )
        if layer.get("load_cv") is not None:
            text += (
                f"; load CV {layer['load_cv']:.2f}, {100 * layer['dropped_fraction']:.1f}% dropped"
            )
        rows[f"{name}: top-{layer['top_k']} of {layer['experts']} experts"] = text
    if data.get("expected_macs") is not None:
        text = f"{data['expected_macs']:,.0f}"
        if data.get("static_macs"):
            text += f" ({100 * data['mac_reduction']:.1f}% fewer than {data['static_macs']:,})"
        rows["expected MACs per sample"] = text
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the stage table, all metrics, and where it ran."""
    rows = table_rows(report)
    lines = [f"# netchisel report: {report['recipe'].get('name', 'recipe')}", ""]
    batch = report["steps"][0]["profile"]["batch_size"]
    lines += [
        f"Profiled at batch size {batch}; FLOPs are per batch, energy per sample and an "
        "estimate; bytes on disk are the saved artifact's size.",
        "",
    ]
    if setup := latency_setup(report):
        lines += [setup, ""]
    lines += [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows]
    lines += ["", "## Metrics", ""]
    for step in report["steps"]:
        extra = {**step["metrics"], **step.get("records", {})}
        cells = ", ".join(f"{k} {_fmt(v)}" for k, v in extra.items() if k not in _OWN_SECTION)
        lines.append(f"- **{step['name']}**: {cells or '-'}")
    uncounted = uncounted_ops(report)
    if uncounted:
        lines += ["", f"FLOPs do not include these ops (no formula): {', '.join(uncounted)}"]
    if note := dynamic_note(report):
        lines += ["", note]
    for step in report["steps"]:
        lines += sensitivity_table(step)
        lines += dynamic_table(step)
    machine = report.get("machine", {})
    lines += [
        "",
        "## Machine",
        "",
        f"{machine.get('cpu')}, {machine.get('cpu_count')} cores, torch {machine.get('torch')}, "
        f"netchisel {machine.get('netchisel')}",
        "",
    ]
    return "\n".join(lines)


def sensitivity_table(step: dict[str, Any]) -> list[str]:
    """A step's sensitivity curves (`prune.sensitivity`): a row per layer, a column per ratio."""
    data = step.get("records", {}).get("sensitivity")
    if not data:
        return []
    chosen = data.get("chosen") or {}
    head = ["layer", "weights", *(f"{r:g}" for r in data["ratios"])]
    head += ["chosen"] if chosen else []
    lines = [
        "",
        f"## Sensitivity: {step['name']}",
        "",
        f"{data['metric']} on the {data.get('split', 'evaluation')} split with "
        + data.get(
            "sweep",
            f"one layer pruned alone to each ratio ({data.get('importance', 'l1')}), "
            "every other layer unpruned",
        )
        + ("; chosen: the value the stage gave the layer." if chosen else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for layer, curve in data["curves"].items():
        cells = [layer, f"{data['sizes'][layer]:,}", *(f"{v:.4g}" for v in curve)]
        cells += [f"{chosen[layer]:.4g}"] if chosen else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def dynamic_table(step: dict[str, Any]) -> list[str]:
    """A dynamic stage's trade-off (the record `dynamic`): its metric (`metric`: accuracy,
    perplexity, ...) and mean MACs per sample of the static model, of each setting of the
    sweep and of the one chosen, then the histogram of the paths the split's samples took
    (exits, experts or widths).

    Example:
        >>> step = {"name": "dynamic.early_exit", "records": {"dynamic": {"split": "val",
        ...     "metric": "accuracy (%)", "static": {"value": 98.0, "mean_macs": 100.0},
        ...     "chosen": {"value": 97.5, "mean_macs": 60.0},
        ...     "sweep": [{"setting": "max_drop 0.5", "value": 97.5, "mean_macs": 60.0}],
        ...     "histogram": {"exit after layer1": 0.4, "end": 0.6}}}}
        >>> print("\\n".join(dynamic_table(step)[5:]))
        | static model | 98 | 100 |
        | max_drop 0.5 | 97.5 | 60 |
        | **chosen** | 97.5 | 60 |
        <BLANKLINE>
        | path | share of val |
        |---|---:|
        | exit after layer1 | 40.0% |
        | end | 60.0% |
    """
    data = step.get("records", {}).get("dynamic")
    if not data:
        return []
    split = data.get("split", "calibration")
    lines = [
        "",
        f"## Dynamic trade-off: {step['name']}",
        "",
        f"| setting | {data.get('metric', 'accuracy (%)')} on {split} | mean MACs per sample |",
        "|---|---:|---:|",
    ]
    rows = [("static model", data["static"]), *((p["setting"], p) for p in data["sweep"])]
    rows.append(("**chosen**", data["chosen"]))
    lines += [f"| {name} | {p['value']:.4g} | {p['mean_macs']:,.0f} |" for name, p in rows]
    lines += ["", f"| path | share of {split} |", "|---|---:|"]
    lines += [f"| {path} | {100 * share:.1f}% |" for path, share in data["histogram"].items()]
    return lines


# Records drawn in a section of their own, not in the metrics line.
_OWN_SECTION = ("sensitivity", "dynamic")


def uncounted_ops(report: dict[str, Any]) -> list[str]:
    """Ops that ran in any step and have no FLOP formula (their FLOPs are not in the totals)."""
    return sorted({op for s in report["steps"] for op in s.get("uncounted_ops", [])})


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- html --------------------------------------------------------------------------------


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the table, metric vs size and latency, per-layer bars."""
    rows = table_rows(report)
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[k])}</td>" for k, _ in COLUMNS) + "</tr>"
        for r in rows
    )
    markdown_metrics = render_markdown(report).split("## Metrics", 1)[1].split("## Machine")[0]
    metric_items = "".join(
        f"<li>{html.escape(line[2:]).replace('**', '')}</li>"
        for line in markdown_metrics.splitlines()
        if line.startswith("- ")
    )
    plots = "".join(f"<figure>{svg}</figure>" for svg in report_plots(report))
    missing = ", ".join(uncounted_ops(report))
    warning = f"<p><b>FLOPs do not include these ops (no formula):</b> {html.escape(missing)}</p>"
    title = html.escape(f"netchisel report: {report['recipe'].get('name', 'recipe')}")
    machine = html.escape(json.dumps(report.get("machine", {}), indent=1))
    setup = f"<p>{html.escape(latency_setup(report) or '')}</p>"
    note = dynamic_note(report)
    dynamic = f"<p>{html.escape(note)}</p>" if note else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
th{{background:#f3f3f3}}figure{{display:inline-block;margin:.5em}}pre{{background:#f7f7f7;padding:1em}}
</style></head><body>
<h1>{title}</h1>
<p>FLOPs are per batch of {rows and report["steps"][0]["profile"]["batch_size"]}; energy is per
sample and an <b>estimate</b> from op counts (Horowitz, ISSCC 2014); bytes on disk are the saved
artifact's size; latency is measured.</p>
{setup}
<table><tr>{head}</tr>{body}</table>
{warning if missing else ""}
{dynamic}
<h2>Metrics</h2><ul>{metric_items}</ul>
<h2>Plots</h2>{plots}
<h2>Machine</h2><pre>{machine}</pre>
</body></html>
"""
