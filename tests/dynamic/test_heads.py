from __future__ import annotations

import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.dynamic.heads import make_head


@pytest.mark.parametrize(
    ("shape", "pool", "params"),
    [
        ((2, 12), 1, 12 * 5 + 5),
        ((2, 6, 9), 1, 6 * 5 + 5),
        ((2, 6, 9), 3, 18 * 5 + 5),
        ((2, 6, 7, 7), 1, 6 * 5 + 5),
        ((2, 6, 7, 7), 2, 24 * 5 + 5),
    ],
)
def test_head_sizes(shape: tuple[int, ...], pool: int, params: int) -> None:
    head = make_head(torch.zeros(shape), 5, pool, "x")
    assert sum(p.numel() for p in head.parameters()) == params
    assert tuple(head(torch.randn(3, *shape[1:])).shape) == (3, 5)


@pytest.mark.parametrize(("shape", "pool"), [((2, 12), 1), ((2, 6, 9), 3)])
def test_hidden_head_sizes_and_macs(shape: tuple[int, ...], pool: int) -> None:
    from netchisel.measure import count_flops

    head = make_head(torch.zeros(shape), 5, pool, "x", hidden=7)
    features = 12 if len(shape) == 2 else 6 * pool
    assert sum(p.numel() for p in head.parameters()) == features * 7 + 7 + 7 * 5 + 5
    assert count_flops(head, (torch.zeros(1, *shape[1:]),)).macs == features * 7 + 7 * 5


def test_global_pooling_head_is_mean_then_linear() -> None:
    head = make_head(torch.zeros(1, 3, 4), 2, 1, "x")
    x = torch.randn(5, 3, 4)
    linear = head[-1]
    torch.testing.assert_close(head(x), linear(x.mean(-1)))


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (torch.zeros(2, 1, 2, 3, 4), "has shape (2, 1, 2, 3, 4), which cannot feed an exit head"),
        (torch.zeros(2, 3, dtype=torch.long), "is a torch.int64, not a float tensor"),
        ((torch.zeros(2, 3),), "is a tuple, not a float tensor"),
    ],
)
def test_features_a_head_cannot_read(feature: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_head(feature, 3, 1, "m")  # type: ignore[arg-type]
