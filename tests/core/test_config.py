from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig(StageConfig):
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    layers: tuple[str, ...] = ()
    steps: int | None = None

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")


def test_from_dict_coerces_and_keeps_defaults() -> None:
    cfg = DemoConfig.from_dict({"ratio": 0, "layers": ["x", "y"]})
    assert cfg == DemoConfig(ratio=0.0, layers=("x", "y"))
    assert isinstance(cfg.ratio, float)
    assert cfg.to_dict() == {
        "version": 1,
        "ratio": 0.0,
        "mode": "a",
        "layers": ("x", "y"),
        "steps": None,
    }


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"demo: unknown key 'ratoi' \(known: version, ratio, mode, layers, steps\)",
    ):
        DemoConfig.from_dict({"ratoi": 0.1}, "demo")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ratio": "high"}, "ratio: expected float"),
        ({"mode": "c"}, "mode: 'c' is not one of 'a', 'b'"),
        ({"steps": True}, "steps: 'True' is not int|True is not"),
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\), got 1.0"),
        ({"version": 2}, "version 2 is not supported"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DemoConfig.from_dict(data)


def test_optional_int_accepts_none_and_int() -> None:
    assert DemoConfig.from_dict({"steps": None}).steps is None
    assert DemoConfig.from_dict({"steps": 3}).steps == 3


def test_yaml_exponent_strings_are_floats() -> None:
    assert DemoConfig.from_dict({"ratio": "3e-4"}).ratio == 3e-4
