"""The formulas table itself: every name it prices is an op of this torch build, and no op is
both priced and free. The counts each formula gives are asserted through `count_flops` in
test_flops.py."""

from __future__ import annotations

import torch

from netchisel.measure.formulas import FORMULAS, NESTED_AWARE, QUANTIZED_FORMULAS, ZERO_COST


def test_every_table_name_exists_in_torch() -> None:
    names = [*FORMULAS, *ZERO_COST, *NESTED_AWARE]
    assert [n for n in names if not hasattr(torch.ops.aten, n)] == []
    assert [n for n in QUANTIZED_FORMULAS if not hasattr(torch.ops.quantized, n)] == []
    assert not set(FORMULAS) & set(ZERO_COST)
    assert set(NESTED_AWARE) <= set(FORMULAS)
