from __future__ import annotations

import pytest

from netchisel.measure.energy import estimate_energy


def test_fp32_and_int8_costs_follow_the_table() -> None:
    # 1000 fp32 MACs and 500 extra fp32 adds, 400 int8 MACs, 4000 weight bytes, 800 act bytes.
    e = estimate_energy(
        {"float32": 2500, "int8": 800}, {"float32": 1000, "int8": 400}, 4000, 800, 2
    )
    compute = 1000 * (3.7 + 0.9) + 500 * 0.9 + 400 * (0.2 + 0.03)
    weights = 1000 * 640.0
    activations = 200 * 2 * 5.0
    assert e.compute_uj == pytest.approx(compute / 2 * 1e-6)
    assert e.weights_uj == pytest.approx(weights / 2 * 1e-6)
    assert e.activations_uj == pytest.approx(activations / 2 * 1e-6)
    assert e.total_uj == pytest.approx((compute + weights + activations) / 2 * 1e-6)
    assert "estimate" in e.label


def test_bf16_counts_as_fp16() -> None:
    e = estimate_energy({"bfloat16": 2}, {"bfloat16": 1}, 0, 0, 1)
    assert e.total_uj == pytest.approx((1.1 + 0.4) * 1e-6)
