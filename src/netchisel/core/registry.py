"""The handler table: a stage's config class maps to the function that applies it.

A config's YAML name is its class attribute `NAME`, written once. Algorithms register their
`apply(model, config, ctx)` against the config type (`@register(UnstructuredConfig)`), as
torchao's handlers are keyed by config type; `netchisel.stages` lists every stage explicitly,
and the family entry points (`prune_`, `quantize_`, ...) run a config through `apply_stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from netchisel.core.config import StageConfig
from netchisel.core.conv1d import guarded_if_conv1d
from netchisel.core.errors import ConfigError

if TYPE_CHECKING:
    from netchisel.core.context import Context
    from netchisel.core.task import Task

ApplyFn = Callable[["nn.Module", Any, "Context"], "nn.Module"]
FAMILY_ENTRIES = {
    "prune": "prune_",
    "quantize": "quantize_",
    "factorize": "factorize_",
    "distill": "distill_",
    "dynamic": "dynamic_",
}


SWAPPING = ("prune", "quantize")
"""Families whose stages may swap a model's Conv1D layers for Linears when they choose."""


@dataclass(frozen=True)
class Stage:
    """A registered algorithm: its config class and `apply(model, config, ctx)`."""

    config_class: type[StageConfig]
    apply: ApplyFn

    @property
    def name(self) -> str:
        """The YAML name, `config_class.NAME`."""
        return self.config_class.NAME

    def __call__(self, model: nn.Module, config: StageConfig, ctx: Context) -> nn.Module:
        # A pruner or quantizer choosing its layers swaps GPT-2's Conv1D for equal Linears
        # (core.conv1d); one that then fails, wherever it does, puts the Conv1D back.
        if not isinstance(model, nn.Module) or self.name.partition(".")[0] not in SWAPPING:
            return self.apply(model, config, ctx)
        with guarded_if_conv1d(model):
            return self.apply(model, config, ctx)


_HANDLERS: dict[type[StageConfig], Stage] = {}


def register(config_class: type[StageConfig]) -> Callable[[ApplyFn], ApplyFn]:
    """Register `apply` as the handler of `config_class` (whose `NAME` is the stage name).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class IdentityConfig(StageConfig):
        ...     NAME = "example.identity"
        >>> @register(IdentityConfig)
        ... def identity(model, config, ctx):
        ...     return model
        >>> handler(IdentityConfig).name
        'example.identity'
    """
    if not config_class.NAME:
        raise ValueError(f"{config_class.__name__} has no NAME")

    def decorate(apply: ApplyFn) -> ApplyFn:
        known = _HANDLERS.get(config_class)
        if known is not None and known.apply is not apply:
            raise ValueError(f"{config_class.__name__} is registered twice")
        _HANDLERS[config_class] = Stage(config_class, apply)
        return apply

    return decorate


def handler(config_class: type[StageConfig]) -> Stage:
    """The stage registered for `config_class`; a ConfigError when there is none."""
    if config_class not in _HANDLERS:
        raise ConfigError(f"{config_class.__name__} is not the config of any registered stage")
    return _HANDLERS[config_class]


def registered() -> list[Stage]:
    """Every registered stage (the conformance test compares it with `netchisel.stages`)."""
    return list(_HANDLERS.values())


def apply_stage(
    model: nn.Module,
    config: StageConfig,
    task: Task | None = None,
    *,
    family: str,
    seed: int = 0,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Run `config`'s stage on `model` in place: the body of `prune_`, `quantize_`, ...

    A config of another family is refused with the call to use instead.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class NoopConfig(StageConfig):
        ...     NAME = "quantize.noop"
        >>> apply_stage(None, NoopConfig(), family="prune")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: prune_ got NoopConfig, a quantize stage: call ...
    """
    from netchisel.core.context import Context

    own = config.NAME.partition(".")[0]
    if own != family:
        right = FAMILY_ENTRIES.get(own)
        fix = f"call netchisel.{right}" if right else "run it in a recipe"
        raise ConfigError(
            f"{FAMILY_ENTRIES[family]} got {type(config).__name__}, a {own} stage: {fix}"
        )
    return handler(type(config))(model, config, Context(task, teacher, quiet=True, seed=seed))
