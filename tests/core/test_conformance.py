"""Every registered stage obeys the same contract; a new stage is checked without new tests."""

from __future__ import annotations

import dataclasses

import pytest

from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError
from netchisel.stages import get_stage, stage_names


@pytest.mark.parametrize("name", stage_names())
def test_config_contract(name: str) -> None:
    stage = get_stage(name)
    cls = stage.config_class
    assert issubclass(cls, StageConfig) and dataclasses.is_dataclass(cls)
    assert cls.__name__.endswith("Config")
    default = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.version = 2  # type: ignore[misc]
    assert cls.from_dict(default.to_dict()) == default
    with pytest.raises(ConfigError, match="unknown key 'no_such_option'"):
        cls.from_dict({"no_such_option": 1})
    with pytest.raises(ConfigError, match="version"):
        cls.from_dict({"version": cls.VERSION + 1})
    assert stage.apply.__doc__, f"stage {name} needs a docstring"
