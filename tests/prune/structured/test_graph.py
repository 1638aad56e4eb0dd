"""Tracing real architectures: each failure class of issue 20 on a small instance of it
(channel shuffle, grouped convolution, transposed token mixing, an output that is also the
residual stream, Hugging Face's Conv1D and key/value cache, runaway groups)."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch_pruning as tp
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ModelError
from netchisel.prune.structured import StructuredConfig, prune_structured
from netchisel.prune.structured import graph as graph_module
from netchisel.prune.structured.graph import (
    GroupTooLarge,
    bounded_groups,
    dependency_graph,
    guarded_mapping,
    no_kv_cache,
    traceable,
)
from tests.prune.structured._hf import needs_hf, tiny_llama


def _prune(net: nn.Module, inputs: tuple[Tensor, ...], **kwargs: object) -> dict[str, object]:
    class _Task:
        def example_inputs(
            self, batch_size: int = 1, split: str | None = None
        ) -> tuple[Tensor, ...]:
            return inputs

    ctx = Context(task=_Task(), quiet=True)  # type: ignore[arg-type]
    prune_structured(net, StructuredConfig(**kwargs), ctx)  # type: ignore[arg-type]
    return ctx.records


class _Shuffle(nn.Module):
    """ShuffleNetV2's unit: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y1, y2 = self.a(x).chunk(2, dim=1)
        y = torch.cat((y1, self.b(y2).relu()), dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.fc(self.c(y).mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_a_channel_shuffle_prunes_what_it_can_and_names_what_breaks() -> None:
    torch.manual_seed(0)
    net = _Shuffle().eval()
    x = torch.randn(1, 3, 4, 4)
    records = _prune(net, (x,), ratio=0.5)
    assert records["channels"] == {"c": [8, 4]}
    assert records["skipped"]["b"].startswith("pruning it breaks the forward pass")
    assert net(x).shape == (1, 2)


def test_a_reshape_mapping_that_divides_by_zero_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Torch-Pruning infers 0 channels after ShuffleNetV2's shuffle and divides by it."""

    def zero(graph: object, node: object) -> None:
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(graph_module, "_REAL_RESHAPE_MAPPING", zero)
    mapping = tp.dependency.index_mapping
    real = mapping.update_reshape_index_mapping
    with guarded_mapping():
        assert mapping.update_reshape_index_mapping(None, None) is None
        with guarded_mapping():
            pass
        assert mapping.update_reshape_index_mapping is not real  # nested use keeps the guard
    assert mapping.update_reshape_index_mapping is real


class _Grouped(nn.Module):
    """RegNet's bottleneck: 1x1, grouped 3x3 (groups=2), 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.c(self.b(self.a(x).relu()).relu())
        return self.fc(y.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_groups_that_feed_or_leave_a_grouped_convolution_are_left_alone() -> None:
    net = _Grouped().eval()
    x = torch.randn(1, 3, 6, 6)
    records = _prune(net, (x,), ratio=0.5)
    assert records["channels"] == {"c": [8, 4]}
    assert records["skipped"]["a"] == "b is a grouped convolution (groups=2)"
    assert records["skipped"]["b"] == "b is a grouped convolution (groups=2)"
    assert net(x).shape == (1, 2)


class _Mixer(nn.Module):
    """MLP-Mixer: token mixing on the transposed activations, then channel mixing."""

    def __init__(self) -> None:
        super().__init__()
        self.tok1, self.tok2 = nn.Linear(4, 6), nn.Linear(6, 4)
        self.ch1, self.ch2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.tok2(self.tok1(x.transpose(1, 2)).relu()).transpose(1, 2)
        x = x + self.ch2(self.ch1(x).relu())
        return self.head(x.mean(dim=1))  # type: ignore[no-any-return]


def test_transposed_token_mixing_prunes_without_an_index_error() -> None:
    torch.manual_seed(0)
    net = _Mixer().eval()
    x = torch.randn(1, 4, 8)
    records = _prune(net, (x,), ratio=0.5)
    assert records["channels"]["ch1"] == [16, 8]
    assert net(x).shape == (1, 2)
    assert records["params_after"] < records["params_before"]


class _StreamOut(nn.Module):
    """BERT's shape: the residual stream is itself an output (last_hidden_state)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.pool = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.emb(x)
        h = self.norm(h + self.down(self.up(h).relu()))
        return h, self.pool(h[:, 0]).tanh()


def test_a_group_whose_channels_are_an_output_is_left_alone_without_exclude() -> None:
    torch.manual_seed(0)
    net = _StreamOut().eval()
    x = torch.randn(1, 3, 4)
    records = _prune(net, (x,), ratio=0.5)
    assert records["channels"] == {"up": [16, 8]}
    assert "reach the model's output" in records["skipped"]["emb"]
    assert [t.shape for t in net(x)] == [(1, 3, 8), (1, 8)]


class _WidthInForward(nn.Module):
    """torchvision's ViT: a reshape to a fixed hidden width the graph cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 2, stride=2)
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)
        self.hidden = 8

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        h = self.proj(x).reshape(n, self.hidden, -1).transpose(1, 2)
        h = h + self.down(self.up(h).relu())
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]


def test_a_group_that_breaks_the_forward_is_found_left_alone_and_named() -> None:
    torch.manual_seed(0)
    net = _WidthInForward().eval()
    x = torch.randn(1, 3, 4, 4)
    records = _prune(copy.deepcopy(net), (x,), ratio=0.5)
    assert records["channels"] == {"up": [16, 8]}
    # the residual group (down, with proj) is the one that breaks: proj's width is fixed
    assert records["skipped"]["down"].startswith("pruning it breaks the forward pass")
    with pytest.raises(ModelError) as error:
        _prune(net, (x,), ratio=0.5, layers=("proj", "down"))
    message = str(error.value)
    assert "\n" not in message and "exclude=[" in message and "pruning the group of down" in message
    assert net.proj.out_channels == 8  # unchanged


def test_bounded_groups_stop_a_group_past_its_limit() -> None:
    net = _Mixer()
    x = torch.randn(1, 4, 8)
    with traceable(net):
        dg = dependency_graph(net, (x,))
        root = dg.get_pruner_of_module(net.ch1).prune_out_channels
        assert len(dg.get_pruning_group(net.ch1, root, list(range(16)))) == 6
        with bounded_groups(1), pytest.raises(GroupTooLarge, match="more than 1 couplings"):
            dg.get_pruning_group(net.ch1, root, list(range(16)))


@needs_hf
def test_a_causal_lm_prunes_in_seconds_without_setting_use_cache() -> None:
    net = tiny_llama()
    ids = torch.randint(0, 64, (1, 6))
    with no_kv_cache(net):
        assert net.config.use_cache is False
    assert net.config.use_cache is True
    start = time.perf_counter()
    records = _prune(net, (ids,), ratio=0.5)
    assert time.perf_counter() - start < 20  # was > 90 s: q/k/v groups traced through RoPE
    assert net.config.use_cache is True
    mlp = net.model.layers[0].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (
        32,
        32,
        32,
    )
    assert records["skipped"]["model.layers.0.self_attn.q_proj"] == (
        "attention heads of model.layers.0.self_attn: use granularity 'heads'"
    )
    assert net(ids).logits.shape == (1, 6, 64)


@needs_hf
def test_gpt2_conv1d_mlp_units_are_channels() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    net = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32)
    ).eval()
    ids = torch.randint(0, 64, (1, 6))
    records = _prune(net, (ids,), ratio=0.5)
    mlp = net.transformer.h[0].mlp
    assert records["channels"]["transformer.h.0.mlp.c_fc"] == [128, 64]
    # Conv1D stores (in, out): c_fc's columns and c_proj's rows are the hidden units
    assert mlp.c_fc.nf == 64 and mlp.c_fc.weight.shape[1] == 64 and mlp.c_proj.weight.shape[0] == 64
    assert net(ids).logits.shape == (1, 6, 64)
