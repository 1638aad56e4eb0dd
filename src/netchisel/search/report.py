"""The search report: trial table, Pareto front (or ranking), plot, best candidates exported.

Feasible means every constraint holds. With several objectives the report lists the whole
feasible Pareto front and exports its first `export` trials (best first objective first);
latency ties within its measured p10-p90 (`objectives.dominates`). With one objective the
best are the top feasible trials. When no trial is feasible the report says so and still
keeps the trials closest to feasible (least total violation).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from netchisel.core.errors import NetChiselError, first_line
from netchisel.report.plots import svg_text
from netchisel.report.render import human, human_bytes, write_atomically
from netchisel.search.objectives import (
    DOMINATION_RULE,
    SPREADS,
    non_dominated,
    objective_ranges,
)
from netchisel.search.retime import ROUNDS, retime
from netchisel.search.spec import SearchSpec
from netchisel.search.storage import counted_trials, describe

BEST_DIR = "best"


def write_search_report(
    study: optuna.Study, spec: SearchSpec, out: Path, url: str
) -> dict[str, Any]:
    """Export the best candidates and write report.json, report.md and report.html."""
    directions = spec.objectives.directions()
    names = spec.objectives.names()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if is_feasible(t)]
    front: list[FrozenTrial] = []
    if feasible:
        ranked = best_trials(feasible, directions, names)
        front = ranked if len(directions) > 1 else []
        chosen = ranked[: spec.export]
    else:  # the closest to feasible, least violation first
        chosen = sorted(complete, key=violation)[: spec.export]
    exported = {t.number for t in chosen}
    counted = counted_trials(study)
    states = [t.state.name.lower() for t in counted]
    report = {
        "search": {
            "name": spec.name,
            "strategy": spec.strategy,
            "storage": describe(url),
            "objectives": spec.objectives.names(),
            "directions": directions,
            "constraints": [vars(limit) for limit in spec.objectives.limits],
            "trials_budget": spec.trials,
            # latency compares by its p10-p90 range (see objectives.dominates)
            "ranged_objectives": [n for n in names if n in SPREADS] if front else [],
        },
        "counts": {
            "counted": len(counted),
            **{s: states.count(s) for s in ("complete", "pruned", "fail")},
            "interrupted_and_rerun": sum(
                1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted")
            ),
            "feasible": len(feasible),
        },
        "feasible_found": bool(feasible),
        "best": [trial_row(t) for t in chosen],
        "front": [{**trial_row(t), "exported": t.number in exported} for t in front],
        "exported": export_best(chosen, out),
        "trials": [trial_row(t) for t in study.get_trials(deepcopy=False)],
    }
    report["retimed"] = retime_best(report, spec, out)
    write_atomically(
        {
            "report.json": json.dumps(report, indent=1, default=str),
            "report.md": render_markdown(report),
            "report.html": render_html(report),
        },
        out,
    )
    return report


def retime_best(report: dict[str, Any], spec: SearchSpec, out: Path) -> dict[str, Any] | None:
    """Time the exported best candidates again, in turns (see `search.retime`); the re-timed
    milliseconds go into each best row as `latency_ms_retimed`. None when latency is not
    measured; an error is recorded, not raised, so the report is still written."""
    rows = {r["number"]: r for r in report["best"] if "latency_ms" in r["metrics"]}
    paths = {e["trial"]: out / e["path"] for e in report["exported"] if e["path"]}
    paths = {n: p for n, p in paths.items() if n in rows}
    if not paths:
        return None
    settings = spec.recipe(rows[next(iter(paths))]["candidate"], out).profile
    try:
        retimed = retime(paths, settings)
    except (NetChiselError, RuntimeError, OSError) as e:
        return {"error": f"{type(e).__name__}: {first_line(e)}"}
    for number, ms in retimed.items():
        rows[number]["latency_ms_retimed"] = ms
    for row in report.get("front", []):
        if row["number"] in retimed:
            row["latency_ms_retimed"] = retimed[row["number"]]
    return {"rounds": ROUNDS, "calls_per_round": max(1, settings.repeats // ROUNDS)}


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint of the trial holds (a trial without constraints is)."""
    return all(v <= 0 for v in trial.user_attrs.get("constraints", []))


def violation(trial: FrozenTrial) -> float:
    """The total constraint violation (0 when feasible)."""
    return float(sum(max(0.0, v) for v in trial.user_attrs.get("constraints", [])))


def best_trials(
    trials: list[FrozenTrial], directions: Sequence[str], names: Sequence[str] | None = None
) -> list[FrozenTrial]:
    """The non-dominated trials (several objectives) or all trials best first (one).

    `names` are the objectives' metrics: one with a measured spread (`latency_ms`) dominates
    only outside its p10-p90 range (`objectives.dominates`). The front is ordered by its
    first objective, best first.

    Example:
        >>> from optuna.trial import create_trial
        >>> ts = [create_trial(values=v) for v in ([1, 5], [2, 6], [3, 4], [4, 9])]
        >>> [t.values for t in best_trials(ts, ["maximize", "minimize"])]
        [[4, 9], [3, 4]]
        >>> spread = {"latency_p10_ms": 3.5, "latency_p90_ms": 9.5}  # [4, 9] is 3.5-9.5 ms
        >>> ts[3] = create_trial(values=[4, 9], user_attrs={"metrics": spread})
        >>> [t.values for t in best_trials(ts, ["maximize", "minimize"], ["a", "latency_ms"])]
        [[4, 9]]
    """
    sign = 1.0 if directions[0] == "maximize" else -1.0
    if len(directions) == 1:
        return sorted(trials, key=lambda t: -sign * t.values[0])
    ranges = [
        objective_ranges(t.values, directions, names, t.user_attrs.get("metrics")) for t in trials
    ]
    front = [trials[i] for i in non_dominated(ranges)]
    return sorted(front, key=lambda t: -sign * t.values[0])


def export_best(chosen: list[FrozenTrial], out: Path) -> list[dict[str, Any]]:
    """Copy each chosen trial's artifact to best/<rank>_trial<n>; report missing ones."""
    best = out / BEST_DIR
    if best.exists():
        shutil.rmtree(best)
    exported = []
    for rank, trial in enumerate(chosen, start=1):
        source = out / str(trial.user_attrs.get("artifact", ""))
        target = best / f"{rank}_trial{trial.number:05d}"
        if trial.user_attrs.get("artifact") and (source / "manifest.json").is_file():
            shutil.copytree(source, target)
            exported.append({"trial": trial.number, "path": str(target.relative_to(out))})
        else:  # a trial run by another machine: its artifact lives there
            exported.append({"trial": trial.number, "path": None, "missing": str(source)})
    return exported


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as report data."""
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration else None
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "candidate": attrs.get("candidate", trial.params),
        "values": trial.values,
        "metrics": attrs.get("metrics", {}),
        "test_metrics": attrs.get("test_metrics", {}),
        "constraints": attrs.get("constraints", []),
        "feasible": is_feasible(trial),
        "error": attrs.get("error"),
        "interrupted": bool(attrs.get("interrupted")),
        "seconds": duration,
    }


COLUMNS = (
    ("number", "trial"),
    ("exported", "exported"),
    ("values", "objectives"),
    ("accuracy", "accuracy (val)"),
    ("test", "accuracy (test)"),
    ("latency_ms", "latency ms (p10-p90)"),
    ("retimed", "re-timed ms"),
    ("macs", "MACs"),
    ("params", "params"),
    ("bytes_on_disk", "on disk"),
    ("candidate", "candidate"),
)


# Every best candidate is exported; on the front and among all trials only some are, and
# only the exported ones are re-timed.
BEST_COLUMNS = tuple(c for c in COLUMNS if c[0] != "exported")
TRIAL_COLUMNS = tuple(c for c in COLUMNS if c[0] not in ("retimed", "exported"))


def table_cells(row: dict[str, Any]) -> dict[str, str]:
    """One report row as the strings of the table columns."""
    m, test = row["metrics"], row["test_metrics"]

    def num(value: Any, fmt: str = ".4g") -> str:
        return "-" if value is None else format(value, fmt)

    values = row["values"]
    latency = num(m.get("latency_ms"), ".3g")
    if "latency_p10_ms" in m and "latency_p90_ms" in m:
        latency += f" ({m['latency_p10_ms']:.3g}-{m['latency_p90_ms']:.3g})"
    return {
        "number": str(row["number"]) + ("" if row["feasible"] else " (infeasible)"),
        "exported": "yes" if row.get("exported") else "no",
        "values": ", ".join(f"{v:.4g}" for v in values) if values else row["state"],
        "accuracy": num(m.get("accuracy")),
        "test": num(test.get("accuracy")),
        "latency_ms": latency,
        "retimed": num(row.get("latency_ms_retimed"), ".3g"),
        "macs": human(m["macs"]) if "macs" in m else "-",
        "params": human(m["params"]) if "params" in m else "-",
        "bytes_on_disk": human_bytes(m.get("bytes_on_disk")),
        "candidate": json.dumps(row["candidate"], separators=(",", ":")),
    }


def _table(
    rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]] = BEST_COLUMNS
) -> list[str]:
    lines = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = table_cells(row)
        lines.append("| " + " | ".join(cells[k] for k, _ in columns) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: summary, best candidates, every trial."""
    s, c = report["search"], report["counts"]
    lines = [
        f"# Search: {s['name']}",
        "",
        f"- strategy **{s['strategy']}**, objectives "
        + ", ".join(f"{n} ({d})" for n, d in zip(s["objectives"], s["directions"], strict=True)),
        f"- trials: {c['counted']} of {s['trials_budget']} ({c['complete']} complete, "
        f"{c['pruned']} pruned, {c['fail']} failed; {c['interrupted_and_rerun']} interrupted "
        "and run again)",
        f"- storage: `{s['storage']['url']}`",
    ]
    if s["constraints"]:
        limits = ", ".join(
            f"{lim['metric']} {'<= ' + str(lim['max']) if lim['max'] is not None else ''}"
            f"{' >= ' + str(lim['min']) if lim['min'] is not None else ''}"
            for lim in s["constraints"]
        )
        lines.append(f"- constraints: {limits}; {c['feasible']} trials feasible")
    if not report["feasible_found"]:
        lines += ["", "**No trial met the constraints.** The best infeasible trials are kept."]
    lines += ["", *best_section(report)]
    exported = [e for e in report["exported"] if e["path"]]
    lines += [
        "",
        "Exported artifacts: " + (", ".join(f"`{e['path']}`" for e in exported) or "none"),
    ]
    lines += ["", "## Every trial", ""]
    lines += _table([r for r in report["trials"] if r["state"] == "complete"], TRIAL_COLUMNS)
    failed = [r for r in report["trials"] if r["state"] == "fail" and r["error"]]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {r['number']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def best_section(report: dict[str, Any]) -> list[str]:
    """The Pareto front with the exported trials marked (several objectives), or the best
    candidates (one objective, or none feasible), and the notes that read them."""
    front = report.get("front") or []
    if front:
        exported = sum(1 for r in front if r["exported"])
        lines = [
            "## Pareto front",
            "",
            f"Every feasible trial no other trial dominates ({len(front)}), selected on the "
            f"validation split; `exported` marks the {exported} copied to `{BEST_DIR}/`.",
            "",
            *_table(front, COLUMNS),
        ]
    else:
        lines = [
            "## Best candidates",
            "",
            "Selected on the validation split.",
            "",
            *_table(report["best"]),
        ]
    notes = [domination_note(report), retime_note(report)]
    return lines + [line for note in notes if note for line in ("", note)]


def domination_note(report: dict[str, Any]) -> str | None:
    """The rule that decided the front, when an objective is compared by its measured range."""
    if report.get("front") and report["search"].get("ranged_objectives"):
        return DOMINATION_RULE
    return None


def retime_note(report: dict[str, Any]) -> str | None:
    """What the `re-timed ms` column is (or why it is empty)."""
    retimed = report.get("retimed")
    if not retimed:
        return None
    if "error" in retimed:
        return f"Re-timing the best candidates failed: {retimed['error']}"
    return (
        "`latency ms` was measured once per trial, when it ran; `re-timed ms` times the exported"
        f" candidates again side by side, in turns ({retimed['rounds']} rounds of"
        f" {retimed['calls_per_round']} calls each, median): compare candidates on it."
    )


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the objective plot, the summary and the tables."""
    title = html.escape(f"netchisel search: {report['search']['name']}")
    summary = render_markdown(report).split("\n## ")[0].splitlines()[1:]
    items = "".join(
        f"<li>{html.escape(line[2:]).replace('**', '')}</li>"
        for line in summary
        if line.startswith("- ")
    )
    warning = "" if report["feasible_found"] else "<p><b>No trial met the constraints.</b></p>"
    complete = [r for r in report["trials"] if r["state"] == "complete"]
    front = report.get("front") or []
    if front:
        heading = "Pareto front (selected on the validation split; exported: copied to best/)"
        best = _html_table(front, COLUMNS)
    else:
        heading = "Best candidates (selected on the validation split)"
        best = _html_table(report["best"], BEST_COLUMNS)
    notes = "".join(
        f"<p>{html.escape(note).replace('`', '')}</p>"
        for note in (domination_note(report), retime_note(report))
        if note
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}
th{{background:#f3f3f3}}</style>
</head><body>
<h1>{title}</h1><ul>{items}</ul>{warning}
<figure>{objective_plot(report)}</figure>
<h2>{heading}</h2>{best}
{notes}
<h2>Every trial</h2>{_html_table(complete, TRIAL_COLUMNS)}
</body></html>
"""


def _html_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(table_cells(r)[k])}</td>" for k, _ in columns) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def objective_plot(report: dict[str, Any]) -> str:
    """Two objectives: every trial and the front; one: value per trial and best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, directions = report["search"]["objectives"], report["search"]["directions"]
    rows = [r for r in report["trials"] if r["state"] == "complete" and r["values"]]
    best = {r["number"] for r in report.get("front") or report["best"]}
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(names) >= 2:
        for feasible, marker in ((True, "o"), (False, "x")):
            pts = [r for r in rows if r["feasible"] == feasible and r["number"] not in best]
            ax.scatter(
                [r["values"][1] for r in pts],
                [r["values"][0] for r in pts],
                c="0.6",
                marker=marker,
                label="trial" if feasible else "infeasible",
            )
        front = sorted((r for r in rows if r["number"] in best), key=lambda r: r["values"][1])
        xs, ys = [r["values"][1] for r in front], [r["values"][0] for r in front]
        low, high = SPREADS.get(names[1], ("", ""))
        spread = bool(front) and all(low in r["metrics"] and high in r["metrics"] for r in front)
        xerr = (
            [
                [max(0.0, x - r["metrics"][low]) for x, r in zip(xs, front, strict=True)],
                [max(0.0, r["metrics"][high] - x) for x, r in zip(xs, front, strict=True)],
            ]
            if spread
            else None
        )
        label = "Pareto front" + (" (p10-p90)" if spread else "")
        ax.errorbar(xs, ys, xerr=xerr, fmt="o-", c="C3", capsize=2, label=label)
        marked = [r for r in front if r.get("exported")]
        if marked:
            ax.scatter(
                [r["values"][1] for r in marked],
                [r["values"][0] for r in marked],
                marker="*",
                s=120,
                c="C1",
                zorder=3,
                label="exported",
            )
        ax.set_xlabel(f"{names[1]} ({directions[1]})")
        ax.set_ylabel(f"{names[0]} ({directions[0]})")
    else:
        sign = 1 if directions[0] == "maximize" else -1
        xs = [r["number"] for r in rows]
        ys = [r["values"][0] for r in rows]
        running = [sign * max(sign * y for y in ys[: i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, c="0.6", label="trial")
        ax.plot(xs, running, c="C3", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{names[0]} ({directions[0]})")
    ax.legend(fontsize=7)
    ax.set_title(report["search"]["name"])
    text = svg_text(fig)
    plt.close(fig)
    return text
