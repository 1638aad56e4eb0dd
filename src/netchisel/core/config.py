"""StageConfig: the frozen dataclass every algorithm's settings derive from."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Self

from netchisel.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Settings of one stage. Subclasses add fields with defaults and may override `validate`.

    `version` lets old recipes keep loading when a config grows: `from_dict` reads any
    version up to the class's `VERSION`.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class ScaleConfig(StageConfig):
        ...     factor: float = 1.0
        >>> ScaleConfig.from_dict({"factor": 2}).factor
        2.0
    """

    NAME: ClassVar[str] = ""  # the YAML name of the stage ("prune.unstructured"), set once
    VERSION: ClassVar[int] = 1
    version: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.version <= self.VERSION:
            raise ConfigError(
                f"{type(self).__name__}: version {self.version} is not supported "
                f"(1..{self.VERSION})"
            )
        self.validate()  # a stage's own messages first; then the Literal and bool fields
        for name, choices in _checked_fields(type(self)).items():
            value = getattr(self, name)
            if choices is bool and not isinstance(value, bool):
                raise ConfigError(f"{type(self).__name__}.{name}: {value!r} is not true or false")
            if isinstance(choices, tuple):
                check_choice(f"{type(self).__name__}.{name}", value, choices)

    def validate(self) -> None:
        """Raise ConfigError naming the field if a value is out of range."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> Self:
        """Build from plain data (a recipe's YAML), rejecting unknown keys and wrong types."""
        data = dict(data or {})
        prefix = f"{where or cls.__name__}: "
        known = cls.field_names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{prefix}unknown key {unknown[0]!r} (known: {', '.join(known)})")
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{prefix}{e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ConfigError naming `field` when `value` is not one of `choices`.

    Example:
        >>> check_choice("mode", "zero", ("zero", "freeze"))
    """
    if value not in choices:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(map(repr, choices))}")


_CHECKED_FIELDS: dict[type, dict[str, tuple[Any, ...] | type[bool]]] = {}


def _checked_fields(cls: type[StageConfig]) -> dict[str, tuple[Any, ...] | type[bool]]:
    """Fields checked on construction: a plain Literal (its choices) or a bool (`bool`)."""
    if cls not in _CHECKED_FIELDS:
        hints = typing.get_type_hints(cls)
        checked: dict[str, tuple[Any, ...] | type[bool]] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if typing.get_origin(hint) is typing.Literal:
                checked[f.name] = typing.get_args(hint)
            elif hint is bool:
                checked[f.name] = bool
        _CHECKED_FIELDS[cls] = checked
    return _CHECKED_FIELDS[cls]


def _coerce(field: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against a field's type hint; widen int to float; refuse NaN."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{field}: nan is not a number: give a value")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(field, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{field}: {value!r} is not {_type_name(hint)}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        check_choice(field, value, choices)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(field, v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            number = float(value)
        except ValueError:
            pass
        else:
            return _coerce(field, number, hint)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{field}: expected an integer, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{field}: expected {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def check_calibration_samples(stage: str, samples: int) -> None:
    """One error for every stage that calibrates: at least one sample.

    Example:
        >>> check_calibration_samples("quantize.gptq", 128)
    """
    if samples < 1:
        raise ConfigError(
            f"{stage}.calibration_samples: the calibration set is empty ({samples}); "
            "use at least 1 (calibration papers use about 128)"
        )
