"""Which specs have an integer kernel, and the one divide-or-pad rule."""

import pytest
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.quantize.formats import has_kernel, padded_weight
from netchisel.quantize.formats.kernels import stored_columns
from netchisel.quantize.primitives import QuantSpec, group_padding


def test_kernel_choice():
    assert has_kernel(QuantSpec(8))
    assert has_kernel(QuantSpec(4, False, "group", 128))
    assert not has_kernel(QuantSpec(4, False, "channel"))
    assert not has_kernel(QuantSpec(3, False, "group", 128))
    assert not has_kernel(QuantSpec(8, True, "group", 128))


def test_only_the_int4_kernel_pads_a_width_the_group_size_does_not_divide():
    int4 = QuantSpec(4, False, "group", 32)
    three = QuantSpec(3, False, "group", 32)
    assert (group_padding(100, int4), group_padding(96, int4)) == (28, 0)
    assert group_padding(100, QuantSpec(8)) == 0  # per channel: nothing to tile
    assert stored_columns(100, int4) == 128 and stored_columns(96, three) == 96
    weight = padded_weight(nn.Linear(100, 4), int4)
    assert weight.shape == (4, 128) and not weight[:, 100:].any()
    with pytest.raises(ConfigError, match="layer fc: group_size 32 does not divide in_features"):
        stored_columns(100, three, "fc")
