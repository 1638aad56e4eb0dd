from __future__ import annotations

import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.prune.select import (
    keep_global,
    keep_lowest_pruned,
    keep_n_of_m,
    keep_per_row,
    parse_pattern,
)


def test_local_prunes_exactly_the_lowest() -> None:
    scores = torch.arange(100.0).flip(0).reshape(10, 10)
    keep = keep_lowest_pruned(scores, 0.37)
    assert int((~keep).sum()) == 37
    assert scores[~keep].max() < scores[keep].min()


def test_rows_each_lose_the_same_count() -> None:
    keep = keep_per_row(torch.rand(6, 10, generator=torch.Generator().manual_seed(0)), 0.3)
    assert keep.sum(dim=1).tolist() == [7] * 6


def test_n_of_m_structure() -> None:
    scores = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    keep = keep_n_of_m(scores, 2, 4)
    assert keep.reshape(8, 4, 4).sum(dim=2).eq(2).all()
    # The kept two are the two largest of their group.
    groups = scores.reshape(8, 4, 4)
    kept_min = groups.masked_fill(~keep.reshape(8, 4, 4), float("inf")).amin(dim=2)
    dropped_max = groups.masked_fill(keep.reshape(8, 4, 4), -float("inf")).amax(dim=2)
    assert (kept_min > dropped_max).all()
    with pytest.raises(ConfigError, match="layer fc has 6 inputs per output, not a multiple of 4"):
        keep_n_of_m(torch.rand(2, 6), 2, 4, layer="fc")


def test_conv_n_of_m_groups_flattened_inputs() -> None:
    keep = keep_n_of_m(torch.rand(4, 2, 3, 3), 4, 8 + 1)  # 18 inputs per output: groups of 9
    assert keep.reshape(4, 2, 9).sum(dim=2).eq(4).all()


@pytest.mark.parametrize(
    ("pattern", "expected"), [("unstructured", None), ("2:4", (2, 4)), ("4:8", (4, 8))]
)
def test_parse_pattern(pattern: str, expected: tuple[int, int] | None) -> None:
    assert parse_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", ["4:4", "5:4", "0:4", "2/4", "x:y"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        parse_pattern(pattern)


def test_global_threshold_with_floor() -> None:
    scores = {"big": torch.arange(10.0, 20.0), "small": torch.arange(0.0, 10.0)}
    keep = keep_global(scores, 0.5, min_keep=0.2)
    # 10 kept in all: 2 floor in "small" (its best two), the other 8 globally best from "big".
    assert keep["small"].tolist() == [False] * 8 + [True] * 2
    assert int(keep["big"].sum()) == 8 and keep["big"][-8:].all()
    with pytest.raises(ConfigError, match="lower min_keep"):
        keep_global(scores, 0.9, min_keep=0.5)
