import pytest

from netchisel.core.errors import ConfigError
from netchisel.search.objectives import (
    MnasReward,
    Range,
    dominates,
    non_dominated,
    objective_ranges,
    parse_objectives,
)

METRICS = {"accuracy": 90.0, "latency_ms": 4.0, "params": 1000.0, "bytes_on_disk": 5000.0}


def test_pareto_values_directions_and_violations() -> None:
    o = parse_objectives(
        {
            "objectives": ["accuracy", {"params": "minimize"}],
            "constraints": {"latency_ms": {"max": 3.0}, "accuracy": {"min": 95.0}},
        }
    )
    assert o.directions() == ["maximize", "minimize"]
    assert o.values(METRICS) == [90.0, 1000.0]
    assert o.violations(METRICS) == [1.0, 5.0]  # 1 ms too slow, 5 points short
    assert o.violations({**METRICS, "latency_ms": 2.5, "accuracy": 96.0}) == [-0.5, -1.0]


def test_scalarized_is_the_weighted_sum() -> None:
    o = parse_objectives({"mode": "scalarized", "weights": {"accuracy": 1.0, "latency_ms": -2.0}})
    assert o.directions() == ["maximize"]
    assert o.values(METRICS) == [90.0 - 8.0]


def test_mnasnet_reward_soft_and_hard() -> None:
    soft = MnasReward(target=2.0)  # alpha = beta = -0.07
    assert soft({"accuracy": 90.0, "latency_ms": 4.0}) == pytest.approx(90.0 * 2.0**-0.07)
    assert soft({"accuracy": 90.0, "latency_ms": 1.0}) == pytest.approx(90.0 * 0.5**-0.07)
    hard = MnasReward(target=2.0, alpha=0.0, beta=-1.0)
    assert hard({"accuracy": 90.0, "latency_ms": 1.0}) == 90.0  # under T: accuracy alone
    assert hard({"accuracy": 90.0, "latency_ms": 4.0}) == 45.0
    o = parse_objectives({"mode": "mnasnet", "reward": {"target": 2.0}})
    assert o.values(METRICS) == [pytest.approx(90.0 * 2.0**-0.07)]


def test_a_metric_that_was_not_measured_is_named() -> None:
    o = parse_objectives({"objectives": ["perplexity"]})
    with pytest.raises(ConfigError, match="'perplexity' was not measured \\(have: accuracy"):
        o.values(METRICS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"objectives": ["speed"]}, "'speed' has no known direction"),
        ({"objectives": [{"speed": "up"}]}, "must be maximize or minimize"),
        ({"objectives": []}, "non-empty list"),
        ({"mode": "best"}, "unknown mode 'best'"),
        ({"mode": "scalarized"}, "needs \\{metric: weight"),
        ({"weights": {"accuracy": 1}}, "only for mode scalarized"),
        ({"mode": "mnasnet", "reward": {}}, "needs the target latency"),
        ({"mode": "mnasnet", "reward": {"target": 0}}, "must be > 0"),
        ({"constraints": {"latency_ms": 3}}, "expected \\{max: number\\}"),
        ({"constraints": {"latency_ms": {"max": "fast"}}}, "expected a number, got 'fast'"),
        ({"constraints": {"latency_ms": {"min": 3, "max": 2}}}, "min 3.0 is above max 2.0"),
    ],
)
def test_bad_objectives_are_one_clear_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_objectives(data)


def test_latency_ranges_that_overlap_are_ties() -> None:
    directions, names = ["maximize", "minimize"], ["accuracy", "latency_ms"]

    def ranges(acc: float, p10: float, median: float, p90: float) -> list[Range]:
        spread = {"latency_p10_ms": p10, "latency_p90_ms": p90}
        return objective_ranges([acc, median], directions, names, spread)

    a = ranges(95.0, 0.9, 1.0, 1.2)  # faster by the median ...
    b = ranges(95.0, 1.0, 1.1, 1.3)  # ... but inside each other's p10-p90
    assert a == [(95.0, 95.0), (-1.2, -0.9)]
    assert not dominates(a, b) and not dominates(b, a)
    assert non_dominated([a, b]) == [0, 1]  # both stay on the front
    c = ranges(95.0, 1.21, 1.25, 1.3)  # wholly slower than a (1.21 > 1.2), not than b
    assert dominates(a, c) and not dominates(b, c)
    assert non_dominated([a, b, c]) == [0, 1]
    d = ranges(96.0, 1.1, 1.15, 1.25)  # more accurate, latency tied with a and b
    assert non_dominated([a, b, c, d]) == [3]
    # without the spread the medians decide, as Optuna's front does
    points = [objective_ranges([95.0, m], directions) for m in (1.0, 1.1)]
    assert non_dominated(points) == [0]


def test_only_a_metric_with_a_measured_spread_is_a_range() -> None:
    spread = {"latency_p10_ms": 1.0, "latency_p90_ms": 2.0}
    assert objective_ranges([10.0], ["minimize"], ["params"], spread) == [(-10.0, -10.0)]
    assert objective_ranges([1.5], ["minimize"], ["latency_ms"], {}) == [(-1.5, -1.5)]
