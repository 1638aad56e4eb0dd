"""The runner: build the model and task, then profile and evaluate before and after each stage.

It writes the final model as an artifact (`model/`), and report.json, report.md and
report.html in the output directory. All four are written into a staging directory beside
the output and put in place in one rename, so an interrupted run (Ctrl-C, kill -9) leaves
the previous run there whole, and a report always sits beside the model it describes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netchisel.artifact.store import artifact_bytes, read_manifest, save
from netchisel.core.context import Context
from netchisel.core.errors import (
    ConfigError,
    Interrupted,
    ModelError,
    NetChiselError,
    first_line,
)
from netchisel.core.files import commit_dir, remove_stale, sigint_held, staging_dir
from netchisel.core.task import Task
from netchisel.measure import Profile, profile
from netchisel.measure.machine import machine_info
from netchisel.pipeline.recipe import ProfileSettings, Recipe, load_recipe
from netchisel.pipeline.sources import load_model, load_task, stage_context
from netchisel.stages import get_stage


@dataclass(frozen=True)
class RunResult:
    """What `run_recipe` made: the output directory, the report data and the final model."""

    directory: Path
    report: dict[str, Any]
    model: nn.Module


def run_recipe(
    recipe: str | Path | Recipe, *, output: str | Path | None = None, quiet: bool = False
) -> RunResult:
    """Run a recipe end to end and write the artifact and the reports.

    Example:
        >>> result = run_recipe("examples/recipes/digits_cnn.yaml", quiet=True)  # doctest: +SKIP
        >>> result.report["steps"][-1]["metrics"]["accuracy"]  # doctest: +SKIP
        98.9
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(output) if output is not None else recipe.output
    if out.is_symlink():
        out = out.resolve()  # the commit replaces the directory, not the link to it
    check_output_dir(out)
    had_run = (out / "report.json").is_file()
    staging: Path | None = None
    committed = False
    try:
        torch.manual_seed(recipe.seed)
        if recipe.model.kind == "artifact":
            check_free_space(out, artifact_bytes(recipe.model.ref))
        model = load_model(recipe.model).to(recipe.device)
        check_free_space(out, _tensor_bytes(model))
        remove_stale(out)
        staging = staging_dir(out)
        report, model = _run(recipe, model, staging, quiet)
        with sigint_held():  # a Ctrl-C during the commit arrives once `committed` is right
            commit_dir(staging, out)
            committed = True
    except KeyboardInterrupt:
        if committed:
            raise Interrupted(f"interrupted after the run was written: {out} is complete") from None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        kept = "the previous run there is intact" if had_run else "it was not created"
        raise Interrupted(f"interrupted: nothing written to {out} ({kept})") from None
    except BaseException:
        if staging is not None and not committed:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(out, report, model)


def _run(
    recipe: Recipe, model: nn.Module, staging: Path, quiet: bool
) -> tuple[dict[str, Any], nn.Module]:
    """Run the stages and write the artifact and the reports into `staging`."""
    from netchisel.report.render import write_reports

    teacher = copy.deepcopy(model).eval()
    task = load_task(recipe.task, recipe.model, teacher)
    ctx = Context(task, teacher, recipe.device, recipe.seed, staging, quiet)
    inputs = _example_inputs(model, task, recipe)
    metadata = {"inputs": [input_spec(t) for t in inputs], "task": task.name if task else None}

    try:
        steps = [_step("original", {}, model, task, inputs, recipe, metadata, 0.0, {})]
    except RuntimeError as e:  # the first forward: a model that does not fit the task's inputs
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise ModelError(
            f"the model cannot run on the task's inputs ({shapes}): "
            f"{first_line(e)}; check that 'task:' is the one the model is for"
        ) from None
    for index, (name, config) in enumerate(recipe.stages):
        ctx.records = {}
        started = time.perf_counter()
        try:
            model = get_stage(name)(model, config, stage_context(config, ctx))
        except NetChiselError as e:
            raise in_stage(e, index, name) from None
        seconds = time.perf_counter() - started
        steps.append(
            _step(
                name, config.to_dict(), model, task, inputs, recipe, metadata, seconds, ctx.records
            )
        )
    calibration = (  # a float model's int8 ONNX export is calibrated on the task's data
        [task.inputs_of(b) for b in task.calibration_batches(512)]
        if task is not None and "onnx_int8" in recipe.export
        else None
    )
    artifact = save(
        model,
        staging / "model",
        metadata=metadata,
        export=recipe.export,
        example_inputs=inputs,
        calibration=calibration,
    )
    steps[-1]["profile"]["bytes_on_disk"] = artifact_bytes(artifact)
    report = {
        "recipe": {"name": recipe.name, **recipe.raw},
        "machine": machine_info(),
        "task": _task_info(task),
        "steps": steps,
        "artifact": {
            "path": "model",
            "bytes": artifact_bytes(artifact),
            # which model this report describes: the checksums of the artifact's files
            "files": read_manifest(artifact)["files"],
            "exports": {
                kind: (artifact / f"model.{kind}").stat().st_size for kind in recipe.export
            },
        },
    }
    write_reports(report, staging)
    return report, model


def in_stage(error: NetChiselError, index: int, name: str) -> NetChiselError:
    """The same error, saying which stage of the recipe raised it (unless it already does).

    Example:
        >>> str(in_stage(ConfigError("include pattern 'x' matches no layer"), 1, "factorize.svd"))
        "stages[1] factorize.svd: include pattern 'x' matches no layer"
    """
    if str(error).startswith(name):
        return error
    return type(error)(f"stages[{index}] {name}: {error}")


RUN_FILES = ("model", "report.json", "report.md", "report.html", "darts.json")
"""What a run writes (a DARTS spec adds darts.json, its search trace): replaced on a re-run."""


def check_output_dir(out: Path) -> None:
    """Refuse, before any work, an output the run could not write or would wrongly replace.

    The output's first existing ancestor must be a writable directory. An earlier run's
    directory (it has report.json and nothing else of the user's) is replaced as a whole;
    an empty one is used.

    Example:
        >>> import tempfile
        >>> check_output_dir(Path(tempfile.mkdtemp()) / "new" / "out")
    """
    check_output_parent(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise ConfigError(
            f"output {out} is not empty and is not a netchisel run: choose another directory"
        )
    if (out / "model").exists() and not (out / "model" / "manifest.json").is_file():
        raise ConfigError(f"{out / 'model'} exists and is not an artifact: remove it first")
    if out.is_dir():
        foreign = sorted(
            p.name
            for p in out.iterdir()
            if p.name not in RUN_FILES and not p.name.startswith(".report.")
        )
        if foreign:
            raise ConfigError(
                f"output {out} is an earlier run with other files in it ({', '.join(foreign)}), "
                "which the new run would delete: move them or choose another directory"
            )


def check_output_parent(out: Path) -> None:
    """Refuse an output that is a file, or whose first existing ancestor is not a writable
    directory (the run could not create it).

    Example:
        >>> try:
        ...     check_output_parent(Path("/dev/null/out"))
        ... except ConfigError as e:
        ...     print(e)
        output /dev/null/out: /dev/null is a file, not a directory: choose another output
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file: choose a directory")
    parent = _existing_ancestor(out.parent)
    if not parent.is_dir():
        raise ConfigError(
            f"output {out}: {parent} is a file, not a directory: choose another output"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output {out}: {parent} is not writable: choose another output")


def check_free_space(out: Path, needed: int) -> None:
    """Refuse an output whose disk has less than `needed` bytes free (the input model's
    size: the compressed model and its reports are rarely larger).

    Example:
        >>> import tempfile
        >>> check_free_space(Path(tempfile.mkdtemp()) / "out", 1)
    """
    from netchisel.report.render import human_bytes

    parent = _existing_ancestor(out.parent)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise ConfigError(
            f"output {out}: {human_bytes(free)} free on its disk, the model needs about "
            f"{human_bytes(needed)}: free some space or choose another output"
        )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _tensor_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _example_inputs(
    model: nn.Module, task: Task | None, recipe: Recipe
) -> tuple[torch.Tensor, ...]:
    if task is not None:
        return task.example_inputs(recipe.profile.batch_size)
    if recipe.model.kind == "artifact":
        specs = read_manifest(Path(recipe.model.ref)).get("metadata", {}).get("inputs")
        if specs:
            return inputs_from_specs(specs, recipe.profile.batch_size)
    raise ConfigError("recipe: add 'task:' so the model can be profiled and evaluated")


def inputs_from_specs(specs: list[dict[str, Any]], batch_size: int) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the recorded shapes (batch dimension replaced) and dtypes."""
    return tuple(
        torch.zeros([batch_size, *s["shape"][1:]], dtype=getattr(torch, s["dtype"])) for s in specs
    )


def profile_with(
    settings: ProfileSettings, model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> Profile:
    """Profile `model` as a recipe's `profile:` says (bytes on disk left to the caller, who
    saves the artifact)."""
    return profile(
        model,
        inputs,
        latency=settings.latency,
        backend=settings.backend,
        threads=settings.threads,
        repeats=settings.repeats,
        warmup=settings.warmup,
        on_disk=False,
    )


def input_spec(t: torch.Tensor) -> dict[str, Any]:
    """What an artifact's metadata records of one example input (`inputs_from_specs` reads it)."""
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _step(
    name: str,
    config: dict[str, Any],
    model: nn.Module,
    task: Task | None,
    inputs: tuple[torch.Tensor, ...],
    recipe: Recipe,
    metadata: dict[str, Any],
    seconds: float,
    records: dict[str, Any],
) -> dict[str, Any]:
    measured = profile_with(recipe.profile, model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        measured = dataclasses.replace(
            measured, bytes_on_disk=artifact_bytes(save(model, f"{tmp}/m", metadata=metadata))
        )
    return {
        "name": name,
        "config": config,
        "seconds": seconds,
        "metrics": task.evaluate(model) if task is not None else {},
        "records": records,
        "profile": measured.summary(),
        "latency": measured.latency.to_dict() if measured.latency else None,
        "per_module": {
            "params": measured.params_by_module,
            "flops": measured.flops_by_module,
            "macs": measured.macs_by_module,
        },
        "uncounted_ops": list(measured.uncounted_ops),
    }


def _task_info(task: Task | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "name": task.name,
        "primary_metric": task.primary_metric,
        "higher_is_better": task.higher_is_better,
        "eval_split": task.eval_split,
    }
