from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.artifact.describe import decode_value, describe, encode_value, rebuild


@pytest.mark.parametrize(
    "value",
    [
        1,
        2.5,
        "x",
        None,
        True,
        (1, 2),
        [1, (2, 3)],
        {"a": (1,)},
        torch.bfloat16,
        float("inf"),
        nn.functional.relu,
        {1, 2},
    ],
)
def test_values_round_trip(value: object) -> None:
    assert decode_value(encode_value(value)) == value


def test_unstorable_value_is_refused() -> None:
    with pytest.raises(TypeError):
        encode_value(object())


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
        nn.ConvTranspose2d(4, 2, 3, output_padding=1, stride=2),
        nn.MultiheadAttention(16, 4, batch_first=True),
        nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation="gelu"),
        nn.GRU(4, 8),
    ],
)
def test_rebuilt_module_computes_the_same(module: nn.Module) -> None:
    copy = rebuild(describe(module))
    copy.load_state_dict(module.state_dict())
    module.eval()
    copy.eval()
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        x = torch.randn(2, 4, 9, 9)
        assert torch.equal(module(x), copy(x))
    elif isinstance(module, nn.MultiheadAttention):
        x = torch.randn(2, 5, 16)
        assert torch.equal(module(x, x, x)[0], copy(x, x, x)[0])
    elif isinstance(module, nn.GRU):
        x = torch.randn(3, 2, 4)
        assert torch.equal(module(x)[0], copy(x)[0])
    else:
        x = torch.randn(2, 5, 16)
        assert torch.equal(module(x), copy(x))
