from __future__ import annotations

import math

import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.dynamic.confidence import (
    check_threshold,
    exits_now,
    never,
    score,
    score_threshold,
    soft_kl,
    threshold_range,
)


def test_scores_are_max_probability_and_minus_entropy() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert score(logits, "max_softmax").tolist() == pytest.approx([0.75, 0.5])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert score(logits, "entropy").tolist() == pytest.approx([-h, -math.log(2.0)])


def test_exit_rules_and_never() -> None:
    logits = torch.tensor([[50.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    assert exits_now(logits, "max_softmax", 0.7).tolist() == [True, True, False]
    assert exits_now(logits, "entropy", 0.6).tolist() == [True, True, False]
    # Even a certain row (probability 1.0, entropy 0.0) does not pass "never".
    assert not exits_now(logits, "max_softmax", never("max_softmax")).any()
    assert not exits_now(logits, "entropy", never("entropy")).any()
    assert score_threshold("entropy", 0.6) == -0.6


def test_threshold_ranges() -> None:
    assert threshold_range("max_softmax", 10) == (0.0, 1.0)
    assert threshold_range("entropy", 4) == (0.0, pytest.approx(math.log(4)))
    check_threshold("entropy", 1.38, 4, "t")
    with pytest.raises(ConfigError) as err:
        check_threshold("entropy", 1.4, 4, "thresholds[1]")
    assert str(err.value) == (
        "dynamic.early_exit: thresholds[1] = 1.4 is outside [0, 1.386] for entropy (0 never fires)"
    )
    with pytest.raises(ConfigError, match=r"= -0\.1 is outside"):
        check_threshold("max_softmax", -0.1, 4, "t")


def test_soft_kl() -> None:
    s = torch.zeros(2, 2)
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    row = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(soft_kl(s, t)) == pytest.approx(row / 2)
    assert float(soft_kl(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)
    # T^2 scaling: at T = 2 the rows are softened to (sqrt 3 : 1) and scaled by 4.
    p = math.sqrt(3) / (1 + math.sqrt(3))
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert float(soft_kl(s, t, 2.0)) == pytest.approx(4 * kl / 2)
