"""The unit view of a distribution the samplers mutate in: round trips, always valid."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from netchisel.search.samplers._space import decode, encode, fits, other_value


@pytest.mark.parametrize(
    "dist",
    [
        CategoricalDistribution([None, 4, "fp16", 2.5]),
        IntDistribution(3, 11, step=2),
        IntDistribution(1, 300, log=True),
        FloatDistribution(0.0, 0.5, step=0.1),
        FloatDistribution(1e-4, 1e-1, log=True),
        FloatDistribution(-2.0, 2.0),
    ],
)
def test_unit_view_round_trips_and_stays_valid(dist: Any) -> None:
    rng = np.random.default_rng(0)
    values = [decode(dist, u) for u in np.linspace(-0.5, 1.5, 401)]
    assert all(fits(dist, v) for v in values)
    for v in values:
        back = decode(dist, encode(dist, v))
        assert (
            back == v
            if not isinstance(dist, FloatDistribution) or dist.step
            else math.isclose(back, v, rel_tol=1e-12)
        )
        other = other_value(dist, v, rng)
        assert fits(dist, other) and other != v
    assert decode(dist, 0.0) == values[0] and decode(dist, 1.0) == values[-1]
