"""The stage registry: a stage name maps to its config class and its apply function.

Recipes, the CLI and search all go through `get_stage`, so a new algorithm is one file
plus one `@register` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from netchisel.core.context import Context
    from netchisel.core.task import Task

ApplyFn = Callable[["nn.Module", Any, "Context"], "nn.Module"]


@dataclass(frozen=True)
class Stage:
    """A registered algorithm: its name, its config class and `apply(model, config, ctx)`."""

    name: str
    config_class: type[StageConfig]
    apply: ApplyFn

    def __call__(self, model: nn.Module, config: StageConfig, ctx: Context) -> nn.Module:
        return self.apply(model, config, ctx)


_STAGES: dict[str, Stage] = {}


def register(name: str, config_class: type[StageConfig]) -> Callable[[ApplyFn], ApplyFn]:
    """Register `apply` under `name`.

    Example:
        >>> @register("example.identity", StageConfig)
        ... def identity(model, config, ctx):
        ...     return model
        >>> get_stage("example.identity").config_class is StageConfig
        True
    """

    def decorate(apply: ApplyFn) -> ApplyFn:
        if name in _STAGES and _STAGES[name].apply is not apply:
            raise ValueError(f"stage {name!r} is registered twice")
        _STAGES[name] = Stage(name, config_class, apply)
        return apply

    return decorate


def get_stage(name: str) -> Stage:
    """Return the stage called `name`, or a ConfigError listing the known ones."""
    _load_builtin_stages()
    if name not in _STAGES:
        raise ConfigError(f"unknown stage {name!r} (known: {', '.join(stage_names())})")
    return _STAGES[name]


def stage_for_config(config_class: type[StageConfig]) -> Stage:
    """The stage whose config class is `config_class` (for `prune_`, `quantize_`, ...)."""
    _load_builtin_stages()
    for stage in _STAGES.values():
        if stage.config_class is config_class:
            return stage
    raise ConfigError(f"{config_class.__name__} is not the config of any registered stage")


def stage_names() -> list[str]:
    """All registered stage names, sorted."""
    _load_builtin_stages()
    return sorted(n for n in _STAGES if not n.startswith("example."))


def _load_builtin_stages() -> None:
    # Importing the stage modules runs their @register lines.
    import netchisel.pipeline.stages  # noqa: F401


def apply_config(
    model: nn.Module, config: StageConfig, task: Task | None = None, *, seed: int = 0
) -> nn.Module:
    """Run the stage registered for `config` on `model` (the body of `prune_`, `quantize_`)."""
    from netchisel.core.context import Context

    stage = stage_for_config(type(config))
    return stage(model, config, Context(task, quiet=True, seed=seed))
