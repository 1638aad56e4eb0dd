"""Run a search: an Optuna study over a spec's space, one or many workers, resumable.

Optuna is the engine (study, storage, samplers, pruners, Pareto front); this module wires a
`SearchSpec` to it: the objective builds and measures each candidate (`evaluate.py`), the
study lives in a storage chosen by `storage.py`, and the report is written at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from netchisel.core.errors import ConfigError, Interrupted, ModelError, first_line
from netchisel.pipeline.runner import check_output_parent
from netchisel.search.evaluate import evaluate_candidate
from netchisel.search.spec import SearchSpec, check_metrics, load_search_spec, parse_search_spec
from netchisel.search.storage import (
    counted_trials,
    is_local,
    open_storage,
    requeue_interrupted,
    search_lock,
    storage_url,
)

SPEC_FILE = "search.yaml"
# Failures of one candidate (a shape that does not fit, a diverging run) are recorded on the
# trial and the search goes on; a ConfigError means the spec is wrong and stops it.
CANDIDATE_ERRORS = (ModelError, RuntimeError, ValueError, ArithmeticError)
ABORT_AFTER_FAILURES = 3


@dataclass(frozen=True)
class SearchResult:
    """What `run_search` made: the output directory, the report data and the study."""

    directory: Path
    report: dict[str, Any]
    study: optuna.Study


def run_search(
    spec: str | Path | SearchSpec,
    *,
    output: str | Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    trials: int | None = None,
    quiet: bool = False,
) -> SearchResult:
    """Run (or continue) a search and write its report and best candidates.

    Running the same command again after an interruption continues the study: completed
    trials are kept and the interrupted ones are run again. Everything the spec names is
    checked before the study is opened (`check_metrics`), so a corrected spec runs under the
    same output.

    Example:
        >>> result = run_search("examples/search/hpo_cnn.yaml", quiet=True)  # doctest: +SKIP
        >>> len(result.report["pareto"]) >= 1  # doctest: +SKIP
        True
    """
    if not isinstance(spec, SearchSpec):
        spec = load_search_spec(spec)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    target = trials if trials is not None else spec.trials
    if target < 1:
        raise ConfigError(f"--trials must be >= 1, got {target}")
    out = Path(output) if output is not None else spec.output
    check_search_output(out)
    url = storage_url(out, storage or spec.storage, workers)
    check_metrics(spec)
    lock = search_lock(out) if is_local(url) else contextlib.nullcontext()
    try:
        with lock:
            return _search(spec, out, url, workers, target, quiet)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: the finished trials are kept in {out}; run the same command to continue"
        ) from None


def _search(
    spec: SearchSpec, out: Path, url: str, workers: int, target: int, quiet: bool
) -> SearchResult:
    """Open the study, run the missing trials and write the report (holding the lock)."""
    from netchisel.search.report import write_search_report

    study = open_study(spec, url)
    out.mkdir(parents=True, exist_ok=True)
    if is_local(url):
        requeue_interrupted(study)
    (out / SPEC_FILE).write_text(yaml.safe_dump(dict(spec.raw), sort_keys=False))
    with _progress(study, target, spec, quiet) as update:
        if workers == 1:
            optimize(spec, url, out, target, alone=True, on_trial=update)
        else:
            _run_workers(spec, url, out, target, workers, update)
        update()
    _check_not_all_failed(study)
    report = write_search_report(study, spec, out, url)
    return SearchResult(out, report, study)


def check_search_output(out: Path) -> None:
    """Refuse an output that is a file, under a file or not writable, or a non-empty folder
    that is not a search."""
    check_output_parent(out)
    if out.is_dir() and any(out.iterdir()) and not (out / SPEC_FILE).is_file():
        raise ConfigError(
            f"output {out} is not empty and is not a netchisel search: choose another directory"
        )


def open_study(spec: SearchSpec, url: str) -> optuna.Study:
    """Create the spec's study in the storage, or load it if the same spec made it before."""
    storage = open_storage(url)
    fingerprint = spec_fingerprint(spec)
    try:
        study = optuna.create_study(
            study_name=spec.name, storage=storage, directions=spec.objectives.directions()
        )
    except optuna.exceptions.DuplicatedStudyError:  # made earlier, or by another machine now
        study = optuna.load_study(study_name=spec.name, storage=storage)
    made_by = study.user_attrs.get("spec_fingerprint")
    if made_by is None:  # new (or its creator has not written the attributes yet)
        study.set_user_attr("spec_fingerprint", fingerprint)
        study.set_user_attr("objectives", spec.objectives.names())
    elif made_by != fingerprint:
        raise ConfigError(
            f"study {spec.name!r} in this storage was made by a different spec (space, recipe or "
            "objectives changed): choose another name or output"
        )
    return study


def spec_fingerprint(spec: SearchSpec) -> str:
    """A hash of what decides the trials' meaning: space, recipe, objectives, seed."""
    keys = ("space", "recipe", "objectives", "constraints", "mode", "weights", "reward", "seed")
    relevant = {k: spec.raw.get(k) for k in keys}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def optimize(
    spec: SearchSpec,
    url: str,
    out: Path,
    target: int,
    *,
    alone: bool = False,
    on_trial: Callable[[], None] | None = None,
) -> None:
    """Run trials in this process until the study has `target` counted trials.

    `alone`: no other process works on the study, so exactly the missing trials are run.
    Workers sharing a study count the other workers' running trials as spent, so together
    they run the budget (one extra only if two start a trial in the same instant).
    """
    study = optuna.load_study(
        study_name=spec.name,
        storage=open_storage(url),
        sampler=make_study_sampler(spec),
        pruner=make_pruner(spec.pruner),
    )
    remaining = target - len(counted_trials(study))
    if remaining <= 0:
        return

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial()
        if budget_spent(study, target, alone):
            study.stop()

    study.optimize(
        lambda trial: objective(spec, trial, out),
        n_trials=remaining if alone else None,
        timeout=spec.timeout_minutes * 60 if spec.timeout_minutes else None,
        catch=CANDIDATE_ERRORS,
        callbacks=[after_trial],
        gc_after_trial=True,
    )


def budget_spent(study: optuna.Study, target: int, alone: bool) -> bool:
    """True when no trial should start: `target` counted (other workers' running trials
    included, unless `alone`), or every trial so far failed.

    Example:
        >>> study = optuna.create_study()
        >>> _ = study.ask()  # another worker's running trial
        >>> budget_spent(study, 1, alone=False), budget_spent(study, 1, alone=True)
        (True, False)
    """
    counted = counted_trials(study)
    running = 0 if alone else len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return len(counted) + running >= target or _all_failed(counted)


def objective(spec: SearchSpec, trial: optuna.Trial, out: Path) -> list[float]:
    """Build, train and measure the trial's candidate; record everything on the trial."""
    candidate = spec.space.suggest(trial)
    trial.set_user_attr("candidate", candidate)
    directory = out / "trials" / f"{trial.number:05d}"
    report = _pruning_reporter(spec, trial) if spec.pruner != "none" else None
    try:
        evaluation = evaluate_candidate(spec, candidate, directory, report=report)
    except optuna.TrialPruned:
        raise
    except KeyboardInterrupt:  # Optuna fails the trial; it is not counted and is run again
        trial.set_user_attr("interrupted", True)
        trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except Exception as e:
        trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}")
        raise
    metrics = evaluation.metrics
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("test_metrics", evaluation.test_metrics)
    trial.set_user_attr("artifact", str(evaluation.artifact.relative_to(out)))
    violations = spec.objectives.violations(metrics)
    trial.set_user_attr("constraints", violations)
    # Optuna's own record, which its constraint-aware samplers (TPE, NSGA-II, GP) read
    for limit, value in zip(spec.objectives.limits, violations, strict=True):
        trial.set_constraint(limit.metric, value)
    return spec.objectives.values(metrics)


def _pruning_reporter(
    spec: SearchSpec, trial: optuna.Trial
) -> Callable[[int, dict[str, float]], None]:
    metric = spec.objectives.targets[0].metric

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            raise ConfigError(
                f"search.pruner: the objective {metric!r} is not a task metric measured while "
                f"training (have: {', '.join(metrics)}); drop the pruner"
            )
        trial.report(metrics[metric], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return report


def make_study_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """The spec's strategy. Every strategy draws its randomness from (seed, trial number), so
    a resumed run and several workers sample as one uninterrupted process would."""
    from netchisel.search.strategies import make_sampler

    grid = spec.space.grid() if spec.strategy == "grid" else None
    return make_sampler(
        spec.strategy, seed=spec.seed, grid=grid, options=dict(spec.strategy_options)
    )


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna's pruner by name (`none` never prunes)."""
    pruners: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
    }
    return pruners[name]()


def _all_failed(counted: list[optuna.trial.FrozenTrial]) -> bool:
    return len(counted) >= ABORT_AFTER_FAILURES and all(t.state == TrialState.FAIL for t in counted)


def _check_not_all_failed(study: optuna.Study) -> None:
    counted = counted_trials(study)
    if counted and all(t.state == TrialState.FAIL for t in counted):
        error = next((t.user_attrs["error"] for t in counted if "error" in t.user_attrs), "?")
        raise ConfigError(f"every trial failed ({len(counted)}); the first: {error}")


def _worker_main(raw: dict[str, Any], name: str, url: str, out: str, target: int) -> None:
    _die_with_parent()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_search_spec(raw, name)
    try:
        optimize(spec, url, Path(out), target)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker; the main process says it once
        sys.exit(130)


def _die_with_parent() -> None:
    """Linux: a worker is killed when the search process dies (kill -9 included), so the
    command run again finds no live worker still writing the trials it requeues."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_workers(
    spec: SearchSpec, url: str, out: Path, target: int, workers: int, update: Callable[[], None]
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_main,
            args=(dict(spec.raw), spec.name, url, str(out), target),
        )
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(1.0)
            update()
    finally:
        for process in processes:
            process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise ConfigError(
            f"{len(failed)} of {workers} workers exited with an error (codes {failed})"
        )


@contextlib.contextmanager
def _progress(
    study: optuna.Study, target: int, spec: SearchSpec, quiet: bool
) -> Iterator[Callable[[], None]]:
    """A progress bar: trials done of the budget, best value so far, Pareto front size."""
    if quiet:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("search"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns) as bar:
        handle = bar.add_task("", total=target)
        done = len(counted_trials(study))
        if done:
            requeued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            bar.console.print(
                f"continuing search {spec.name!r}: {done} of {target} trials already done"
                + (f", {requeued} interrupted ones queued again" if requeued else "")
            )

        def update() -> None:
            counted = counted_trials(study)
            bar.update(
                handle, completed=min(len(counted), target), description=_status(study, spec)
            )

        update()
        yield update


def _status(study: optuna.Study, spec: SearchSpec) -> str:
    from netchisel.search.report import best_trials, is_feasible

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if is_feasible(t)]
    if not feasible:
        return "no feasible trial yet" if complete else "no trial complete yet"
    directions = spec.objectives.directions()
    if len(directions) == 1:
        best = best_trials(feasible, directions)[0]
        return f"best {spec.objectives.names()[0]} {best.values[0]:.4g}"
    return f"Pareto front {len(best_trials(feasible, directions, spec.objectives.names()))}"
