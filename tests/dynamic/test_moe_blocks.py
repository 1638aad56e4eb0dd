from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.moe_blocks import find_feed_forwards, replace_module
from netchisel.dynamic.moe_layer import MoEFeedForward
from netchisel.dynamic.moe_split import sliced_experts
from netchisel.zoo import gpt


class Residual(nn.Module):
    """Linear - GELU - Linear children, but the forward adds its input: not a plain FFN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in, self.act, self.fc_out = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc_out(self.act(self.fc_in(x)))  # type: ignore[no-any-return]


def test_auto_and_globs_find_the_gpt_mlps() -> None:
    model = gpt(n_layer=2, n_head=2, n_embd=16, block_size=8)
    auto = find_feed_forwards(model, ("auto",), "dynamic.moe")
    assert [f.name for f in auto] == ["blocks.0.mlp", "blocks.1.mlp"]
    assert [(f.hidden, f.dropout) for f in auto] == [(64, 0.0), (64, 0.0)]
    assert auto[0].fc_in is model.blocks[0].mlp.fc_in
    globbed = find_feed_forwards(model, ("blocks.1.*", "blocks.*.mlp"), "dynamic.moe")
    assert [f.name for f in globbed] == ["blocks.0.mlp", "blocks.1.mlp"]


def test_a_block_that_is_not_a_feed_forward_is_named_in_one_line() -> None:
    model = gpt(n_layer=1, n_head=2, n_embd=16, block_size=8)
    with pytest.raises(ConfigError) as e:
        find_feed_forwards(model, ("blocks.0.attn",), "dynamic.moe")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        "dynamic.moe: module 'blocks.0.attn' (CausalSelfAttention) is not a feed-forward block"
    )
    with pytest.raises(ConfigError, match=r"module 'r' .* its output is not fc_out"):
        find_feed_forwards(_named(), ("r",), "m")
    with pytest.raises(ConfigError, match="'nope' names no module of the model"):
        find_feed_forwards(model, ("nope",), "dynamic.moe")
    with pytest.raises(ConfigError, match=r"'blocks\.\*\.attn' matches no Linear-activation"):
        find_feed_forwards(model, ("blocks.*.attn",), "dynamic.moe")
    with pytest.raises(ConfigError, match="auto found no Linear-activation-Linear block"):
        find_feed_forwards(nn.Sequential(nn.Linear(2, 2)), ("auto",), "dynamic.moe")


def _named() -> nn.Module:
    net = nn.Module()
    net.r = Residual()
    return net


def test_replace_module() -> None:
    model = gpt(n_layer=1, n_head=2, n_embd=16, block_size=8)
    replace_module(model, "blocks.0.mlp", nn.Identity())
    assert isinstance(model.blocks[0].mlp, nn.Identity)
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 256)


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D's layout: y = x @ W + b, W stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)


class LinearsFirst(nn.Module):
    """GPT-NeoX's / GPT-J's / T5's MLP: both Linears registered before the activation (or
    GPT-2's, with Conv1D), the forward fc_in - act - fc_out."""

    def __init__(self, layer: type[nn.Module], d: int = 4, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        if layer is Conv1D:
            self.fc_in, self.fc_out = Conv1D(hidden, d), Conv1D(d, hidden)
        else:
            self.fc_in, self.fc_out = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.act(self.fc_in(x)))  # type: ignore[no-any-return]


class OutFirst(LinearsFirst):
    """fc_out registered before fc_in: the Linears chain in both orders (d -> d), so only the
    forward probe can tell which runs first."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        torch.manual_seed(0)
        self.fc_out, self.act, self.fc_in = nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 8)


@pytest.mark.parametrize("block", [LinearsFirst(nn.Linear), LinearsFirst(Conv1D), OutFirst()])
def test_a_block_whose_children_are_not_registered_in_forward_order_is_found(
    block: nn.Module,
) -> None:
    # transformers registers GPT-J's, GPT-NeoX's and T5's two Linears before the activation,
    # and GPT-2's are Conv1D: a check on the children's order refused all of them.
    net = nn.Sequential(nn.Linear(4, 4), block)
    (found,) = find_feed_forwards(net, ("auto",), "dynamic.moe")
    assert (found.name, found.hidden) == ("1", 8)
    assert (found.fc_in.in_features, found.fc_out.out_features) == (4, 4)
    x = torch.randn(5, 4)
    experts = sliced_experts(found, [[0, 1, 2], [3, 4, 5, 6, 7]])
    bias = found.fc_out.bias
    layer = MoEFeedForward(nn.Linear(4, 2), experts, bias.detach(), top_k=2, gating="unit").eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), block(x), atol=1e-5)
    assert find_feed_forwards(net, ("1",), "dynamic.moe")[0].hidden == 8
