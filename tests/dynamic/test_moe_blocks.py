from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.moe_blocks import find_feed_forwards, replace_module
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
