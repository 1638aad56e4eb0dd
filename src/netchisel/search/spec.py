"""Search specs: a YAML file naming a space, a recipe template, objectives and a strategy.

```yaml
name: nas_digits32
space:                            # a mapping (see space.py), {nas: macro}, {policy: ...},
  width: {int: [8, 32], step: 8}  # or a list of those, joined
  lr: {float: [1.0e-3, 1.0e-1], log: true}
recipe:                           # a recipe (pipeline/recipe.py) with "$name" placeholders
  model: {zoo: cnn, pretrained: false, kwargs: {width: $width}}
  task: digits32
  stages: [{finetune: {epochs: 2, lr: $lr}}]
  profile: {batch_size: 1, repeats: 20}
objectives: [accuracy, latency_ms]
constraints: {latency_ms: {max: 2.0}}
strategy: tpe                     # or {name: ga, options: {population_size: 16}}
trials: 40
output: runs/nas_digits32
```

Placeholders (`$name`) and how a candidate fills them: `netchisel.search.template`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from netchisel.core.errors import ConfigError, ModelError
from netchisel.pipeline.recipe import Recipe, parse_recipe, read_yaml
from netchisel.search.objectives import Objectives, parse_objectives
from netchisel.search.policy import policy_space_from_spec
from netchisel.search.space import Candidate, Space, parse_space
from netchisel.search.template import check_placeholders, fill

SPEC_KEYS = (
    "name",
    "space",
    "recipe",
    "objectives",
    "constraints",
    "mode",
    "weights",
    "reward",
    "strategy",
    "trials",
    "timeout_minutes",
    "pruner",
    "storage",
    "output",
    "seed",
    "export",
)
PRUNERS = ("none", "median", "successive_halving", "hyperband")
# What `Profile.summary()` gives every candidate (tests keep this in step with it), and the
# latency spread the search records beside the median.
PROFILE_METRICS = (
    "params",
    "params_nonzero",
    "flops",
    "macs",
    "bytes_in_memory",
    "bytes_on_disk",
    "peak_memory_bytes",
    "energy_uj",
    "latency_ms",
    "batch_size",
    "expected_macs",
)
LATENCY_METRICS = ("latency_ms", "latency_p10_ms", "latency_p90_ms")


@dataclass(frozen=True)
class SearchSpec:
    """A parsed, validated search spec."""

    name: str
    space: Space
    template: Mapping[str, Any]
    objectives: Objectives
    strategy: str = "tpe"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    trials: int = 20
    timeout_minutes: float | None = None
    pruner: str = "none"
    storage: str | None = None
    output: Path = Path("runs/search")
    seed: int = 0
    export: int = 3
    raw: Mapping[str, Any] = field(default_factory=dict)

    def recipe(self, candidate: Candidate, output: Path) -> Recipe:
        """The recipe of one candidate (placeholders filled in)."""
        filled = fill(self.template, candidate, self.space)
        filled.update(output=str(output), seed=self.seed, name=f"{self.name}_trial")
        return parse_recipe(filled, self.name)


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search spec YAML file.

    Example:
        >>> load_search_spec("examples/search/hpo_cnn.yaml").strategy  # doctest: +SKIP
        'tpe'
    """
    path = Path(path)
    return parse_search_spec(read_yaml(path, "search spec"), default_name=path.stem)


def parse_search_spec(data: Any, default_name: str = "search") -> SearchSpec:
    """Validate spec data (already parsed from YAML); the template is test-filled once."""
    if not isinstance(data, Mapping):
        raise ConfigError("search spec: expected a mapping with 'space' and 'recipe'")
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"search: unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
    for key in ("space", "recipe"):
        if key not in data:
            raise ConfigError(f"search: {key!r} is required")
    template = data["recipe"]
    if not isinstance(template, Mapping):
        raise ConfigError("search.recipe: expected a recipe mapping with $placeholders")
    for key in ("output", "seed", "name"):
        if key in template:
            raise ConfigError(f"search.recipe.{key}: set {key} at the top of the search spec")
    space = build_space(data["space"], template)
    strategy, options = _strategy(data.get("strategy", "tpe"))
    from netchisel.search.strategies import make_sampler

    make_sampler(  # an unknown strategy or option fails here, before any trial
        strategy, seed=0, grid=space.grid() if strategy == "grid" else None, options=options
    )
    pruner = str(data.get("pruner", "none"))
    if pruner not in PRUNERS:
        raise ConfigError(f"search.pruner: unknown pruner {pruner!r} (known: {', '.join(PRUNERS)})")
    objectives = parse_objectives(data)
    if pruner != "none" and len(objectives.directions()) > 1:
        raise ConfigError("search.pruner: Optuna's pruners need a single objective (use mode)")
    spec = SearchSpec(
        name=str(data.get("name", default_name)),
        space=space,
        template=template,
        objectives=objectives,
        strategy=strategy,
        strategy_options=options,
        trials=_positive_int("trials", data.get("trials", 20)),
        timeout_minutes=_timeout(data.get("timeout_minutes")),
        pruner=pruner,
        storage=str(data["storage"]) if data.get("storage") else None,
        output=Path(str(data.get("output", f"runs/{data.get('name', default_name)}"))),
        seed=_int("seed", data.get("seed", 0)),
        export=_int("export", data.get("export", 3)),
        raw=dict(data),
    )
    check_placeholders(template, space)
    spec.recipe(space.sample(random.Random(spec.seed)), spec.output / "trials" / "check")
    return spec


def check_metrics(spec: SearchSpec) -> None:
    """Refuse, before trial 1, an objective, constraint or weight on a metric no trial measures.

    The profile's names are known (`PROFILE_METRICS`; the latency ones only when the recipe
    measures latency); the task's are those its metrics function returns for one batch on
    the first candidate's model before training, which costs one forward pass. A candidate
    that cannot be built is left to its trial, which records why.

    Example:
        >>> spec = load_search_spec("examples/search/hpo_cnn.yaml")  # doctest: +SKIP
        >>> check_metrics(spec)  # doctest: +SKIP
    """
    recipe = spec.recipe(spec.space.sample(random.Random(spec.seed)), spec.output / "check")
    task_metrics = _task_metrics(recipe)
    if task_metrics is None:
        return
    profile = [m for m in PROFILE_METRICS if recipe.profile.latency or m not in LATENCY_METRICS]
    if recipe.profile.latency:
        profile += [m for m in LATENCY_METRICS if m not in profile]
    objectives = spec.objectives
    wanted = [("objectives", t.metric) for t in objectives.targets if objectives.mode == "pareto"]
    wanted += [(f"constraints.{lim.metric}", lim.metric) for lim in objectives.limits]
    wanted += [(f"weights.{m}", m) for m in objectives.weights]
    if objectives.reward is not None:
        wanted += [("reward.metric", objectives.reward.metric)]
        wanted += [("reward.latency", objectives.reward.latency)]
    for where, metric in wanted:
        if metric not in task_metrics and metric not in profile:
            latency = (
                " (latency_ms needs profile: {latency: true})" if metric in LATENCY_METRICS else ""
            )
            raise ConfigError(
                f"search.{where}: no trial measures {metric!r}{latency}; the task gives "
                f"{', '.join(task_metrics)} and the profile {', '.join(profile)}"
            )
    if spec.pruner != "none" and objectives.targets[0].metric not in task_metrics:
        raise ConfigError(
            f"search.pruner: the objective {objectives.targets[0].metric!r} is not a task "
            f"metric measured while training (the task gives {', '.join(task_metrics)}); "
            "drop the pruner"
        )


def _task_metrics(recipe: Recipe) -> list[str] | None:
    """The names of the task's metrics, from one batch of its evaluation split (the search
    evaluates on `val` where the task has one)."""
    from netchisel.pipeline.sources import load_model, load_task

    try:
        torch.manual_seed(recipe.seed)
        model = load_model(recipe.model).to(recipe.device)
        task = load_task(recipe.task, recipe.model, copy.deepcopy(model).eval())
        if task is None:
            raise ConfigError(
                "search.recipe: add 'task:' so candidates can be trained and evaluated"
            )
        split = "val" if "val" in task.splits else task.eval_split
        batch = tuple(t.to(recipe.device) for t in next(iter(task.loader(split))))
        model.eval()
        with torch.no_grad():
            return list(task.metrics_fn(model, [batch]))
    except (ModelError, RuntimeError, ValueError, ArithmeticError, StopIteration):
        return None  # this candidate's trial will fail and record why


def build_space(data: Any, template: Mapping[str, Any]) -> Space:
    """The space of a spec: a mapping, a named NAS space, a compression policy, or a list."""
    parts = data if isinstance(data, list) else [data]
    if not parts:
        raise ConfigError("search space is empty: give at least one dimension")
    space: Space | None = None
    for i, part in enumerate(parts):
        where = f"search.space[{i}]" if isinstance(data, list) else "search.space"
        piece = _space_part(part, template, where)
        space = piece if space is None else space | piece
    assert space is not None
    return space


def _space_part(part: Any, template: Mapping[str, Any], where: str) -> Space:
    if isinstance(part, Mapping) and "nas" in part:
        from netchisel.search.nas import NAS_SPACES

        name, kwargs = str(part["nas"]), dict(part.get("kwargs") or {})
        if name not in NAS_SPACES:
            raise ConfigError(
                f"{where}.nas: unknown space {name!r} (known: {', '.join(NAS_SPACES)})"
            )
        return NAS_SPACES[name](**kwargs)
    if isinstance(part, Mapping) and "policy" in part:
        return policy_space_from_spec(part, template, where)
    return parse_space(part, where)


def _strategy(value: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and "name" in value and set(value) <= {"name", "options"}:
        options = value.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"search.strategy.options: expected a mapping, got {options!r}")
        return str(value["name"]), dict(options)
    raise ConfigError("search.strategy: expected a name or {name: ..., options: {...}}")


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"search.{key}: expected an integer, got {value!r}")
    return value


def _positive_int(key: str, value: Any) -> int:
    number = _int(key, value)
    if number < 1:
        raise ConfigError(f"search.{key}: must be >= 1, got {number}")
    return number


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"search.timeout_minutes: expected a number > 0, got {value!r}")
    return float(value)
