from __future__ import annotations

import torch
from torch import nn

from netchisel.dynamic.moe_blocks import FeedForward
from netchisel.dynamic.moe_layer import MoEFeedForward
from netchisel.dynamic.moe_split import (
    balanced_kmeans,
    coactivation_groups,
    fresh_router,
    scratch_experts,
    sliced_experts,
    upcycled_experts,
)


def _ffn(d: int = 8, h: int = 16) -> tuple[nn.Sequential, FeedForward]:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
    return dense, FeedForward("", dense[0], dense[1], dense[2], 0.0)


def test_balanced_kmeans_recovers_planted_groups_of_equal_size() -> None:
    torch.manual_seed(0)
    centres = torch.eye(4) * 5
    truth = torch.arange(12) % 4  # 3 rows around each centre
    rows = centres[truth] + 0.1 * torch.randn(12, 4)
    groups = balanced_kmeans(rows, 4)
    assert sorted(map(tuple, groups)) == sorted(
        tuple((truth == g).nonzero().squeeze(1).tolist()) for g in range(4)
    )
    # balance wins over similarity: 10 rows near one centre and 2 near another, 4 groups of 3
    uneven = torch.cat([torch.ones(10, 2) + 0.01 * torch.randn(10, 2), -torch.ones(2, 2)])
    assert sorted(len(g) for g in balanced_kmeans(uneven, 4)) == [3, 3, 3, 3]
    assert sorted(len(g) for g in balanced_kmeans(torch.randn(10, 3), 4)) == [2, 2, 3, 3]


def test_coactivation_groups_put_units_that_fire_together_in_one_expert() -> None:
    # Units 0-3 fire on feature 0, units 4-7 on feature 1 (ReLU): two clean groups.
    fc_in = nn.Linear(2, 8)
    with torch.no_grad():
        fc_in.weight.copy_(
            torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)[[0, 4, 1, 5, 2, 6, 3, 7]]
        )
        fc_in.bias.zero_()
    ffn = FeedForward("", fc_in, nn.ReLU(), nn.Linear(8, 2), 0.0)
    x = torch.rand(200, 2) * torch.tensor([[1.0, 0.0]]).repeat(200, 1)
    x[100:] = torch.rand(100, 2) * torch.tensor([0.0, 1.0])
    groups = coactivation_groups(ffn, x, 2, seed=0)
    assert sorted(groups) == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_sliced_experts_add_up_to_the_block_and_upcycled_ones_equal_it() -> None:
    dense, ffn = _ffn()
    x = torch.randn(20, 8)
    experts = sliced_experts(ffn, [[0, 3, 5, 7], [1, 2, 4, 6], [8, 9, 10, 11], [12, 13, 14, 15]])
    with torch.no_grad():
        total = sum(e(x) for e in experts) + dense[2].bias
        assert float((total - dense(x)).abs().max()) < 1e-5
        # Upcycling: E copies of the block, top-2 with renormalised gates = the block itself.
        moe = MoEFeedForward(
            fresh_router(8, 4, dense[0].weight, seed=0),
            upcycled_experts(ffn, 4),
            dense[2].bias,
            top_k=2,
            gating="renorm",
        )
        assert float((moe(x) - dense(x)).abs().max()) < 1e-5
        assert moe.stats["dropped"] == 0 and sum(moe.stats["kept"]) == 40


def test_scratch_experts_take_the_block_scale() -> None:
    _, ffn = _ffn(32, 128)
    with torch.no_grad():
        ffn.fc_in.weight.normal_(0.0, 0.5)
        ffn.fc_out.weight.normal_(0.0, 0.05)
    experts = scratch_experts(ffn, 4, 64, seed=0)
    assert [tuple(e[0].weight.shape) for e in experts] == [(64, 32)] * 4
    w_in = torch.cat([e[0].weight.detach().flatten() for e in experts])
    w_out = torch.cat([e[2].weight.detach().flatten() for e in experts])
    assert abs(float(w_in.std()) - 0.5) < 0.02 and abs(float(w_out.std()) - 0.05) < 0.002
    assert not torch.equal(experts[0][0].weight, experts[1][0].weight)
    again = scratch_experts(ffn, 4, 64, seed=0)
    assert torch.equal(again[3][2].weight, experts[3][2].weight)  # seeded
