from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.moe_blocks import FeedForward
from netchisel.dynamic.moe_layer import MoEFeedForward, capacity, check_routing, make_expert
from netchisel.dynamic.moe_split import sliced_experts
from netchisel.measure import count_flops


def _router(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    w = torch.tensor(weight)
    router = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        router.weight.copy_(w)
        router.bias.copy_(torch.tensor(bias))
    return router


def _experts(n: int, d: int = 4, h: int = 3) -> list[nn.Sequential]:
    torch.manual_seed(0)
    return [make_expert(d, h, d, nn.GELU()) for _ in range(n)]


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_all_experts_with_unit_gates_is_the_dense_block(dtype: torch.dtype, bound: float) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).to(dtype)
    ffn = FeedForward("", dense[0], dense[1], dense[2], 0.0)
    groups = [[0, 5, 9, 13], [1, 2, 3, 4], [6, 7, 8, 10], [11, 12, 14, 15]]
    moe = MoEFeedForward(
        nn.Linear(8, 4).to(dtype),
        sliced_experts(ffn, groups),
        dense[2].bias,
        top_k=4,
        capacity_factor=1.0,
        gating="unit",
    )
    x = torch.randn(3, 7, 8, dtype=dtype)
    with torch.no_grad():
        assert float((moe(x) - dense(x)).abs().max()) < bound
    assert moe.stats == {"tokens": 21, "load": [21] * 4, "kept": [21] * 4, "dropped": 0}


def test_capacity_drops_are_counted_and_contribute_nothing() -> None:
    # Token e_i goes first to expert i, then to expert i+1; 4 tokens e_0 and 2 tokens e_3.
    w = [[10.0, 0, 0, 5.0], [5.0, 10.0, 0, 0], [0, 5.0, 10.0, 0], [0, 0, 5.0, 10.0]]
    experts = _experts(4)
    bias = torch.tensor([1.0, 2.0, 3.0, 4.0])
    moe = MoEFeedForward(
        _router(w, [0.0] * 4), experts, bias, top_k=2, capacity_factor=1.0, gating="renorm"
    ).eval()
    x = torch.eye(4)[[0, 0, 0, 0, 3, 3]]
    assert capacity(6, 4, 2, 1.0) == 3
    with torch.no_grad():
        out = moe(x)
        p = torch.softmax(torch.tensor([10.0, 0, 0, 5.0]), 0)  # token e_3: experts 3 then 0
        g3 = float(p[0] / (p[0] + p[3]))
        q = torch.softmax(torch.tensor([10.0, 5.0, 0, 0]), 0)  # token e_0: experts 0 then 1
        g0, g1 = float(q[0] / (q[0] + q[1])), float(q[1] / (q[0] + q[1]))
        # Expert 0 serves the first choices of tokens 0-2; token 3's first choice and tokens
        # 4-5's second choices are over its capacity of 3. Expert 1: tokens 0-2 (second choice).
        assert moe.stats == {"tokens": 6, "load": [6, 4, 0, 2], "kept": [3, 3, 0, 2], "dropped": 4}
        want_0 = g0 * experts[0](x[:1]) + g1 * experts[1](x[:1]) + bias
        assert torch.allclose(out[:3], want_0.expand(3, 4), atol=1e-6)
        assert torch.equal(out[3], bias)  # dropped by both its experts: the bias alone
        assert torch.allclose(out[4:], (g3 * experts[3](x[4:5]) + bias).expand(2, 4), atol=1e-6)


def test_balance_loss_hand_computed() -> None:
    # Every token: p = (0.75, 0.25), so f = (1, 0) and P = (0.75, 0.25): 2 * 0.75 = 1.5.
    moe = MoEFeedForward(
        _router([[0.0], [0.0]], [math.log(3.0), 0.0]), _experts(2, d=1, h=2), None
    ).train()
    moe(torch.randn(5, 1))
    assert float(moe.balance_loss()) == pytest.approx(1.5, abs=1e-6)
    # Tokens +1 and -1 split evenly: f = P = (0.5, 0.5), the minimum E * sum f P = 1.
    moe = MoEFeedForward(_router([[1.0], [-1.0]], [0.0, 0.0]), _experts(2, d=1, h=2), None)
    moe.train()(torch.tensor([[1.0], [-1.0], [2.0], [-2.0]]))
    loss = moe.balance_loss()
    assert float(loss) == pytest.approx(1.0, abs=1e-6)
    assert moe.router.weight.grad is None
    loss.backward()
    assert moe.router.bias.grad is not None and moe.router.bias.grad.abs().sum() > 0
    moe.eval()(torch.randn(3, 1))  # eval forwards leave the last training value
    assert float(moe.balance_loss()) == pytest.approx(1.0, abs=1e-6)


def test_only_the_chosen_experts_run() -> None:
    # Router sends every token to expert 2: count_flops sees the router and one expert.
    d, h, n, tokens = 4, 3, 4, 10
    moe = MoEFeedForward(_router([[0.0] * d] * n, [0, 0, 5.0, 0]), _experts(n, d, h), None)
    x = torch.randn(2, 5, d)
    count = count_flops(moe, x)
    assert count.uncounted_ops == ()
    assert count.macs == tokens * (d * n) + tokens * (d * h + h * d)
    assert count.macs_by_module["experts.2"] == tokens * (d * h + h * d)
    assert "experts.0" not in count.macs_by_module or count.macs_by_module["experts.0"] == 0
    # top-2 of 4 with random routing: exactly the served tokens' MACs, not E times
    moe = MoEFeedForward(nn.Linear(d, n), _experts(n, d, h), None, top_k=2)
    count = count_flops(moe, x)
    assert sum(moe.stats["kept"]) == 2 * tokens
    assert count.macs == tokens * d * n + 2 * tokens * (d * h + h * d)
    assert count.macs < tokens * (d * n + n * (d * h + h * d))


def test_routing_errors_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^x: top_k = 5 is more than experts = 4; choose"):
        check_routing(4, 5, None, "x")
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match=rf"capacity_factor must be > 0 .*got {bad}$"):
            check_routing(4, 1, bad, "x")
    with pytest.raises(ConfigError, match="gating 'dense' is not one of"):
        MoEFeedForward(nn.Linear(4, 2), _experts(2), None, gating="dense")
    with pytest.raises(ConfigError, match="router has 3 outputs for 2 experts"):
        MoEFeedForward(nn.Linear(4, 3), _experts(2), None)


def test_z_loss_hand_computed_and_it_has_a_gradient() -> None:
    # Logits (ln 3, 0) for every token: logsumexp = ln 4, z-loss = (ln 4)^2 = 1.9218...
    moe = MoEFeedForward(
        _router([[0.0], [0.0]], [math.log(3.0), 0.0]), _experts(2, d=1, h=2), None
    ).train()
    moe(torch.randn(5, 1))
    assert float(moe.z_loss()) == pytest.approx(math.log(4.0) ** 2, abs=1e-6)
    moe.z_loss().backward()
    assert moe.router.bias.grad is not None
    # d/db_i of (lse)^2 = 2 lse p_i: (2 ln 4 * 3/4, 2 ln 4 * 1/4)
    want = [2 * math.log(4.0) * 0.75, 2 * math.log(4.0) * 0.25]
    assert moe.router.bias.grad.tolist() == pytest.approx(want, abs=1e-6)
    fresh = MoEFeedForward(nn.Linear(1, 2), _experts(2, d=1, h=2), None)
    assert float(fresh.z_loss()) == 0.0  # before any training forward


def test_jitter_moves_training_routing_only() -> None:
    # Router logits x * (1, -1) + (0, 0.5): token x = 0.3 sits near the boundary (0.25).
    torch.manual_seed(0)
    experts = _experts(2, d=1, h=2)
    x = torch.full((400, 1), 0.3)
    still = MoEFeedForward(_router([[1.0], [-1.0]], [0.0, 0.5]), experts, None).train()
    still(x)
    assert still.stats["load"] == [400, 0]  # no jitter: every token to expert 0
    moe = MoEFeedForward(_router([[1.0], [-1.0]], [0.0, 0.5]), experts, None, jitter=0.5)
    moe.train()(x)
    # x * U(0.5, 1.5) < 0.25 with probability 1/3: about 133 of 400 go to expert 1.
    assert 90 < moe.stats["load"][1] < 180
    moe.eval()
    with torch.no_grad():
        assert torch.equal(moe(x), still.eval()(x))  # eval forwards never jitter
        assert moe.stats["load"] == [400, 0]


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), True])
def test_jitter_outside_zero_one_is_one_line(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"^MoEFeedForward: jitter must be in \[0, 1\), got "):
        MoEFeedForward(nn.Linear(4, 2), _experts(2), None, jitter=bad)
