"""Checks on the plain attributes a manifest sets on a dynamic model (hostile data): what
each model's `check_loaded` shares."""

from __future__ import annotations

import math
from typing import Any

from netchisel.core.errors import ConfigError


def is_int(value: Any) -> bool:
    """An int that is not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool.

    Example:
        >>> is_number(0.5), is_number(float("nan")), is_number("1")
        (True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_fractions(values: Any, count: int, name: str, where: str) -> None:
    """Empty (not measured), or `count` shares in [0, 1] that add up to 1 (the histogram the
    expected MACs weight the paths by).

    Example:
        >>> check_fractions([0.25, 0.75], 2, "exit_fractions", "x")
        >>> check_fractions([-1.0, 2.0], 2, "exit_fractions", "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: x: exit_fractions [-1.0, 2.0] are not ... shares ...
    """
    if isinstance(values, list) and not values:
        return
    if (
        not isinstance(values, list)
        or len(values) != count
        or not all(is_number(v) and 0.0 <= v <= 1.0 for v in values)
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise ConfigError(
            f"{where}: {name} {values!r} are not {count} shares in [0, 1] adding up to 1"
        )
