from __future__ import annotations

import pytest
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import (
    build,
    builder_of,
    replace_module,
    resolve_builder,
    select_modules,
)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    )


def test_select_by_type_include_exclude() -> None:
    net = _net()
    assert list(select_modules(net, (nn.Linear,))) == ["0", "2.0", "2.1"]
    assert list(select_modules(net, (nn.Linear,), include=[r"2\..*"], exclude=["2.1"])) == ["2.0"]


def test_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"include pattern 'fc\.\*' matches no layer \(layers: 0, 2.0, 2.1\)"
    ):
        select_modules(_net(), (nn.Linear,), include=[r"fc.*"])


def test_replace_module() -> None:
    net = _net()
    old = replace_module(net, "2.1", nn.Identity())
    assert isinstance(old, nn.Linear) and isinstance(net[2][1], nn.Identity)


def test_build_marks_and_resolves() -> None:
    model = build("torch.nn:Linear", {"in_features": 2, "out_features": 5})
    assert builder_of(model) == ("torch.nn:Linear", {"in_features": 2, "out_features": 5})
    with pytest.raises(ConfigError, match="must look like"):
        resolve_builder("torch.nn.Linear")
    with pytest.raises(ConfigError, match="cannot import 'nope_pkg'"):
        resolve_builder("nope_pkg:f")
    with pytest.raises(ConfigError, match="has no callable 'Nope'"):
        resolve_builder("torch.nn:Nope")


def test_wrong_builder_kwargs_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"builder 'torch\.nn:Linear': .*'widht'"):
        build("torch.nn:Linear", {"in_features": 2, "out_features": 2, "widht": 3})
