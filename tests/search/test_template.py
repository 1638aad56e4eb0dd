"""Recipe templates: placeholders filled from a candidate."""

from __future__ import annotations

from netchisel.search.space import Space, categorical
from netchisel.search.template import fill, placeholders

SPACE = Space(
    {
        "op": categorical("conv", "skip"),
        "kernel": categorical(3, 5, when={"op": "conv"}),
        "bits/fc1": categorical(4, 8),
        "bits/fc2": categorical(4, 8),
    }
)


def test_values_groups_and_inactive_dimensions() -> None:
    template = {"a": "$op", "k": "$kernel", "bits": "$bits", "list": ["$kernel", 1]}
    candidate = {"op": "skip", "bits/fc1": 4, "bits/fc2": 8}
    assert fill(template, candidate, SPACE) == {
        "a": "skip",
        "bits": {"fc1": 4, "fc2": 8},
        "list": [1],
    }


def test_a_placeholder_key_merges_and_fixed_keys_win() -> None:
    template = {"kwargs": {"$candidate": "merge", "kernel": 7, "width": 16}}
    candidate = {"op": "conv", "kernel": 3, "bits/fc1": 4, "bits/fc2": 4}
    filled = fill(template, candidate, SPACE)
    assert filled["kwargs"] == {
        "op": "conv",
        "kernel": 7,
        "bits/fc1": 4,
        "bits/fc2": 4,
        "width": 16,
    }
    assert placeholders(template) == {"candidate"}
