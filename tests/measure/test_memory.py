from __future__ import annotations

import torch
from torch import nn

from netchisel.measure.memory import peak_forward_bytes


def test_peak_counts_weights_inputs_and_the_two_live_activations() -> None:
    net = nn.Sequential(*[nn.Linear(100, 100) for _ in range(5)])
    x = torch.zeros(10, 100)
    peak, allocated = peak_forward_bytes(net, x)
    weights = 5 * (100 * 100 + 100) * 4
    activation = 10 * 100 * 4
    # At most the previous and the current layer's outputs are alive at once.
    assert peak == weights + activation + 2 * activation
    assert allocated == 5 * activation


def test_views_and_inplace_ops_allocate_nothing() -> None:
    class Viewer(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(-1).relu_().unsqueeze(0)

    peak, allocated = peak_forward_bytes(Viewer(), torch.zeros(4, 4))
    assert allocated == 0
    assert peak == 4 * 4 * 4
