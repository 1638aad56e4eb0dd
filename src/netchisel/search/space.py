"""Search spaces: named dimensions (categorical, int, float, optionally log) with conditions.

A candidate is a plain dict `{name: value}`; a builder or a recipe template turns it into a
model. Spaces are define-by-run for Optuna: `Space.suggest(trial)` asks the trial for each
dimension in order and skips a dimension whose condition (`when`) does not hold, so any
Optuna sampler sees only the parameters that exist for that candidate.

YAML form (a mapping of name to dimension; a bare list is a categorical):

```yaml
op: [conv, separable, skip]
kernel: {choices: [3, 5], when: {op: [conv, separable]}}
width: {int: [8, 64], step: 8}
lr: {float: [1.0e-4, 1.0e-1], log: true}
```
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from netchisel.core.errors import ConfigError

Candidate = dict[str, Any]


@dataclass(frozen=True)
class Dimension:
    """One searched value: its kind, range or choices, and the condition for it to exist."""

    kind: Literal["categorical", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, candidate: Mapping[str, Any]) -> bool:
        """Whether every condition holds for the values chosen so far."""
        return all(candidate.get(name) in values for name, values in self.when.items())

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask an Optuna trial for this dimension's value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """Every value of a finite dimension (categorical, int, or float with a step)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            raise ConfigError("a float dimension without a step has infinitely many values")
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [self.low + i * self.step for i in range(count)]

    def sample(self, rng: random.Random) -> Any:
        """A uniformly random value (log-uniform for log dimensions)."""
        if self.kind == "float" and self.step is None:
            if self.log:
                return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return rng.uniform(self.low, self.high)
        return rng.choice(self.values())


def categorical(*choices: Any, when: Mapping[str, Any] | None = None) -> Dimension:
    """A choice among values.

    Example:
        >>> categorical("conv", "skip").choices
        ('conv', 'skip')
    """
    return _checked("categorical", Dimension("categorical", tuple(choices), when=_when(when)))


def integer(
    low: int, high: int, *, step: int = 1, log: bool = False, when: Mapping[str, Any] | None = None
) -> Dimension:
    """An integer in [low, high] (both included), optionally with a step or on a log scale.

    Example:
        >>> integer(8, 32, step=8).values()
        [8, 16, 24, 32]
    """
    return _checked("int", Dimension("int", (), low, high, step, log, _when(when)))


def real(
    low: float,
    high: float,
    *,
    step: float | None = None,
    log: bool = False,
    when: Mapping[str, Any] | None = None,
) -> Dimension:
    """A float in [low, high], optionally log-uniform.

    Example:
        >>> real(1e-4, 1e-1, log=True).log
        True
    """
    return _checked("float", Dimension("float", (), low, high, step, log, _when(when)))


@dataclass(frozen=True)
class Space:
    """An ordered mapping of dimension names to dimensions.

    Example:
        >>> space = Space({"op": categorical("conv", "skip"),
        ...                "kernel": categorical(3, 5, when={"op": "conv"})})
        >>> space.size()
        3
        >>> [c for c in space.candidates()][-1]
        {'op': 'skip'}
    """

    dimensions: Mapping[str, Dimension]

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ConfigError("search space is empty: give at least one dimension")
        seen: set[str] = set()
        for name, dim in self.dimensions.items():
            for other in dim.when:
                if other not in seen:
                    raise ConfigError(
                        f"space.{name}.when: {other!r} must be a dimension listed before {name!r}"
                    )
            seen.add(name)

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """The candidate an Optuna trial proposes (only the active dimensions)."""
        candidate: Candidate = {}
        for name, dim in self.dimensions.items():
            if dim.active(candidate):
                candidate[name] = dim.suggest(trial, name)
        return candidate

    def sample(self, rng: random.Random) -> Candidate:
        """A random candidate."""
        candidate: Candidate = {}
        for name, dim in self.dimensions.items():
            if dim.active(candidate):
                candidate[name] = dim.sample(rng)
        return candidate

    def candidates(self) -> Iterator[Candidate]:
        """Every candidate of a finite space, each once, in a fixed order."""
        yield from self._expand(list(self.dimensions.items()), {})

    def _expand(self, dims: list[tuple[str, Dimension]], prefix: Candidate) -> Iterator[Candidate]:
        if not dims:
            yield dict(prefix)
            return
        (name, dim), rest = dims[0], dims[1:]
        if not dim.active(prefix):
            yield from self._expand(rest, prefix)
            return
        for value in dim.values():
            yield from self._expand(rest, {**prefix, name: value})

    def size(self) -> int:
        """The number of distinct candidates of a finite space."""
        return sum(1 for _ in self.candidates())

    def grid(self) -> dict[str, list[Any]]:
        """The value lists Optuna's GridSampler needs (unconditional finite spaces only)."""
        conditional = [n for n, d in self.dimensions.items() if d.when]
        if conditional:
            raise ConfigError(
                f"grid search needs a space without conditions; {conditional[0]!r} has one"
            )
        return {name: dim.values() for name, dim in self.dimensions.items()}

    def __len__(self) -> int:
        return len(self.dimensions)

    def __or__(self, other: Space) -> Space:
        """Two spaces side by side (names must not clash)."""
        clash = set(self.dimensions) & set(other.dimensions)
        if clash:
            raise ConfigError(f"space: dimension {sorted(clash)[0]!r} is defined twice")
        return Space({**self.dimensions, **other.dimensions})


def parse_space(data: Any, where: str = "space") -> Space:
    """A Space from its YAML form (see the module docstring).

    Example:
        >>> parse_space({"width": {"int": [8, 32], "step": 8}, "act": ["relu", "gelu"]}).size()
        8
    """
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of dimension names")
    return Space({str(name): _parse_dimension(f"{where}.{name}", v) for name, v in data.items()})


_KINDS = ("choices", "int", "float")


def _parse_dimension(where: str, value: Any) -> Dimension:
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a list of choices or a mapping, got {value!r}")
    kinds = [k for k in _KINDS if k in value]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(_KINDS)}")
    kind = kinds[0]
    allowed = {kind, "when"} | ({"step", "log"} if kind != "choices" else set())
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")
    when = value.get("when")
    if when is not None and not isinstance(when, Mapping):
        raise ConfigError(f"{where}.when: expected a mapping of dimension to value(s)")
    if kind == "choices":
        if not isinstance(value["choices"], list):
            raise ConfigError(f"{where}.choices: expected a list")
        return _checked(where, Dimension("categorical", tuple(value["choices"]), when=_when(when)))
    bounds = value[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2):
        raise ConfigError(f"{where}.{kind}: expected [low, high], got {bounds!r}")
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{where}.{kind}: bounds must be numbers, got {bounds!r}")
    step, log = value.get("step"), value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    dim = Dimension(kind, (), bounds[0], bounds[1], step, log, _when(when))  # type: ignore[arg-type]
    return _checked(where, dim)


def _when(when: Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    if not when:
        return {}
    return {k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in when.items()}


def _checked(where: str, dim: Dimension) -> Dimension:
    if dim.kind == "categorical":
        if not dim.choices:
            raise ConfigError(f"{where}: needs at least one choice")
        if len(set(map(repr, dim.choices))) != len(dim.choices):
            raise ConfigError(f"{where}: choices repeat a value: {list(dim.choices)}")
        bad = [c for c in dim.choices if not isinstance(c, None | bool | int | float | str)]
        if bad:
            raise ConfigError(f"{where}: choices must be numbers, strings or null, got {bad[0]!r}")
        return dim
    if dim.low > dim.high:
        raise ConfigError(f"{where}: low {dim.low} is above high {dim.high}")
    if dim.log and dim.low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {dim.low}")
    if dim.step is not None and (dim.step <= 0 or (dim.log and dim.step != 1)):
        raise ConfigError(f"{where}: step must be > 0 (and 1 on a log scale), got {dim.step}")
    if dim.kind == "int" and not (float(dim.low).is_integer() and float(dim.high).is_integer()):
        raise ConfigError(f"{where}: int bounds must be integers, got [{dim.low}, {dim.high}]")
    return dim


__all__ = [
    "Candidate",
    "Dimension",
    "Space",
    "categorical",
    "integer",
    "parse_space",
    "real",
]
