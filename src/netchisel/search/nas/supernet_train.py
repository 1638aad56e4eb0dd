"""Train a super-net, score its candidates with inherited weights, search them, finish the winner.

- Training is single-path uniform sampling (SPOS, Guo et al. 2020): each step trains one
  candidate drawn uniformly per dimension (`Space.sample`), through the one training loop
  (`core.train.fit`). The sandwich rule (Yu et al. 2019, slimmable networks; BigNAS, Yu et al.
  2020) trains the largest, the smallest and `random_paths` random candidates on every batch
  instead; their losses are averaged (the papers sum the gradients: the same direction, a
  constant factor AdamW normalises away).
- Scoring: a candidate's `subnet` (an ordinary `macro_net` module) gets BatchNorm statistics
  re-estimated on a few training batches (on by default: the shared running statistics mix
  every path's activations, and rankings without re-estimation are known to be unstable, Guo
  et al. 2020 section 3.3), then the task's validation metrics. This takes well under a
  second on the tabular space, so any strategy can search over it (`supernet_objective`).
- The winner is then fine-tuned from its inherited weights or retrained from scratch
  (`train_winner`); or, the usual one-shot final step, the search's best few distinct
  candidates (`top_candidates`) are each trained and the best on validation is kept.

Measured on the 288-architecture tabular benchmark: `bench/nas_supernet.py`, docs/nas_supernet.md.

Example (the whole flow on a toy task; on digits see docs/nas_supernet.md):
    >>> from torch.utils.data import TensorDataset
    >>> from netchisel.core.task import classification_task
    >>> from netchisel.search.nas import TABULAR_KWARGS, tabular_space
    >>> from netchisel.search.objectives import parse_objectives
    >>> from netchisel.search.strategies import make_sampler
    >>> data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    >>> task = classification_task({"train": data, "val": data}, batch_size=16)
    >>> net = SuperNet(tabular_space(), **TABULAR_KWARGS)
    >>> len(train_supernet(net, task, TrainSettings(steps=2, lr=3e-3), seed=0, sandwich=True))
    2
    >>> 0 <= score(net, net.smallest(), task, bn_samples=16)["accuracy"] <= 100
    True
    >>> goals = parse_objectives({"objectives": ["accuracy"]})  # or + "macs", "latency_ms"...
    >>> study = optuna.create_study(directions=goals.directions(),
    ...                             sampler=make_sampler("evolution", seed=0))
    >>> study.optimize(supernet_objective(net, task, goals, bn_samples=16), n_trials=3)
    >>> sorted(study.trials[0].user_attrs["metrics"])
    ['accuracy', 'loss']
    >>> best = study.best_trial.user_attrs["candidate"]
    >>> model = train_winner(net, best, task, TrainSettings(steps=1), inherit=True)
    >>> type(model).__name__  # macro_net's module, ready for profile, compress, save
    'Sequential'
"""

from __future__ import annotations

import random
from collections.abc import Callable

import optuna
import torch
from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.task import Batch, Task
from netchisel.core.train import TrainSettings, fit
from netchisel.factorize.batchnorm import recalibrate_batchnorm_
from netchisel.pipeline.recipe import ProfileSettings
from netchisel.pipeline.runner import profile_with
from netchisel.search.nas.macro import macro_net
from netchisel.search.nas.supernet import SuperNet
from netchisel.search.objectives import Objectives
from netchisel.search.space import Candidate
from netchisel.search.tabular import candidate_key

BN_SAMPLES = 512
"""Train samples BatchNorm statistics are re-estimated on before a candidate is scored."""


def train_supernet(
    supernet: SuperNet,
    task: Task,
    settings: TrainSettings,
    *,
    seed: int = 0,
    sandwich: bool = False,
    random_paths: int = 2,
    quiet: bool = True,
) -> list[float]:
    """Train the shared weights in place (SPOS, or the sandwich rule); the loss of each step.

    Seeded: the paths come from `random.Random(seed)` and `fit` seeds shuffling from `seed`,
    so the same call gives the same weights.
    """
    if random_paths < 0:
        raise ConfigError(f"train_supernet: random_paths must be >= 0, got {random_paths}")
    rng = random.Random(seed)
    extremes = [supernet.largest(), supernet.smallest()] if sandwich else []

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        paths = extremes + [
            supernet.space.sample(rng) for _ in range(random_paths if sandwich else 1)
        ]
        total = torch.zeros(())
        for path in paths:
            supernet.activate(path)
            total = total + task.loss(supernet, batch)
        return total / len(paths)

    return fit(supernet, task, settings, Context(task, seed=seed, quiet=quiet), loss_fn=loss_fn)


def inherited(supernet: SuperNet, candidate: Candidate, task: Task, bn_samples: int) -> nn.Module:
    """The candidate's sub-network with inherited weights, BatchNorm statistics re-estimated
    on `bn_samples` train samples (0: the super-net's shared statistics as they are)."""
    model = supernet.subnet(candidate)
    if bn_samples < 0:
        raise ConfigError(f"bn_samples must be >= 0, got {bn_samples}")
    if bn_samples:
        recalibrate_batchnorm_(model, task, bn_samples)
    return model.eval()


def score(
    supernet: SuperNet,
    candidate: Candidate,
    task: Task,
    *,
    bn_samples: int = BN_SAMPLES,
    split: str = "val",
) -> dict[str, float]:
    """The candidate's metrics on `split` with inherited weights (see `inherited`)."""
    return task.evaluate(inherited(supernet, candidate, task, bn_samples), split=split)


def supernet_objective(
    supernet: SuperNet,
    task: Task,
    objectives: Objectives,
    *,
    bn_samples: int = BN_SAMPLES,
    profile: ProfileSettings | None = None,
    cache: dict[str, dict[str, float]] | None = None,
) -> Callable[[optuna.Trial], list[float]]:
    """An Optuna objective over the super-net's space: any strategy (`make_sampler`) searches it.

    Each trial suggests a candidate, scores it with inherited weights (`score`, val split),
    profiles the sub-network when the objectives name a metric the task does not give
    (params, macs, latency_ms, ...; as `profile` says: batch 1, no latency by default), and
    records the candidate, the metrics and the constraint violations on the trial, as
    `run_search` does. `cache` (candidate key -> metrics) skips candidates scored before: scores are
    deterministic, so a repeat costs nothing.
    """
    settings = profile or ProfileSettings(batch_size=1, latency=False)
    if any(m.startswith("latency") for m in objectives.metrics()) and not settings.latency:
        raise ConfigError(
            "supernet_objective: the objectives name latency; pass profile=ProfileSettings("
            "latency=True)"
        )
    if "bytes_on_disk" in objectives.metrics():
        raise ConfigError(
            "supernet_objective: bytes_on_disk needs a saved artifact per candidate, which a "
            "super-net score does not write; use params or bytes_in_memory"
        )
    cache = {} if cache is None else cache

    def objective(trial: optuna.Trial) -> list[float]:
        candidate = supernet.space.suggest(trial)
        trial.set_user_attr("candidate", candidate)
        key = candidate_key(candidate)
        if key not in cache:
            model = inherited(supernet, candidate, task, bn_samples)
            metrics = dict(task.evaluate(model, split="val"))
            if any(m not in metrics for m in objectives.metrics()):  # params, macs, latency...
                measured = profile_with(settings, model, task.example_inputs(settings.batch_size))
                metrics |= {k: float(v) for k, v in measured.summary().items() if v is not None}
                if measured.latency is not None:
                    metrics["latency_p10_ms"] = measured.latency.p10_ms
                    metrics["latency_p90_ms"] = measured.latency.p90_ms
            cache[key] = metrics
        metrics = cache[key]
        trial.set_user_attr("metrics", metrics)
        violations = objectives.violations(metrics)
        trial.set_user_attr("constraints", violations)
        for limit, value in zip(objectives.limits, violations, strict=True):
            trial.set_constraint(limit.metric, value)
        return objectives.values(metrics)

    return objective


def top_candidates(study: optuna.Study, k: int) -> list[Candidate]:
    """The `k` best distinct candidates of a single-objective search, best first.

    Candidates are the trials' `candidate` user attribute (as `supernet_objective` and
    `run_search` record it); a candidate tried twice counts once, at its best trial; ties go
    to the earlier trial. Fewer than `k` come back when fewer distinct ones were tried.

        >>> study = optuna.create_study(direction="maximize")
        >>> for value, op in [(90.0, "conv"), (95.0, "grouped"), (95.0, "conv")]:
        ...     study.add_trial(optuna.trial.create_trial(
        ...         value=value, params={}, distributions={}, user_attrs={"candidate": {"op": op}}))
        >>> top_candidates(study, 2)
        [{'op': 'grouped'}, {'op': 'conv'}]
    """
    if k < 1:
        raise ConfigError(f"top_candidates: k must be >= 1, got {k}")
    if len(study.directions) != 1:
        raise ConfigError(
            f"top_candidates: the study has {len(study.directions)} objectives; rank a "
            "multi-objective study's trials yourself (e.g. by one value of study.best_trials)"
        )
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ranked = sorted(done, key=lambda t: (-sign * float(t.values[0]), t.number))
    chosen: dict[str, Candidate] = {}
    for trial in ranked:
        candidate = trial.user_attrs["candidate"]
        chosen.setdefault(candidate_key(candidate), candidate)
        if len(chosen) == k:
            break
    return list(chosen.values())


def train_winner(
    supernet: SuperNet,
    candidate: Candidate,
    task: Task,
    settings: TrainSettings,
    *,
    inherit: bool = True,
    seed: int = 0,
    quiet: bool = True,
) -> nn.Module:
    """Train the chosen candidate: fine-tune its inherited weights (`inherit`), or retrain it
    from scratch (`torch.manual_seed(seed)` before `macro_net`). Returns the trained module.
    """
    candidate = supernet.check(candidate)
    if inherit:
        model = supernet.subnet(candidate)
    else:
        torch.manual_seed(seed)
        model = macro_net(**supernet.fixed, **candidate)
    fit(model, task, settings, Context(task, seed=seed, quiet=quiet))
    return model.eval()
