from __future__ import annotations

import torch

from netchisel.dynamic.width_gate import make_gate
from netchisel.dynamic.width_masking import MaskedWidth
from netchisel.dynamic.width_model import WidthModel
from netchisel.dynamic.width_slim import plan_width
from netchisel.measure import count_flops
from tests.dynamic.test_width_slim import bn_chain

WIDTHS = [0.25, 0.5, 1.0]


def _model() -> WidthModel:
    net = bn_chain()
    x = torch.zeros(1, 1, 8)
    model = WidthModel(net, plan_width(net, WIDTHS, x), WIDTHS, make_gate(x, 3)).eval()
    with torch.no_grad():
        for norms in model.norms:
            for bn in norms:  # type: ignore[attr-defined]
                bn.running_mean.normal_()
                bn.weight.normal_()
    return model


def test_sliced_compute_equals_masked_compute() -> None:
    model = _model()
    masked = MaskedWidth(model)
    x = torch.randn(16, 1, 8)
    with torch.no_grad():
        for k in range(3):
            sliced = model.run_width(x, k)
            torch.testing.assert_close(masked.run_masked(x, k), sliced, rtol=0, atol=1e-6)
        # The widths really differ, so the equality above says something.
        assert (model.run_width(x, 0) - model.run_width(x, 2)).abs().max() > 0.1
        torch.testing.assert_close(masked(x), model(x), rtol=0, atol=1e-6)


def test_masks_cost_the_full_width_whatever_the_width() -> None:
    model = _model()
    masked = MaskedWidth(model)
    x = torch.randn(4, 1, 8)
    full = count_flops(model.backbone, x).macs
    assert full == 4 * (192 + 1536 + 96)
    for k in range(3):
        model.fixed_width = k
        assert count_flops(masked, x).macs == full
        assert count_flops(model, x).macs < full or k == 2
