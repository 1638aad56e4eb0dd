import random

import optuna
import pytest

from netchisel.core.errors import ConfigError
from netchisel.search.space import Space, categorical, integer, parse_space, real


def conditional() -> Space:
    return parse_space(
        {
            "op": ["conv", "separable", "skip"],
            "kernel": {"choices": [3, 5, 7], "when": {"op": ["conv", "separable"]}},
            "width": {"int": [8, 32], "step": 8},
            "lr": {"float": [1e-4, 1e-1], "log": True},
        }
    )


def test_conditional_candidates_are_enumerated_once_each() -> None:
    space = parse_space(
        {
            "op": ["conv", "separable", "skip"],
            "kernel": {"choices": [3, 5, 7], "when": {"op": ["conv", "separable"]}},
            "width": {"int": [8, 32], "step": 8},
        }
    )
    candidates = list(space.candidates())
    # (2 ops x 3 kernels + 1 skip) x 4 widths
    assert len(candidates) == space.size() == 28
    assert len({tuple(sorted(c.items())) for c in candidates}) == 28
    assert {"op": "skip", "width": 8} in candidates
    assert all("kernel" not in c for c in candidates if c["op"] == "skip")


def test_suggest_asks_optuna_only_for_active_dimensions() -> None:
    space = conditional()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        candidate = space.suggest(trial)
        assert set(trial.params) == set(candidate)
        assert ("kernel" in candidate) == (candidate["op"] != "skip")
        assert candidate["width"] in (8, 16, 24, 32)
        assert 1e-4 <= candidate["lr"] <= 1e-1
        seen.add(candidate["op"])
        study.tell(trial, 0.0)
    assert seen == {"conv", "separable", "skip"}


def test_log_float_is_sampled_log_uniformly() -> None:
    dim = real(1e-4, 1e-0, log=True)
    rng = random.Random(0)
    values = [dim.sample(rng) for _ in range(4000)]
    below = sum(v < 1e-2 for v in values) / len(values)
    assert 0.46 < below < 0.54  # half the decades lie below 1e-2


def test_grid_lists_every_value_and_refuses_conditions() -> None:
    space = Space({"a": integer(1, 3), "b": categorical("x", "y"), "c": real(0, 1, step=0.5)})
    assert space.grid() == {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.0, 0.5, 1.0]}
    with pytest.raises(ConfigError, match="'kernel' has one"):
        conditional().grid()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "non-empty mapping"),
        ({"a": []}, "space.a: needs at least one choice"),
        ({"a": [1, 1]}, "repeat a value"),
        ({"a": {"int": [5, 1]}}, "low 5 is above high 1"),
        ({"a": {"float": [0, 1], "log": True}}, "log scale needs low > 0"),
        ({"a": {"int": [1.5, 3]}}, "int bounds must be integers"),
        ({"a": {"int": [1, 3], "choices": [1]}}, "exactly one of"),
        ({"a": {"int": [1, 3], "steps": 2}}, "unknown key 'steps'"),
        ({"a": [1, 2], "b": {"choices": [1], "when": {"c": 1}}}, "'c' must be a dimension listed"),
        ({"a": [[1, 2]]}, "numbers, strings or null"),
        ({"a": {"float": ["x", 1]}}, "bounds must be numbers"),
    ],
)
def test_bad_spaces_are_one_clear_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(data)


def test_spaces_join_and_refuse_a_name_twice() -> None:
    a, b = Space({"x": integer(1, 2)}), Space({"y": categorical(1, 2, 3)})
    assert (a | b).size() == 6
    with pytest.raises(ConfigError, match="'x' is defined twice"):
        a | a
