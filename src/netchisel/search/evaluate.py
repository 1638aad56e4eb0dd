"""Evaluate one candidate: build it from the recipe template, run the stages, measure it.

The metrics a search optimises are those of the validation split; the test split's are
recorded beside them for the report and never used to choose. Latency's p10 and p90 are
recorded beside its median: the report's front ties candidates whose ranges overlap.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from netchisel.artifact.store import artifact_bytes, save
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.pipeline.runner import input_spec, profile_with
from netchisel.pipeline.sources import load_model, load_task, stage_context
from netchisel.search.space import Candidate
from netchisel.search.spec import SearchSpec
from netchisel.stages import get_stage

# Timed calls per candidate at least: with 20, p10 and p90 are the 3rd fastest and 3rd
# slowest call, a spread a single outlier does not set (fewer in `profile: repeats` are raised).
MIN_LATENCY_REPEATS = 20


@dataclass(frozen=True)
class Evaluation:
    """What one candidate measured: validation metrics + profile, test metrics, its artifact."""

    metrics: dict[str, float]
    test_metrics: dict[str, float]
    artifact: Path


def evaluate_candidate(
    spec: SearchSpec,
    candidate: Candidate,
    directory: Path,
    *,
    report: Callable[[int, dict[str, float]], None] | None = None,
) -> Evaluation:
    """Build, train (the recipe's stages), evaluate and profile one candidate.

    The model is saved as an artifact in `directory / "model"`; its size on disk is the
    `bytes_on_disk` metric. `report(epoch, validation metrics)` is called after every
    training epoch when given (Optuna's pruners use it).

    Example:
        >>> out = Path("runs/s/trials/0")  # doctest: +SKIP
        >>> evaluation = evaluate_candidate(spec, {"width": 16}, out)  # doctest: +SKIP
        >>> evaluation.metrics["accuracy"], evaluation.metrics["latency_ms"]  # doctest: +SKIP
        (97.5, 0.41)
    """
    recipe = spec.recipe(candidate, directory)
    torch.manual_seed(recipe.seed)
    model = load_model(recipe.model).to(recipe.device)
    teacher = copy.deepcopy(model).eval()  # the `distill` stage's default teacher
    task = load_task(recipe.task, recipe.model, teacher)
    if task is None:
        raise ConfigError("search.recipe: add 'task:' so candidates can be trained and evaluated")
    val = "val" if "val" in task.splits else None
    on_epoch = None
    if report is not None:
        on_epoch = lambda epoch, net: report(epoch, task.evaluate(net, split=val))  # noqa: E731
    ctx = Context(task, teacher, recipe.device, recipe.seed, directory, True, on_epoch=on_epoch)
    for name, config in recipe.stages:
        model = get_stage(name)(model, config, stage_context(config, ctx))
    inputs = task.example_inputs(recipe.profile.batch_size)
    settings = recipe.profile
    if settings.latency and settings.repeats < MIN_LATENCY_REPEATS:
        settings = dataclasses.replace(settings, repeats=MIN_LATENCY_REPEATS)
    measured = profile_with(settings, model, inputs)
    metadata: dict[str, Any] = {
        "inputs": [input_spec(t) for t in inputs],
        "task": task.name,
        "candidate": candidate,
    }
    artifact = save(model, directory / "model", metadata=metadata)
    measured = dataclasses.replace(measured, bytes_on_disk=artifact_bytes(artifact))
    metrics = {**measured.summary(), **task.evaluate(model, split=val)}
    if measured.latency is not None:
        metrics["latency_p10_ms"] = measured.latency.p10_ms
        metrics["latency_p90_ms"] = measured.latency.p90_ms
    test = task.evaluate(model, split="test") if "test" in task.splits else {}
    return Evaluation(_numbers(metrics), _numbers(test), artifact)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v is not None}
