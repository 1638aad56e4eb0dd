"""Sources: what a recipe's `model:`, `task:` and a stage's `teacher:` name, parsed and loaded.

A reference is data (a zoo name, `{builder: "package.module:function"}`, `{artifact: dir}`);
this module turns it into a module or a task. The runner and the search load through it; a
stage never does: a stage that names a teacher (`distill`) gets the loaded model as
`ctx.teacher` from `stage_context`, so no family reaches up into the pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from netchisel.artifact.store import load
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.modules import build
from netchisel.core.task import Task

MODEL_KINDS = ("zoo", "builder", "artifact")
"""What a `model:` or a `teacher:` may be."""
TASK_KINDS = ("zoo", "builder")
"""What a `task:` may be."""


@dataclass(frozen=True)
class SourceSpec:
    """Where a model or task comes from: `zoo`, `builder` or `artifact`, plus kwargs.

    `trust` lists the user's own classes and builders ("package.module:Name") that an
    artifact may name (docs/security.md): a recipe is code, so it may vouch for them.
    """

    kind: Literal["zoo", "builder", "artifact"]
    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    trust: tuple[str, ...] = ()


def parse_source(where: str, value: Any, kinds: tuple[str, ...]) -> SourceSpec:
    """Parse a model or task source (`model:`, `task:`, distill's `teacher:`) into a SourceSpec.

    `value` is a zoo name or a mapping with exactly one of `kinds`; `where` names the field in
    errors.

    Example:
        >>> parse_source("recipe.model", {"zoo": "cnn", "kwargs": {"width": 8}}, ("zoo",))
        SourceSpec(kind='zoo', ref='cnn', kwargs={'width': 8}, pretrained=True, trust=())
    """
    if isinstance(value, str):
        return SourceSpec("zoo", value)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a name or a mapping with one of {', '.join(kinds)}")
    found = [k for k in kinds if k in value]
    if len(found) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(kinds)}")
    kind = found[0]
    allowed = {
        "zoo": ("zoo", "kwargs", "pretrained"),
        "builder": ("builder", "kwargs"),
        "artifact": ("artifact", "trust"),
    }[kind]
    extra = {k: v for k, v in value.items() if k not in allowed}
    if kind == "zoo" and where == "recipe.task":
        # Zoo tasks take their options inline: {zoo: digits32, batch_size: 128}.
        return SourceSpec("zoo", str(value["zoo"]), {**value.get("kwargs", {}), **extra})
    reject_unknown(where, value, allowed)
    kwargs = value.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.kwargs: expected a mapping, got {kwargs!r}")
    pretrained = value.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise ConfigError(f"{where}.pretrained: expected true or false, got {pretrained!r}")
    trust = value.get("trust", [])
    if not isinstance(trust, list) or not all(isinstance(t, str) for t in trust):
        raise ConfigError(f"{where}.trust: expected a list of 'package.module:Name', got {trust!r}")
    ref = str(value[kind])
    return SourceSpec(kind, ref, dict(kwargs), pretrained, tuple(trust))  # type: ignore[arg-type]


def reject_unknown(where: str, data: dict[str, Any], known: tuple[str, ...]) -> None:
    """One error naming the first key of `data` not in `known`, and listing the known ones.

    Example:
        >>> reject_unknown("recipe", {"seed": 0}, ("seed", "model"))
    """
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


def load_model(spec: SourceSpec) -> nn.Module:
    """A model (or a teacher): a zoo model (trained reference or fresh), a builder, or an artifact.

    Example:
        >>> load_model(SourceSpec("zoo", "mlp", {"hidden": [16]}, pretrained=False)).fc1
        Linear(in_features=64, out_features=16, bias=True)
    """
    if spec.kind == "artifact":
        return load(spec.ref, trust=spec.trust)
    if spec.kind == "builder":
        return build(spec.ref, spec.kwargs)
    from netchisel.zoo import models, train

    if spec.pretrained:
        return train.pretrained(spec.ref, **spec.kwargs)
    return models.build(spec.ref, **spec.kwargs)


def load_task(spec: SourceSpec | None, model_spec: SourceSpec, teacher: nn.Module) -> Task | None:
    """The recipe's task; a zoo model without one gets the task it was trained on.

    Example:
        >>> load_task(None, SourceSpec("zoo", "cnn"), nn.Identity()).name
        'digits32'
    """
    from netchisel.zoo import data, train

    if spec is None:
        if model_spec.kind != "zoo":
            return None
        name, kwargs = train.default_task(model_spec.ref, **model_spec.kwargs)
        spec = SourceSpec("zoo", name, kwargs)
    if spec.kind == "builder":
        from netchisel.core.modules import resolve_builder

        task = resolve_builder(spec.ref)(**spec.kwargs)
        if not isinstance(task, Task):
            raise ConfigError(
                f"task builder {spec.ref!r} returned {type(task).__name__}, not a Task"
            )
        return task
    kwargs = dict(spec.kwargs)
    if spec.ref == "sentences":
        kwargs.setdefault("reference", teacher)
    return data.task(spec.ref, **kwargs)


def teacher_source(config: StageConfig, where: str) -> SourceSpec | None:
    """The teacher a stage's config names (its `teacher` field, read like `model:`), or None.

    Example:
        >>> from netchisel.distill import DistillConfig
        >>> teacher_source(DistillConfig(teacher="mlp"), "distill").ref
        'mlp'
    """
    value = getattr(config, "teacher", None)
    if value is None:
        return None
    return parse_source(f"{where}.teacher", value, MODEL_KINDS)


def stage_context(config: StageConfig, ctx: Context, where: str = "") -> Context:
    """The context a stage runs in: `ctx`, with the teacher its config names (loaded, on
    `ctx.device`, in eval mode) in place of the original model. Records are shared with `ctx`.

    Example:
        >>> from netchisel.distill import DistillConfig
        >>> ctx = Context(task=None, quiet=True)
        >>> stage_context(DistillConfig(), ctx) is ctx
        True
    """
    spec = teacher_source(config, where or config.NAME)
    if spec is None:
        return ctx
    return dataclasses.replace(ctx, teacher=load_model(spec).to(ctx.device).eval())
