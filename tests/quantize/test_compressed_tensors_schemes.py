"""Which config groups netchisel reads and which Linear each applies to."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from netchisel.core.errors import ArtifactError
from netchisel.quantize.compressed_tensors_schemes import (
    Scheme,
    read_quantization_config,
    read_sparsity_config,
    scheme_of,
)


def config(**group: Any) -> dict[str, Any]:
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
    return {
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "int-quantized",
            "quantization_status": "compressed",
            "config_groups": {"g": {"targets": ["Linear"], "weights": weights, **group}},
        }
    }


def test_w8a8_dynamic_activations_per_token_and_per_tensor() -> None:
    for strategy, mode in [("token", "per_token"), ("tensor", "per_tensor")]:
        acts = {
            "num_bits": 8,
            "type": "int",
            "symmetric": True,
            "strategy": strategy,
            "dynamic": True,
        }
        (scheme,), ignore = read_quantization_config(config(input_activations=acts))
        assert (scheme.module, scheme.activations, ignore) == ("dynamic_int8", mode, ())


@pytest.mark.parametrize(
    ("acts", "message"),
    [
        ({"num_bits": 8, "strategy": "tensor", "dynamic": False}, "dynamic symmetric int8"),
        (
            {"num_bits": 8, "strategy": "token", "dynamic": True, "symmetric": False},
            "dynamic symmetric int8",
        ),
        (None, "format 'int-quantized' with 8-bit 'channel' weights has no netchisel module"),
    ],
)
def test_what_netchisel_cannot_run_is_refused(acts: Any, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        read_quantization_config(config(input_activations=acts))


def test_targets_match_like_the_package() -> None:
    by_class = Scheme("a", ("Linear",), "pack-quantized", 4, True, "group", 32, None)
    by_regex = Scheme("b", ("re:.*mlp",), "pack-quantized", 8, True, "channel", None, None)
    by_name = Scheme("c", ("head",), "pack-quantized", 8, True, "channel", None, None)
    linear, subclass = nn.Linear(2, 2), nn.modules.linear.NonDynamicallyQuantizableLinear(2, 2)
    assert scheme_of("x.mlp.up", linear, [by_regex, by_class], ()) is by_regex  # first group wins
    assert scheme_of("x.attn", subclass, [by_regex, by_class], ()) is by_class  # a base class
    assert scheme_of("x.mlp.up", linear, [by_regex], ("re:x\\.mlp",)) is None  # ignore wins
    assert scheme_of("x.head", linear, [by_regex, by_name], ()) is None  # re: matches the start
    assert scheme_of("head", linear, [by_name], ()) is by_name
    assert scheme_of("lm_head", linear, [by_class], ("lm_head",)) is None


def test_states_and_extras_netchisel_does_not_read() -> None:
    frozen = config()
    frozen["quantization_config"]["quantization_status"] = "frozen"
    with pytest.raises(ArtifactError, match="only 'compressed' checkpoints"):
        read_quantization_config(frozen)
    sparse = config()
    sparse["quantization_config"]["sparsity_config"] = {"format": "marlin-24"}
    with pytest.raises(ArtifactError, match=r"sparsity_config\.format 'marlin-24' is not read"):
        read_sparsity_config(sparse)
    sparse["quantization_config"]["sparsity_config"] = {"format": "sparse-bitmask"}
    assert read_sparsity_config(sparse) == ("sparse-bitmask", ("Linear",), ())
    sparse["quantization_config"]["sparsity_config"]["ignore"] = ["re:("]
    with pytest.raises(ArtifactError, match="not a regular expression"):
        read_sparsity_config(sparse)
    transform = config()
    transform["quantization_config"]["transform_config"] = {"hadamard": {}}
    with pytest.raises(ArtifactError, match="transform_config is set"):
        read_quantization_config(transform)
    with pytest.raises(ArtifactError, match="no quantization_config object"):
        read_quantization_config({})
