"""Call order, input-sharing groups and the chain of blocks, read from one traced forward."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import Tensor, nn

from netchisel.calib import call_groups, find_blocks
from netchisel.core.errors import ConfigError


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.v, self.k, self.q, self.o = (nn.Linear(4, 4) for _ in range(4))  # defined out of order

    def forward(self, x: Tensor) -> Tensor:
        return self.o(self.q(x) + self.k(x) + self.v(x))  # type: ignore[no-any-return]


class Parallel(nn.Module):
    """Two blocks that both read the input: not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Attention(), Attention()])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks[0](x) + self.blocks[1](x)  # type: ignore[no-any-return]


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_layers_reading_one_tensor_form_a_group_in_call_order() -> None:
    model = Attention()
    assert call_groups(model, _linears(model), (torch.randn(2, 4),), "demo") == [
        ["q", "k", "v"],
        ["o"],
    ]


def test_blocks_must_be_a_chain() -> None:
    model = Parallel()
    example = (torch.randn(2, 4),)
    assert find_blocks(model, _linears(model), None, example, "demo") is None  # found, refused
    with pytest.raises(ConfigError, match=r"demo\.blocks: the blocks of 'blocks' are not called"):
        find_blocks(model, _linears(model), "blocks", example, "demo")
    with pytest.raises(ConfigError, match=r"demo\.blocks: 'blocks\.0' is a Attention, not a"):
        find_blocks(model, _linears(model), "blocks.0", example, "demo")
    assert find_blocks(model, _linears(model), "", example, "demo") is None  # whole model


def test_a_chain_of_blocks_is_found_without_being_named() -> None:
    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Attention(), Attention(), Attention()])

        def forward(self, x: Tensor) -> Tensor:
            for block in self.layers:
                x = block(x)
            return x

    model = Chain()
    found = find_blocks(model, _linears(model), None, (torch.randn(2, 4),), "demo")
    assert found is not None and [id(b) for b in found] == [id(b) for b in model.layers]


def test_tracing_frees_each_layer_input_once_the_forward_moves_on() -> None:
    # Holding every layer's input until the trace ends keeps the whole forward's activations
    # (0.17 GiB on the 24-layer memory bench's Llama): an earlier input must be freed by the
    # time a later layer runs, while grouping and the chain of blocks still work.
    torch.manual_seed(0)

    class Fresh(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * 1.0  # the Linear after it reads a tensor nothing else holds

    blocks = nn.ModuleList(nn.Sequential(Fresh(), nn.Linear(4, 4), nn.ReLU()) for _ in range(3))

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = blocks

        def forward(self, x: Tensor) -> Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    net = Chain()
    layers = {f"blocks.{i}.1": blocks[i][1] for i in range(3)}
    first: list[weakref.ref[Tensor]] = []
    alive_at_last: list[bool] = []
    blocks[0][1].register_forward_pre_hook(lambda m, a: first.append(weakref.ref(a[0])))
    blocks[2][1].register_forward_pre_hook(
        lambda m, a: alive_at_last.append(first[-1]() is not None)
    )
    example = (torch.ones(2, 4),)
    assert call_groups(net, layers, example, "demo") == [[n] for n in layers]
    assert find_blocks(net, layers, None, example, "demo") == list(blocks)
    assert alive_at_last == [False, False]  # trace_calls' forward, then _is_chain's
