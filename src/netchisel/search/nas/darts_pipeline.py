"""The founding pipeline in one spec: DARTS search -> derive -> train -> int8 -> artifact.

```yaml
name: darts_mnist1d
task: mnist1d
darts: {epochs: 10, nodes: 3, width: 8, seed: 0}       # DartsConfig fields
recipe:                                                 # a recipe; $candidate = the derived net
  model: {builder: "netchisel.search.nas:cell_net", kwargs: {$candidate: merge, width: 16}}
  stages:
    - finetune: {steps: 3000, lr: 0.01, lr_schedule: cosine}
    - quantize.static_int8: {calibration_samples: 256}
output: runs/darts_mnist1d
```

`netchisel search spec.yaml` runs it (a spec with `darts:` instead of `space:`); in Python,
`run_darts(path)`. The derived candidate is the cell genotype plus the searched network's
`cell_net` kwargs (`dims`, `nodes`, `width`, ...); `{$candidate: merge, width: 16}` keeps the
genotype and widens the network to ship it ("search small, ship large"). The recipe is checked
with a stand-in candidate before the search starts, so a typo in a stage fails in a second, not
after the search. The output directory holds the recipe's artifact and report, and
`darts.json`: the config, the derived candidate, the per-epoch trace (losses, skips, Hessian
eigenvalue, expected MACs) and the architecture weights per epoch.

Why static int8 for a cell network: torch's `quantize_dynamic` only quantizes Linear (and
recurrent) layers, never convolutions, so on a CNN `quantize.dynamic_int8` would leave all but
the classifier in float; `quantize.static_int8` calibrates the activations and runs every
convolution on int8 kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netchisel.core.errors import ConfigError, Interrupted, first_line
from netchisel.core.task import Task
from netchisel.pipeline.recipe import parse_recipe, read_yaml
from netchisel.pipeline.runner import RunResult, check_output_dir, run_recipe
from netchisel.pipeline.sources import (
    TASK_KINDS,
    SourceSpec,
    load_model,
    load_task,
    parse_source,
)
from netchisel.search.nas.cells import cell_space
from netchisel.search.nas.darts import darts_search
from netchisel.search.nas.darts_config import DartsConfig, DartsResult, EpochRecord
from netchisel.search.template import fill, placeholders

DARTS_SPEC_KEYS = ("name", "task", "darts", "recipe", "output", "seed")
TRACE_FILE = "darts.json"


@dataclass(frozen=True)
class DartsRun:
    """What `run_darts` made: the recipe's run (directory, report, model) and the search."""

    run: RunResult
    search: DartsResult


def is_darts_spec(path: str | Path) -> bool:
    """Whether the YAML file at `path` is a DARTS spec (it has a `darts:` key).

    Example:
        >>> is_darts_spec("examples/search/darts_mnist1d.yaml")
        True
    """
    data = read_yaml(Path(path), "search spec")
    return isinstance(data, Mapping) and "darts" in data


def run_darts(
    spec: str | Path | Mapping[str, Any],
    *,
    output: str | Path | None = None,
    quiet: bool = False,
) -> DartsRun:
    """Search cells with DARTS on the spec's task, then run the recipe on the derived network.

    Example:
        >>> run = run_darts("examples/search/darts_mnist1d.yaml", quiet=True)  # doctest: +SKIP
        >>> sorted(p.name for p in run.run.directory.iterdir())  # doctest: +SKIP
        ['darts.json', 'manifest.json', 'model.safetensors', 'report.html', 'report.json', ...]
    """
    data = read_yaml(Path(spec), "search spec") if isinstance(spec, (str, Path)) else spec
    name = Path(spec).stem if isinstance(spec, (str, Path)) else "darts"
    data = _checked(data)
    name = str(data.get("name", name))
    config = _config(data.get("darts") or {})
    if "seed" in data:
        config = config.with_changes(seed=_int_seed(data["seed"]))
    out = Path(output if output is not None else data.get("output", f"runs/{name}"))
    check_output_dir(out)  # a re-run replaces an earlier run; anything else is refused now
    template = dict(data["recipe"])
    if "task" in template and template["task"] != data["task"]:
        raise ConfigError(
            f"darts spec: recipe.task {template['task']!r} differs from task {data['task']!r}: "
            "the cells are searched and trained on one task; remove recipe.task"
        )
    template |= {"task": data["task"], "name": name}
    template.setdefault("seed", config.seed)
    task = load_task(_task_source(data["task"]), SourceSpec("builder", ""), nn.Identity())
    if task is None:
        raise ConfigError("darts: task: name a task (a zoo task such as mnist1d, or a builder)")
    _check_recipe(template, config, task, out)  # fails now, not after the search

    def progress(record: EpochRecord) -> None:
        if not quiet:
            eigen = "-" if record.eigenvalue is None else f"{record.eigenvalue:.3g}"
            print(
                f"darts epoch {record.epoch}: val acc {record.val_accuracy:.1f}%, skips "
                f"{record.skips}, eigenvalue {eigen}, expected MACs {record.expected_macs:,.0f}",
                flush=True,
            )

    try:
        result = darts_search(task, config, on_epoch=progress)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted during the DARTS search: nothing written to {out}"
        ) from None
    recipe = _recipe(template, result.candidate | result.net_kwargs, out)
    run = run_recipe(recipe, output=out, quiet=quiet)
    _write_json(run.directory / TRACE_FILE, trace_data(result))
    return DartsRun(run, result)


def trace_data(result: DartsResult) -> dict[str, Any]:
    """`darts.json`: config, derived candidate, per-epoch trace and architecture weights."""
    return {
        "config": dataclasses.asdict(result.config),
        "candidate": result.candidate,
        "net_kwargs": result.net_kwargs,
        "ops": list(result.ops),
        "stopped_at": result.stopped_at,
        "seconds": result.seconds,
        "trace": [dataclasses.asdict(r) for r in result.trace],
        "alpha_history": list(result.alpha_history),
    }


def _checked(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError("darts spec: expected a mapping with 'task', 'darts' and 'recipe'")
    unknown = [k for k in data if k not in DARTS_SPEC_KEYS]
    if unknown:
        raise ConfigError(
            f"darts spec: unknown key {unknown[0]!r} (known: {', '.join(DARTS_SPEC_KEYS)})"
        )
    for key in ("task", "recipe"):
        if key not in data:
            raise ConfigError(f"darts spec: missing {key!r}")
    if not isinstance(data["recipe"], Mapping):
        raise ConfigError("darts spec: recipe must be a mapping (a recipe with $candidate)")
    used = placeholders(data["recipe"])
    if used != {"candidate"}:
        extra = sorted(used - {"candidate"})
        raise ConfigError(
            "darts spec: the recipe must place the derived network with $candidate, e.g. "
            "model: {builder: 'netchisel.search.nas:cell_net', kwargs: $candidate}"
            + (f"; unknown placeholders: {', '.join('$' + e for e in extra)}" if extra else "")
        )
    return data


def _config(values: Any) -> DartsConfig:
    if not isinstance(values, Mapping):
        raise ConfigError("darts spec: darts must be a mapping of DartsConfig fields")
    known = [f.name for f in dataclasses.fields(DartsConfig)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"darts: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    fields = dict(values)
    for key in ("ops", "limited_ops"):
        if isinstance(fields.get(key), list):
            fields[key] = tuple(fields[key])
    try:
        return DartsConfig(**fields)
    except TypeError as e:
        raise ConfigError(f"darts: {e}") from None


def _int_seed(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"darts spec: seed must be an integer, got {value!r}")
    return value


def _task_source(value: Any) -> SourceSpec:
    return parse_source("task", value, TASK_KINDS)


def _stand_in(config: DartsConfig) -> dict[str, Any]:
    """A candidate of the searched space (every edge the first input, the first op)."""
    space = cell_space(config.nodes, config.ops)
    first = {name: dim.choices[0] for name, dim in space.dimensions.items()}
    sizes = ("nodes", "width", "cells_per_stage", "reductions")
    return first | {key: getattr(config, key) for key in sizes}


def _check_recipe(template: Mapping[str, Any], config: DartsConfig, task: Task, out: Path) -> None:
    """Fill the recipe with a stand-in cell of the searched space, build its model and run it
    on the task's inputs: a wrong builder, stage or task fails before the search."""
    inputs = task.example_inputs(2)
    x = inputs[0]
    shape = {"dims": x.dim() - 2, "in_channels": int(x.shape[1]), "image_size": int(x.shape[-1])}
    recipe = _recipe(template, _stand_in(config) | shape, out)
    model = load_model(recipe.model).eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:  # any failure of the user's builder on these inputs
        raise ConfigError(
            f"darts spec: the recipe's model cannot run on the task's inputs "
            f"({'x'.join(str(n) for n in x.shape)}): {first_line(e)}"
        ) from None


def _recipe(template: Mapping[str, Any], candidate: dict[str, Any], out: Path) -> Any:
    filled = fill(template, candidate, cell_space(1))
    filled["output"] = str(out)
    return parse_recipe(filled, str(template.get("name", "darts")))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `path` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
