"""A tabular NAS benchmark: a table of every architecture of a space, trained beforehand.

Looking a candidate up instead of training it makes a search cost microseconds, so strategies
can be compared over many seeds (the idea of NAS-Bench-101, Ying et al. 2019). The table is a
JSON file: `meta` (space name in `NAS_SPACES`, budget, data split, seeds) and `rows`, one per
candidate, with per-seed `val` and `test` accuracies, `params` and `macs`
(`bench/search_tabular_build.py` writes `bench/data/nas_tabular_digits.json`).

A search sees only the mean val accuracy over the seeds; test accuracy is recorded on the trial
(`user_attrs["test_accuracy"]`) and reported, never used to select.

Example:
    >>> bench = TabularBenchmark.load("bench/data/nas_tabular_digits.json")  # doctest: +SKIP
    >>> study = optuna.create_study(direction="maximize")  # doctest: +SKIP
    >>> study.optimize(bench.objective, n_trials=50)  # doctest: +SKIP
    >>> regret_curve([t.value for t in study.trials], bench.optimum)[-1]  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from netchisel.core.errors import ConfigError
from netchisel.search.space import Candidate, Space


def candidate_key(candidate: Mapping[str, Any]) -> str:
    """A canonical string for a candidate (sorted keys), to look it up in a table.

    Example:
        >>> candidate_key({"b": 1, "a": "x"})
        '{"a": "x", "b": 1}'
    """
    return json.dumps(dict(candidate), sort_keys=True)


@dataclass(frozen=True)
class TabularEntry:
    """One architecture of the table: its candidate, size and per-seed accuracies (percent)."""

    candidate: Candidate
    val: tuple[float, ...]
    test: tuple[float, ...]
    params: int = 0
    macs: int = 0

    @property
    def val_mean(self) -> float:
        """Mean val accuracy over the seeds: what a search optimises."""
        return _mean(self.val)

    @property
    def test_mean(self) -> float:
        """Mean test accuracy over the seeds: reported, never used to select."""
        return _mean(self.test)


def _mean(values: Sequence[float]) -> float:
    # Tables store accuracies rounded (to 1e-4 points); equal correct counts must still tie,
    # so the mean is rounded to 1e-3 points, far below one image (0.37 points of 270).
    return round(statistics.fmean(values), 3)


@dataclass(frozen=True)
class TabularBenchmark:
    """Every candidate of `space` with its measured accuracies; an Optuna objective over them.

    Example:
        >>> from netchisel.search.space import categorical
        >>> space = Space({"op": categorical("a", "b")})
        >>> bench = TabularBenchmark(space, (TabularEntry({"op": "a"}, (90.0,), (89.0,)),
        ...                                  TabularEntry({"op": "b"}, (95.0,), (94.0,))))
        >>> bench.optimum, bench.lookup({"op": "a"}).test_mean
        (95.0, 89.0)
    """

    space: Space
    entries: tuple[TabularEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, TabularEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ConfigError("tabular benchmark has no rows")
        index = {candidate_key(e.candidate): e for e in self.entries}
        if len(index) != len(self.entries):
            raise ConfigError("tabular benchmark lists a candidate twice")
        object.__setattr__(self, "_index", index)

    @classmethod
    def load(cls, path: str | Path, space: Space | None = None) -> TabularBenchmark:
        """Read a table; `space` defaults to `NAS_SPACES[meta["space"]]()`.

        Every candidate of the space must have a row (a partial table is an error).
        """
        from netchisel.search.nas import NAS_SPACES

        file = Path(path)
        if not file.is_file():
            raise ConfigError(
                f"tabular benchmark {file} does not exist: build it with "
                "bench/search_tabular_build.py"
            )
        try:
            data = json.loads(file.read_text())
            meta, rows = dict(data["meta"]), data["rows"]
            entries = tuple(
                TabularEntry(
                    dict(r["candidate"]),
                    tuple(float(v) for v in r["val"]),
                    tuple(float(v) for v in r["test"]),
                    int(r.get("params", 0)),
                    int(r.get("macs", 0)),
                )
                for r in rows
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"tabular benchmark {file} is not a table ({e!r})") from None
        if space is None:
            name = meta.get("space")
            if name not in NAS_SPACES:
                raise ConfigError(
                    f"tabular benchmark {file}: meta.space {name!r} is not in NAS_SPACES "
                    f"({', '.join(NAS_SPACES)}); pass space="
                )
            space = NAS_SPACES[name]()
        bench = cls(space, entries, meta)
        missing = sum(1 for c in space.candidates() if candidate_key(c) not in bench._index)
        if missing or space.size() != len(entries):
            raise ConfigError(
                f"tabular benchmark {file} has {len(entries)} rows for a space of "
                f"{space.size()} candidates ({missing} missing): rebuild the table"
            )
        return bench

    def lookup(self, candidate: Mapping[str, Any]) -> TabularEntry:
        """The row of a candidate; a ConfigError when the table lacks it."""
        entry = self._index.get(candidate_key(candidate))
        if entry is None:
            raise ConfigError(f"candidate {dict(candidate)} is not in the tabular benchmark")
        return entry

    @property
    def best(self) -> TabularEntry:
        """The entry of highest mean val accuracy (the first one on a tie)."""
        return max(self.entries, key=lambda e: e.val_mean)

    @property
    def optimum(self) -> float:
        """The highest mean val accuracy in the table."""
        return self.best.val_mean

    def objective(self, trial: optuna.Trial) -> float:
        """Optuna objective: suggest a candidate, return its mean val accuracy.

        The trial's user attributes get `test_accuracy` (mean), `params` and `macs`.
        """
        entry = self.lookup(self.space.suggest(trial))
        trial.set_user_attr("test_accuracy", entry.test_mean)
        trial.set_user_attr("params", entry.params)
        trial.set_user_attr("macs", entry.macs)
        return entry.val_mean


def regret_curve(values: Sequence[float], optimum: float) -> list[float]:
    """Simple regret after each evaluation: optimum minus the best value so far.

    Example:
        >>> regret_curve([90.0, 95.0, 93.0, 99.0], 99.5)
        [9.5, 4.5, 4.5, 0.5]
    """
    curve, best = [], -math.inf
    for value in values:
        best = max(best, value)
        curve.append(optimum - best)
    return curve


def incumbent_test_regret(
    values: Sequence[float], tests: Sequence[float], best_test: float
) -> list[float]:
    """Test accuracy of the val-optimal architecture minus that of the incumbent.

    The incumbent after n evaluations is the one of best val so far (the first on a tie);
    it can beat the val-optimal one on test, so this regret can be negative.

    Example:
        >>> incumbent_test_regret([90.0, 95.0, 93.0], [91.0, 94.0, 96.0], 95.0)
        [4.0, 1.0, 1.0]
    """
    if len(values) != len(tests):
        raise ConfigError(f"{len(values)} values but {len(tests)} test accuracies")
    curve, best, incumbent = [], -math.inf, math.nan
    for value, test in zip(values, tests, strict=True):
        if value > best:
            best, incumbent = value, test
        curve.append(best_test - incumbent)
    return curve


def evaluations_to_reach(curve: Sequence[float], tolerance: float) -> int | None:
    """The first number of evaluations (1-based) whose regret is <= tolerance, or None.

    Example:
        >>> evaluations_to_reach([9.5, 4.5, 0.25, 0.0], 0.3)
        3
    """
    for n, regret in enumerate(curve, 1):
        if regret <= tolerance + 1e-9:
            return n
    return None
