"""Find modules by name, pattern or type, replace them, and remember how a model was built."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn

from netchisel.core.errors import ConfigError, ModelError

_BUILDER_ATTR = "_netchisel_builder"


def mark_builder(model: nn.Module, ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """Record that `model` came from `ref(**kwargs)` ("package.module:function").

    Artifacts store this so `netchisel.load` can rebuild the module tree without pickle.

    Example:
        >>> m = mark_builder(nn.Linear(2, 3), "torch.nn:Linear", {"in_features": 2})
        >>> builder_of(m)[0]
        'torch.nn:Linear'
    """
    object.__setattr__(model, _BUILDER_ATTR, (ref, dict(kwargs)))
    return model


_TRUSTED_ATTR = "__netchisel_builder__"
_REGISTERED: dict[str, object] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def builder(fn: F) -> F:
    """Mark a function (or an nn.Module class) as one that artifacts may name when loaded.

    Loading an artifact calls its builder with kwargs read from the file, and rebuilds module
    classes it names; `netchisel.load` accepts only names it holds in an allow-list (see
    docs/security.md). This decorator adds `fn` to it, under its "module:qualname", once the
    code defining it has been imported. Models from unmarked builders are saved with their
    whole structure described instead.

    Example:
        >>> @builder
        ... def tiny(width: int = 4) -> nn.Module:
        ...     return nn.Linear(width, width)
        >>> is_trusted_builder(tiny)
        True
    """
    setattr(fn, _TRUSTED_ATTR, True)
    _REGISTERED[f"{fn.__module__}:{fn.__qualname__}"] = fn
    return fn


def registered_builders() -> dict[str, object]:
    """Every function and class marked with `@builder` so far, by "module:qualname"."""
    return dict(_REGISTERED)


def is_trusted_builder(fn: object) -> bool:
    """True for nn.Module classes and functions marked with `@builder`."""
    if isinstance(fn, type):
        return issubclass(fn, nn.Module)
    return bool(getattr(fn, _TRUSTED_ATTR, False))


def builder_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The (ref, kwargs) recorded by `mark_builder`, or None."""
    found: tuple[str, dict[str, Any]] | None = getattr(model, _BUILDER_ATTR, None)
    return found


def resolve_builder(ref: str) -> Callable[..., nn.Module]:
    """Import "package.module:function"; a clear error when it does not exist."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"builder {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"builder {ref!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"builder {ref!r}: {module_name!r} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def build(ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call a builder and mark the result with it; wrong kwargs are a ConfigError."""
    fn = resolve_builder(ref)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"builder {ref!r}: {e}") from None
    except ValueError:  # no signature to check (a builtin); let the call say
        pass
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"builder {ref!r} returned {type(model).__name__}, not an nn.Module")
    if builder_of(model) is None:
        mark_builder(model, ref, kwargs)
    return model


def select_modules(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = (nn.Module,),
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, nn.Module]:
    """Named submodules of the given types whose names match `include` (regexes, full match).

    Every pattern in `include` and `exclude` must match at least one module of those types,
    so a typo is an error rather than a silent no-op.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> list(select_modules(net, (nn.Linear,), include=["0"]))
        ['0']
    """
    candidates = {n: m for n, m in model.named_modules() if n and isinstance(m, types)}
    chosen = dict(candidates)
    if include is not None:
        chosen = _matching(candidates, list(include), "include")
    for name in _matching(candidates, list(exclude), "exclude"):
        chosen.pop(name, None)
    return chosen


def sample_of(names: Iterable[str], limit: int = 8) -> str:
    """The first `limit` names, comma-separated, with ", ..." when there are more.

    Example:
        >>> sample_of(["a", "b", "c"], limit=2)
        'a, b, ...'
    """
    names = list(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def nothing_chosen(
    model: nn.Module, types: tuple[type[nn.Module], ...], stage: str, kinds: str, verb: str
) -> ConfigError:
    """The error for a stage that found no layer to work on, saying which of three causes.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> str(nothing_chosen(net, (nn.Linear,), "s", "Linear", "prune"))
        's: layers/exclude leave no Linear layer to prune (the model has 1: 0)'
    """
    present = [n for n, m in model.named_modules() if n and isinstance(m, types)]
    if present:
        return ConfigError(
            f"{stage}: layers/exclude leave no {kinds} layer to {verb} "
            f"(the model has {len(present)}: {sample_of(present)})"
        )
    if isinstance(model, types):
        return ConfigError(
            f"{stage}: the model is itself one {type(model).__name__}; wrap it "
            f"(nn.Sequential(layer)) to {verb} it"
        )
    return ConfigError(f"{stage}: the model has no {kinds} layer to {verb}")


def _matching(
    candidates: dict[str, nn.Module], patterns: list[str], what: str
) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{what} pattern '{pattern}' is not a valid regex ({e})") from None
        hits = {n: m for n, m in candidates.items() if regex.fullmatch(n)}
        if not hits:
            raise ConfigError(
                f"{what} pattern '{pattern}' matches no layer (layers: {sample_of(candidates)})"
            )
        out.update(hits)
    return out


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at the dotted path `name` in `model`; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def prepare_kernels(model: nn.Module) -> None:
    """Let every layer with a kernel cache build it now (a quantized layer repacking its
    weight), so one-time work is not counted as part of a forward.

    Example:
        >>> prepare_kernels(nn.Linear(2, 2))  # plain layers have nothing to prepare
    """
    for module in model.modules():
        prepare = getattr(module, "prepare_kernels", None)
        if callable(prepare):
            prepare()
