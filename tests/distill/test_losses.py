from __future__ import annotations

import math

import pytest
import torch

from netchisel.core.errors import ConfigError
from netchisel.distill.losses import (
    attention_probabilities,
    attention_probability_loss,
    attention_transfer_loss,
    hint_loss,
    soft_target_loss,
    spatial_attention_map,
    token_kl_loss,
)

# teacher [0.75, 0.25] against a uniform student, at T = 1
TEACHER = torch.tensor([[math.log(3.0), 0.0]])
STUDENT = torch.zeros(1, 2)
FORWARD = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(p || q) = 0.130812
REVERSE = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(q || p) = 0.143841


def test_soft_target_kl_equals_the_hand_computed_value() -> None:
    assert float(soft_target_loss(STUDENT, TEACHER, 1.0)) == pytest.approx(FORWARD, abs=1e-7)
    assert round(FORWARD, 6) == 0.130812
    # identical distributions: zero
    assert float(soft_target_loss(TEACHER, TEACHER, 3.0)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("t", [0.5, 2.0, 4.0, 8.0])
def test_temperature_squared_scaling_is_exact(t: float) -> None:
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    manual = torch.nn.functional.kl_div(
        torch.log_softmax(s / t, -1),
        torch.log_softmax(te / t, -1),
        reduction="batchmean",
        log_target=True,
    )
    assert float(soft_target_loss(s, te, t)) == pytest.approx(t * t * float(manual), rel=1e-5)
    assert float(soft_target_loss(s, te, t)) == pytest.approx(
        t * t * float(soft_target_loss(s / t, te / t, 1.0)), rel=1e-5
    )


def test_reverse_kl_differs_from_forward_by_the_known_value() -> None:
    s, t = STUDENT.unsqueeze(0), TEACHER.unsqueeze(0)  # (B=1, T=1, V=2)
    forward = float(token_kl_loss(s, t))
    reverse = float(token_kl_loss(s, t, reverse=True))
    assert forward == pytest.approx(FORWARD, abs=1e-7)
    assert reverse == pytest.approx(REVERSE, abs=1e-7)
    assert reverse - forward == pytest.approx(0.013029, abs=1e-6)


def test_token_kl_leaves_padding_out_of_the_mean() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[math.log(3.0), 0.0], [100.0, -100.0], [math.log(3.0), 0.0]]])
    mask = torch.tensor([[True, False, True]])
    assert float(token_kl_loss(s, t, mask=mask)) == pytest.approx(FORWARD, abs=1e-7)
    assert float(token_kl_loss(s, t, 2.0, mask=torch.zeros(1, 3, dtype=torch.bool))) == 0.0
    with pytest.raises(ConfigError, match=r"token mask \(1, 2\)"):
        token_kl_loss(s, t, mask=torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf])
def test_bad_temperature_is_named(t: float) -> None:
    with pytest.raises(ConfigError, match=f"temperature must be > 0, got {t}"):
        soft_target_loss(STUDENT, TEACHER, t)


def test_hint_and_attention_maps() -> None:
    assert float(hint_loss(torch.zeros(2, 3), torch.full((2, 3), 2.0))) == 4.0
    a = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, 0], a[0, 1, 1, 1] = 3.0, 4.0  # |A|^2 summed over channels: 9 and 16
    norm = math.sqrt(9**2 + 16**2)
    assert spatial_attention_map(a)[0].tolist() == pytest.approx([9 / norm, 0, 0, 16 / norm])
    # maps are scale-free and ignore the channel count; orthogonal unit maps are 2 apart (squared)
    b = torch.zeros(1, 5, 2, 2)
    b[0, 2, 0, 1] = 1.0
    assert float(attention_transfer_loss(a, 7.0 * a)) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_transfer_loss(a, b)) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ConfigError, match=r"student \(1, 2, 2, 2\), teacher \(1, 5, 4, 4\)"):
        attention_transfer_loss(a, torch.zeros(1, 5, 4, 4))


def test_attention_probabilities_are_causal_and_compared_by_kl() -> None:
    q = torch.zeros(1, 2, 3, 4)
    p = attention_probabilities(q, q)
    assert p[0, 0].flatten().tolist() == pytest.approx([1, 0, 0, 0.5, 0.5, 0, 1 / 3, 1 / 3, 1 / 3])
    assert float(attention_probability_loss(p, p)) == pytest.approx(0.0, abs=1e-7)
    sharp = p.clone()
    sharp[:, :, 1] = torch.tensor([0.75, 0.25, 0.0])
    # one row of three differs: KL(sharp || uniform) / 3 rows; heads averaged when counts differ
    expected = FORWARD / 3
    assert float(attention_probability_loss(p, sharp)) == pytest.approx(expected, abs=1e-6)
    assert float(attention_probability_loss(p[:, :1], sharp)) == pytest.approx(expected, abs=1e-6)
