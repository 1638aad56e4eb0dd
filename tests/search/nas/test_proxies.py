"""Zero-cost proxies: closed forms on hand-checkable nets, the model left untouched, seeds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.search.nas import TABULAR_KWARGS, macro_net
from netchisel.search.nas.proxies import JACOB_EPS, PROXIES, proxy_score
from netchisel.zoo.models.sequence import mnist1d_cnn, mnist1d_mlp

CANDIDATE = {"width_mult": 0.5, "s1_blocks": 2, "s1_op1": "conv", "s1_op2": "grouped"}
CANDIDATE |= {"s2_blocks": 1, "s2_op1": "separable"}


def digits_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def tabular_net(width_mult: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return macro_net(**TABULAR_KWARGS, **{**CANDIDATE, "width_mult": width_mult})


def test_synflow_is_the_closed_form_of_a_two_layer_net_with_batchnorm_removed() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    w1, b1 = net[0].weight.detach().double().abs(), net[0].bias.detach().double().abs()
    w2 = net[2].weight.detach().double().abs()
    # R = 1'|W2|(|W1| 1 + |b1|) + sum|b2|, so sum |W2 * dR/dW2| = 1'|W2| h
    # and sum |W1 * dR/dW1| = 1'|W2||W1| 1
    h = w1.sum(1) + b1
    expected = float(w2.sum(0) @ h + w2.sum(0) @ w1.sum(1))
    x, y = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    assert proxy_score(net, x, y, "synflow") == pytest.approx(math.log(expected), rel=1e-12)


def test_naswot_is_the_log_determinant_of_the_hamming_kernel() -> None:
    # codes 101 and 110 agree on 1 of 3 units: K = [[3, 1], [1, 3]], det 8
    x = torch.tensor([[1.0, -1.0, 2.0], [3.0, 4.0, -5.0]])
    score = proxy_score(nn.Sequential(nn.ReLU()), x, torch.zeros(2), "naswot")
    assert score == pytest.approx(math.log(8.0), rel=1e-12)


def test_jacob_cov_of_relu_codes_is_the_closed_form() -> None:
    # Jacobians 101 and 110 correlate at -0.5: eigenvalues 0.5 and 1.5
    x = torch.tensor([[1.0, -1.0, 2.0], [3.0, 4.0, -5.0]])
    score = proxy_score(nn.Sequential(nn.ReLU()), x, torch.zeros(2), "jacob_cov")
    expected = -sum(math.log(v + JACOB_EPS) + 1 / (v + JACOB_EPS) for v in (0.5, 1.5))
    assert score == pytest.approx(expected, rel=1e-9)


def test_grad_norm_and_snip_are_the_closed_forms_of_softmax_regression() -> None:
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    # logits (1, 2); dL/dW = (p - onehot) x' with p0 = 1 / (1 + e)
    q = 1 - 1 / (1 + math.e)
    assert proxy_score(net, x, y, "grad_norm") == pytest.approx(q * math.sqrt(10), rel=1e-6)
    assert proxy_score(net, x, y, "snip") == pytest.approx(3 * q, rel=1e-6)


def test_params_and_flops_are_exact() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    x, y = torch.zeros(7, 4), torch.zeros(7, dtype=torch.long)
    assert proxy_score(net, x, y, "params") == 23.0
    assert proxy_score(net, x, y, "flops") == 2 * (12 + 6) + 3 + 2  # one sample: MACs x2 + biases


def test_zen_reads_the_classifier_input_and_redraws_the_weights() -> None:
    # no pooling: the features are the Linear's input, x itself, so the difference is
    # 0.01 |e| summed over 4,000 dims: 0.01 * 4000 * sqrt(2 / pi) on average
    net = nn.Sequential(nn.Identity(), nn.Linear(4000, 2))
    x, y = torch.zeros(8, 4000), torch.zeros(8, dtype=torch.long)
    score = proxy_score(net, x, y, "zen")
    assert score == pytest.approx(math.log(0.01 * 4000 * math.sqrt(2 / math.pi)), abs=0.02)
    conv = tabular_net()
    scaled = tabular_net()
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(5.0)
    batch = digits_batch()
    assert proxy_score(conv, *batch, "zen") == proxy_score(scaled, *batch, "zen")


def test_zen_without_pooling_or_linear_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^zen needs the features before global pooling") as e:
        proxy_score(nn.Conv1d(1, 2, 3), torch.randn(2, 1, 8), torch.zeros(2), "zen")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("train", [True, False])
def test_no_proxy_changes_the_model_or_the_global_rng(train: bool) -> None:
    net = tabular_net().train(train)
    x, y = digits_batch()
    net(x)  # give the batch norms non-default running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    for name in PROXIES:
        proxy_score(net, x, y, name, seed=7)
    assert torch.equal(torch.rand(3), expected_draw)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training == train for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_scores_repeat_for_a_seed() -> None:
    net, (x, y) = tabular_net(), digits_batch()
    first = {name: proxy_score(net, x, y, name, seed=3) for name in PROXIES}
    assert first == {name: proxy_score(net, x, y, name, seed=3) for name in PROXIES}
    assert proxy_score(net, x, y, "zen", seed=4) != first["zen"]  # Gaussian inputs move


@pytest.mark.parametrize("build", [mnist1d_cnn, mnist1d_mlp])
def test_every_proxy_scores_a_one_dimensional_model(build: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    scores = {name: proxy_score(model, x, y, name) for name in PROXIES}
    assert all(math.isfinite(s) for s in scores.values()), scores
    assert scores["params"] == sum(p.numel() for p in model.parameters())


def test_a_wider_net_scores_higher_on_synflow_and_params() -> None:
    x, y = digits_batch()
    narrow, wide = tabular_net(0.5), tabular_net(1.0)
    for name in ("synflow", "params", "flops"):
        assert proxy_score(wide, x, y, name) > proxy_score(narrow, x, y, name), name


def test_bad_input_is_one_line() -> None:
    x, y = digits_batch()
    with pytest.raises(ConfigError, match=r"unknown proxy 'synflo' \(known: synflow, naswot"):
        proxy_score(tabular_net(), x, y, "synflo")
    with pytest.raises(ConfigError, match="16 inputs but 3 targets"):
        proxy_score(tabular_net(), x, y[:3], "snip")
    with pytest.raises(ConfigError, match=r"naswot reads nn\.ReLU"):
        proxy_score(nn.Linear(2, 2), torch.zeros(2, 2), torch.zeros(2), "naswot")
    with pytest.raises(ConfigError, match="no weight of rank >= 2"):
        proxy_score(nn.Sequential(nn.ReLU()), torch.zeros(2, 2), torch.zeros(2), "snip")


def test_jacob_cov_needs_two_samples() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="needs a batch of at least 2, got 1"):
        proxy_score(model, torch.randn(1, 4), torch.zeros(1, dtype=torch.long), "jacob_cov")
