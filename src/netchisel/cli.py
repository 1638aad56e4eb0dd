"""The `netchisel` command: a thin layer over the public API.

Every NetChiselError is printed as one line and exits with status 2.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from netchisel.core.errors import ConfigError, Interrupted, NetChiselError, first_line

app = typer.Typer(
    help="Make neural networks smaller, faster and cheaper, and prove it with measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: the rich help shows every flag with a `<bool>` value it does not take.
    # Piped help is 100 columns wide, so the command list is not cut off.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100}
    | ({} if sys.stdout.isatty() else {"terminal_width": 100}),
)
# Piped output has no terminal width: COLUMNS when set (rich reads it), else 120 columns, which
# keep the summary table readable in logs. The summaries drop columns to fit narrower widths.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _print_version(value: bool) -> None:
    if value:
        from netchisel import __version__

        print(f"netchisel {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options before the command (`netchisel --version`)."""


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe file.")],
    output: Annotated[
        Path | None, typer.Option(help="Output directory (overrides the recipe).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run a recipe: each stage measured before and after; writes the artifact and report."""
    from netchisel.pipeline.runner import run_recipe

    result = run_recipe(recipe, output=output, quiet=quiet)
    _print_summary(result.report, result.directory)


@app.command()
def search(
    spec: Annotated[Path, typer.Argument(help="YAML search spec.")],
    output: Annotated[
        Path | None, typer.Option(help="Output directory (overrides the spec).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL shared by several machines, e.g. "
            "postgresql://user:pw@host/db (default: SQLite, or a journal file with "
            "--workers, in the output directory)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes.")] = 1,
    trials: Annotated[int | None, typer.Option(help="Total trials (overrides the spec).")] = None,
    quiet: Quiet = False,
) -> None:
    """Search a space (NAS, compression policy, hyper-parameters); run again to continue.

    A spec with `darts:` runs DARTS, then its recipe on the derived network."""
    import optuna

    from netchisel.search.nas.darts_pipeline import is_darts_spec, run_darts
    from netchisel.search.study import run_search

    if is_darts_spec(spec):
        given = [f for f, v in (("--storage", storage), ("--trials", trials)) if v is not None]
        if workers != 1:
            given.append("--workers")
        if given:
            raise ConfigError(f"{', '.join(given)}: a DARTS spec runs one search, in one process")
        darts = run_darts(spec, output=output, quiet=quiet)
        _print_summary(darts.run.report, darts.run.directory)
        genotype = ", ".join(f"{k}={v}" for k, v in darts.search.candidate.items())
        print(f"derived cells: {genotype}")
        return

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    result = run_search(
        spec, output=output, storage=storage, workers=workers, trials=trials, quiet=quiet
    )
    _print_search_summary(result.report, result.directory)


DEMOS = {"cnn": "demo", "resnet": "demo_resnet"}


@app.command()
def demo(
    output: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/demo[_resnet]).")
    ] = None,
    model: Annotated[
        str,
        typer.Option(help="cnn (seconds) or resnet (ResNet-20: minutes, trained on first use)."),
    ] = "cnn",
    quiet: Quiet = False,
) -> None:
    """Prune -> distill -> static int8 on a reference model, each step measured; the report."""
    import yaml

    from netchisel.pipeline.recipe import parse_recipe
    from netchisel.pipeline.runner import run_recipe

    if model not in DEMOS:
        raise ConfigError(f"--model {model!r}: the demos are {', '.join(DEMOS)}")
    name = DEMOS[model]
    text = resources.files("netchisel").joinpath(f"recipes/{name}.yaml").read_text()
    recipe = parse_recipe(yaml.safe_load(text), name)
    result = run_recipe(recipe, output=output, quiet=quiet)
    _print_summary(result.report, result.directory)


@app.command()
def profile(
    model: Annotated[
        str,
        typer.Argument(
            help="Zoo name (built with untrained weights: counts and sizes are the same), "
            "artifact directory, or package.module:function."
        ),
    ],
    input_shape: Annotated[
        str | None, typer.Option(help="Input shape, e.g. 1,1,32,32 (needed for a builder).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Input dtype with --input-shape.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Batch size of the example input.")] = 64,
    latency: Annotated[bool, typer.Option(help="Measure latency.")] = True,
    backend: Annotated[str, typer.Option(help="eager, compile or onnxruntime.")] = "eager",
    threads: Annotated[int, typer.Option(help="Intra-op threads while timing.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed repeats.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    trust: Annotated[
        list[str] | None,
        typer.Option(
            help="package.module:Name of your own class or builder that an artifact may name "
            "(repeatable; docs/security.md)."
        ),
    ] = None,
) -> None:
    """Exact FLOPs/MACs per module, params, bytes in memory and on disk, latency, energy."""
    from netchisel.measure import profile as measure

    for flag, number in (
        ("--batch-size", batch_size),
        ("--threads", threads),
        ("--repeats", repeats),
    ):
        if number < 1:
            raise ConfigError(f"{flag} must be >= 1, got {number}")
    net, inputs, disk = _model_and_inputs(model, input_shape, dtype, batch_size, trust or [])
    result = measure(
        net,
        inputs,
        latency=latency,
        backend=backend,
        threads=threads,
        repeats=repeats,
        on_disk=disk is None,
    )
    if disk is not None:
        import dataclasses

        result = dataclasses.replace(result, bytes_on_disk=disk)
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
        return
    table = Table(title=f"{model}: per module (inclusive)")
    for col in ("module", "params", "MACs", "FLOPs", "% FLOPs"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for name, flops in result.flops_by_module.items():
        depth = name.count(".") + 1 if name else 0
        if depth > 2:
            continue
        share = 100 * flops / result.flops if result.flops else 0.0
        table.add_row(
            "  " * depth + (name or "(model)"),
            f"{result.params_by_module.get(name, 0):,}",
            f"{result.macs_by_module.get(name, 0):,}",
            f"{flops:,}",
            f"{share:.1f}",
        )
    console.print(table)
    totals = Table(title="totals", show_header=False)
    for key, value in _totals(result).items():
        totals.add_row(key, value)
    console.print(totals)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A run's or a search's output directory.")],
) -> None:
    """Re-render report.md and report.html from report.json (a run's or a search's)."""
    from netchisel.report.render import read_report, write_atomically, write_reports

    data = read_report(directory)
    if "search" in data:
        from netchisel.search.report import render_html, render_markdown

        texts = {"report.md": render_markdown(data), "report.html": render_html(data)}
        write_atomically(texts, directory)
        _print_search_summary(data, directory)
        return
    write_reports(data, directory)
    _print_summary(data, directory)


@app.command()
def info() -> None:
    """Versions, threads, CPU features, the registered stages."""
    from netchisel.measure.machine import machine_info
    from netchisel.stages import stage_names

    data = {**machine_info(), "stages": stage_names()}
    print(json.dumps(data, indent=1))


def _model_and_inputs(
    ref: str, input_shape: str | None, dtype: str, batch_size: int, trust: list[str]
) -> tuple[Any, tuple[Any, ...], int | None]:
    import torch

    from netchisel.artifact.store import artifact_bytes, load, read_manifest
    from netchisel.core.modules import build
    from netchisel.pipeline.runner import inputs_from_specs
    from netchisel.zoo import data, models, train

    disk = None
    specs: list[dict[str, Any]] | None = None
    if ref in models.MODEL_NAMES:
        net = models.build(ref)
        if input_shape is None:
            name, kwargs = train.default_task(ref)
            task = data.task(name, **({"reference": net} if ref == "minilm" else kwargs))
            return net, task.example_inputs(batch_size), None
    elif ":" in ref and not Path(ref).exists():
        net = build(ref, {})
    elif Path(ref).exists():
        net = load(ref, trust=trust)
        disk = artifact_bytes(ref)
        specs = read_manifest(Path(ref)).get("metadata", {}).get("inputs")
    else:
        raise ConfigError(
            f"model {ref!r} is not a zoo name ({', '.join(models.MODEL_NAMES)}), an artifact "
            "directory, or package.module:function"
        )
    if input_shape is not None:
        try:
            shape = [int(s) for s in input_shape.replace("x", ",").split(",")]
        except ValueError:
            raise ConfigError(
                f"--input-shape {input_shape!r}: expected numbers like 1,3,32,32"
            ) from None
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ConfigError(f"--dtype {dtype!r} is not a torch dtype")
        if not shape or min(shape) < 1:
            raise ConfigError(f"--input-shape {input_shape!r}: every size must be >= 1")
        specs = [{"shape": shape, "dtype": dtype}]
        batch_size = shape[0]
    if not specs:
        raise ConfigError(f"model {ref!r}: give --input-shape (e.g. 1,3,32,32)")
    return net, inputs_from_specs(specs, batch_size), disk


def _totals(p: Any) -> dict[str, str]:
    from netchisel.report.render import dynamic_rows, human_bytes

    lat = p.latency
    return {
        "batch size": str(p.batch_size),
        "params (nonzero)": f"{p.params:,} ({p.params_nonzero:,})",
        "MACs": f"{p.macs:,}",
        "FLOPs": f"{p.flops:,}",
        "bytes in memory": f"{p.bytes_in_memory:,} ({human_bytes(p.bytes_in_memory)})",
        "bytes on disk (artifact)": f"{p.bytes_on_disk:,} ({human_bytes(p.bytes_on_disk)})"
        if p.bytes_on_disk is not None
        else "-",
        "peak forward memory": human_bytes(p.peak_memory_bytes),
        "latency ms median (p10-p90)": f"{lat.median_ms:.3f} ({lat.p10_ms:.3f}-{lat.p90_ms:.3f}), "
        f"{lat.backend}, {lat.threads} thread(s)"
        if lat
        else "-",
        "energy per sample (estimate)": f"{p.energy.total_uj:.4g} µJ",
        "uncounted ops": ", ".join(p.uncounted_ops) or "none",
        **dynamic_rows(p.dynamic),
    }


# The run summary's columns, widest layout first: the terminal gets the first that fits.
RUN_LAYOUTS = (
    ("step", "score", "params_nz", "flops", "bytes_on_disk", "latency", "energy_uj"),
    ("step", "score", "params_nz", "flops", "bytes_on_disk", "latency"),
    ("step", "score", "params_nz", "bytes_on_disk", "latency"),
    ("step", "score", "params_nz", "bytes_on_disk", "latency_ms"),
    ("step", "score", "params_nz", "latency_ms"),
)


def _print_summary(report: dict[str, Any], directory: Path) -> None:
    from netchisel.report.render import (
        dynamic_note,
        fit_layout,
        latency_setup,
        table_rows,
        table_width,
        uncounted_ops,
    )

    # The terminal gets the headline columns that fit its width; report.md/html have them all.
    task = report.get("task") or {}
    titles = {
        "step": "step",
        "score": f"{task.get('primary_metric', 'metric')} ({task.get('eval_split', '-')})",
        "params_nz": "params",
        "flops": "FLOPs",
        "bytes_on_disk": "disk",
        "latency": "ms (p10-p90)",  # the spread shows how far to trust one step's timing
        "latency_ms": "ms",
        "energy_uj": "µJ est.",
    }
    rows = table_rows(report)
    layout = fit_layout(RUN_LAYOUTS, titles, rows, console.width)
    batch = report["steps"][0]["profile"]["batch_size"]
    table = Table(title=f"netchisel: {report['recipe'].get('name')} (batch {batch})")
    fits = table_width(layout, titles, rows) <= console.width
    for key in layout:  # too narrow even so: cells fold onto a second line, never end in "…"
        table.add_column(titles[key], justify="right", no_wrap=fits, overflow="fold")
    for row in rows:
        table.add_row(*(row[key] for key in layout))
    console.print(table)
    if setup := latency_setup(report):
        console.print(setup)
    missing = uncounted_ops(report)
    if missing:
        console.print(f"FLOPs do not include these ops (no formula): {', '.join(missing)}")
    if note := dynamic_note(report):
        console.print(note)
    console.print(f"report: {directory / 'report.html'} (also report.md, report.json)")
    console.print(f"model:  {directory / 'model'}")


# The search summary's columns, widest layout first; the candidate wraps, so it counts 16.
SEARCH_LAYOUTS = (
    (
        "number",
        "values",
        "accuracy",
        "test",
        "latency_ms",
        "retimed",
        "macs",
        "params",
        "bytes_on_disk",
        "candidate",
    ),
    ("number", "accuracy", "test", "latency_ms", "retimed", "params", "bytes_on_disk", "candidate"),
    ("number", "accuracy", "test", "latency_ms", "params", "candidate"),
    ("number", "accuracy", "latency_ms", "candidate"),
)


def _print_search_summary(report: dict[str, Any], directory: Path) -> None:
    from netchisel.report.render import fit_layout, table_width
    from netchisel.search.report import COLUMNS, domination_note, table_cells

    counts = report["counts"]
    title = (
        f"netchisel search: {report['search']['name']} ({counts['counted']} trials: "
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    front = report.get("front") or []
    rows = front or report["best"]
    cells = [table_cells(row) for row in rows]
    for cell in cells:
        if front and cell["exported"] == "yes":
            cell["number"] += " *"
    titles = dict(COLUMNS)
    fitted = [{**c, "candidate": c["candidate"][:16]} for c in cells]
    layout = fit_layout(SEARCH_LAYOUTS, titles, fitted, console.width)
    fits = table_width(layout, titles, fitted) <= console.width
    table = Table(title=title)
    for key in layout:  # the candidate wraps; numbers only when even the last layout is too wide
        table.add_column(
            titles[key],
            justify="left" if key == "candidate" else "right",
            no_wrap=fits and key != "candidate",
            overflow="fold",
        )
    for cell in cells:
        table.add_row(*(cell[key] for key in layout))
    console.print(table)
    if front:
        exported = sum(1 for r in front if r["exported"])
        console.print(f"Pareto front: {len(front)} trial(s); * marks the {exported} exported.")
        if note := domination_note(report):
            console.print(note)
    if not report["feasible_found"]:
        console.print("No trial met the constraints; the closest infeasible trials are shown.")
    console.print(f"report: {directory / 'report.html'} (also report.md, report.json)")
    for entry in report["exported"]:
        if entry["path"]:
            console.print(f"best:   {directory / entry['path']}")


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as one line: ours as `netchisel: warning: ...`, others with their source."""
    text = (str(message).strip().splitlines() or [category.__name__])[0]
    ours = Path(filename).resolve().is_relative_to(Path(__file__).parent.resolve())
    where = "" if ours else f" ({category.__name__}, {Path(filename).name}:{lineno})"
    print(f"netchisel: warning: {text}{where}", file=sys.stderr)


def main() -> None:
    """Entry point of the console script: one line and exit 2 on any error.

    A NetChiselError is ours and its message says what to fix; anything else (a model that
    does not accept its input, a builder that raises) is reported with its type and first
    line. Warnings are one line each too. NETCHISEL_DEBUG=1 shows tracebacks and warnings'
    source lines instead. Ctrl-C prints one line saying what was kept and exits 130.
    """
    try:
        with warnings.catch_warnings():
            if not os.environ.get("NETCHISEL_DEBUG"):
                warnings.showwarning = _one_line_warning
            app()
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != 130:
            raise
        # typer turns Ctrl-C into exit status 130; the run's own message is in the chain
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, Interrupted):
            cause = cause.__cause__ or cause.__context__
        print(f"netchisel: {cause or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except NetChiselError as e:
        print(f"netchisel: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("NETCHISEL_DEBUG"):
            raise
        print(
            f"netchisel: error: {type(e).__name__}: {first_line(e)} "
            "(NETCHISEL_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
