"""StructuredConfig: every mistake is one error naming the field."""

from __future__ import annotations

import pytest

from netchisel.core.errors import ConfigError
from netchisel.prune.structured import StructuredConfig

SHAPE = (1, 3, 8, 8)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"prune.structured.ratio: 1.0 is not in \[0, 1\)"):
        StructuredConfig(ratio=1.0)
    with pytest.raises(ConfigError, match=r"per_layer\['conv'\]: -0.1 is not in"):
        StructuredConfig(per_layer={"conv": -0.1})
    with pytest.raises(ConfigError, match="per_layer: per-layer ratios are for local scope"):
        StructuredConfig(per_layer={"conv": 0.5}, scope="global")
    with pytest.raises(ConfigError, match=r"target_macs_ratio: 0.0 is not in"):
        StructuredConfig(target_macs_ratio=0.0)
    with pytest.raises(ConfigError, match=r"ratio: 0.3 and a target_macs_ratio .* exclude each"):
        StructuredConfig(ratio=0.3, target_macs_ratio=0.5)
    with pytest.raises(ConfigError, match="importance: unknown 'l3'"):
        StructuredConfig(importance="l3")
    with pytest.raises(ConfigError, match="unknown key 'ratios'"):
        StructuredConfig.from_dict({"ratios": 0.5})
    with pytest.raises(ConfigError, match=r"mode: 'freeze' is not supported, only 'remove'"):
        StructuredConfig.from_dict({"mode": "freeze"})
    default = StructuredConfig()
    assert StructuredConfig.from_dict(default.to_dict()) == default
    assert StructuredConfig.from_dict({"input_shape": [1, 3, 8, 8]}).input_shape == SHAPE
