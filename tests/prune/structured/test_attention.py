"""Heads cut by hand: grouped-query attention, fused qkv, GPT-2's Conv1D and
nn.MultiheadAttention. Removing a head must be the same function as silencing its columns of
the output projection; counts, widths and MACs follow exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from netchisel.artifact.store import load, save
from netchisel.core.context import Context
from netchisel.measure import count_flops
from netchisel.prune.structured import StructuredConfig, prune_structured
from netchisel.prune.structured.attention import (
    PrunedMultiheadAttention,
    attention_layouts,
    cut_heads,
)
from tests.prune.structured._hf import needs_hf, tiny_llama


class _Fused(nn.Module):
    """timm's Attention, reduced: one qkv Linear laid out (3, heads, head_dim), then proj."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, self.attn_dim))  # type: ignore[no-any-return]


class _Net(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = (
            self.attn(x, x, x, need_weights=False)[0]
            if isinstance(self.attn, nn.MultiheadAttention)
            else self.attn(x)
        )
        return self.head(y.mean(dim=1))  # type: ignore[no-any-return]


def _prune_heads(net: nn.Module, inputs: tuple[Tensor, ...], ratio: float = 0.5) -> Context:
    ctx = Context(task=None, quiet=True)

    class _Task:  # only example inputs are needed
        def example_inputs(
            self, batch_size: int = 1, split: str | None = None
        ) -> tuple[Tensor, ...]:
            return inputs

    ctx.task = _Task()  # type: ignore[assignment]
    prune_structured(net, StructuredConfig(ratio=ratio, granularity="heads"), ctx)
    return ctx


def _silenced(
    reference: nn.Module, out: nn.Linear | nn.Module, dropped: list[int], d: int, dim: int
) -> None:
    with torch.no_grad():
        for h in dropped:
            out.weight.narrow(dim, h * d, d).zero_()  # type: ignore[operator]


def _dropped(ref_rows: Tensor, kept_rows: Tensor, heads: int, d: int) -> list[int]:
    kept = [
        h
        for h in range(heads)
        if any(
            torch.equal(ref_rows[h * d : (h + 1) * d], kept_rows[j * d : (j + 1) * d])
            for j in range(len(kept_rows) // d)
        )
    ]
    return [h for h in range(heads) if h not in kept]


def test_fused_qkv_heads_are_cut_exactly_and_macs_drop_by_the_heads_share() -> None:
    torch.manual_seed(0)
    net = _Net(_Fused()).eval()
    reference = copy.deepcopy(net)
    x = torch.randn(2, 5, 16)
    ctx = _prune_heads(net, (x[:1],))
    attn = net.attn
    assert ctx.records["heads"] == {"attn": [4, 2]}
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (
        2,
        8,
        24,
        8,
    )
    # params: 2 heads of 4 rows in q, k and v (16 inputs + bias) and 4 proj columns each
    assert ctx.records["params_before"] - ctx.records["params_after"] == 2 * (3 * 4 * 17 + 4 * 16)
    dropped = _dropped(reference.attn.qkv.weight[:16], attn.qkv.weight[:8], 4, 4)
    assert len(dropped) == 2
    _silenced(reference, reference.attn.proj, dropped, 4, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)
    # MACs of one example (batch 1, 5 tokens): qkv 5*16*24, attention 2*5*5*8, proj 5*8*16
    one = (x[:1],)
    assert ctx.records["macs_after"] == count_flops(net, one).macs
    assert (
        ctx.records["macs_before"] - ctx.records["macs_after"]
        == 5 * 16 * 24 + 2 * 5 * 5 * 8 + 5 * 8 * 16
    )


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_are_cut_and_it_round_trips(
    batch_first: bool, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    net = _Net(mha).eval()
    if not batch_first:  # the toy feeds (B, L, E): make it (L, B, E) for this one
        net.forward = lambda x: net.head(
            mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False)[0]
            .transpose(0, 1)
            .mean(dim=1)
        )  # type: ignore[method-assign]
    reference = copy.deepcopy(net)
    x = torch.randn(2, 5, 16)
    ctx = _prune_heads(net, (x,))
    assert type(mha) is PrunedMultiheadAttention and mha.num_heads == 2 and mha.head_dim == 4
    assert mha.in_proj_weight.shape == (24, 16) and mha.out_proj.weight.shape == (16, 8)
    assert ctx.records["params_before"] - ctx.records["params_after"] == 2 * (3 * 4 * 17 + 4 * 16)
    ref = reference.attn
    dropped = _dropped(ref.in_proj_weight[:16], mha.in_proj_weight[:8], 4, 4)
    _silenced(reference, ref.out_proj, dropped, 4, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)
        # need_weights: averaged attention weights of the kept heads, each row sums to 1
        q = x if batch_first else x.transpose(0, 1)
        out, weights = mha(q, q, q)
        assert weights is not None and weights.shape == (2, 5, 5)
        torch.testing.assert_close(out, mha(q, q, q, need_weights=False)[0])
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    if batch_first:
        loaded = load(save(net, tmp_path / "mha"), trust=[_Net])
        assert type(loaded.attn) is PrunedMultiheadAttention and loaded.attn.num_heads == 2
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x))


def test_a_multihead_attention_with_bias_k_is_not_a_known_layout() -> None:
    assert attention_layouts(nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))) == {}
    layout = attention_layouts(nn.Sequential(nn.MultiheadAttention(8, 2)))["0"]
    assert (layout.kind, layout.heads, layout.kv_heads, layout.head_dim) == ("mha", 2, 2, 4)


@needs_hf
def test_grouped_query_attention_keeps_whole_kv_groups() -> None:
    net = tiny_llama()
    reference = copy.deepcopy(net)
    ids = torch.randint(0, 64, (2, 6))
    assert net.config.use_cache
    ctx = _prune_heads(net, (ids[:1],))
    assert net.config.use_cache  # set to False while pruning only
    # 4 query heads in 2 kv groups of 2: one group kept, so 2 query heads and 1 kv head
    assert ctx.records["heads"] == {f"model.layers.{i}.self_attn": [4, 2] for i in range(2)}
    for i in range(2):
        attn, ref = net.model.layers[i].self_attn, reference.model.layers[i].self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (
            16,
            8,
            8,
        )
        assert attn.o_proj.in_features == 16 and attn.num_key_value_groups == 2
        # query heads per kv group unchanged: q heads = kv heads * groups
        assert (
            attn.q_proj.out_features // 8
            == attn.k_proj.out_features // 8 * attn.num_key_value_groups
        )
        kept_group = 0 if torch.equal(attn.k_proj.weight, ref.k_proj.weight[:8]) else 1
        assert torch.equal(
            attn.q_proj.weight, ref.q_proj.weight[16 * kept_group : 16 * kept_group + 16]
        )
        with torch.no_grad():
            ref.o_proj.weight[:, 16 * (1 - kept_group) : 16 * (2 - kept_group)] = 0
    # per layer: q 16x32, k 8x32, v 8x32 rows and o 32x16 columns gone
    assert ctx.records["params_before"] - ctx.records["params_after"] == 2 * (512 + 256 + 256 + 512)
    with torch.no_grad():
        torch.testing.assert_close(net(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


@needs_hf
def test_gpt2_conv1d_fused_heads_follow_split_size() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32)
    net = GPT2LMHeadModel(config).eval()
    reference = copy.deepcopy(net)
    ids = torch.randint(0, 64, (2, 6))
    ctx = _prune_heads(net, (ids[:1],))
    attn, ref = net.transformer.h[0].attn, reference.transformer.h[0].attn
    assert ctx.records["heads"] == {"transformer.h.0.attn": [4, 2]}
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf, attn.c_attn.weight.shape[1]) == (
        2,
        16,
        48,
        48,
    )
    assert attn.c_proj.weight.shape == (16, 32)
    dropped = _dropped(ref.c_attn.weight[:, :32].T, attn.c_attn.weight[:, :16].T, 4, 8)
    with torch.no_grad():
        for h in dropped:
            ref.c_proj.weight[8 * h : 8 * h + 8] = 0
        torch.testing.assert_close(net(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


def test_cut_heads_on_a_layout_directly() -> None:
    torch.manual_seed(0)
    net = _Net(_Fused())
    layout = attention_layouts(net)["attn"]
    assert (layout.kind, layout.inputs, layout.o) == ("fused", ("attn.qkv",), "attn.proj")
    cut_heads(net, "attn", layout, torch.tensor([False, True, False, False]))
    assert net.attn.num_heads == 1 and net(torch.zeros(1, 3, 16)).shape == (1, 3)


@needs_hf
def test_t5_layers_sharing_a_position_bias_keep_the_same_heads() -> None:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    net = T5EncoderModel(config).eval()
    reference = copy.deepcopy(net)
    ids = torch.randint(0, 64, (2, 6))
    ctx = _prune_heads(net, (ids[:1],))
    first = "encoder.block.0.layer.0.SelfAttention"
    assert ctx.records["heads"] == {first: [4, 2]}  # one unit for both layers
    attns = [net.encoder.block[i].layer[0].SelfAttention for i in range(2)]
    refs = [reference.encoder.block[i].layer[0].SelfAttention for i in range(2)]
    assert attns[0].relative_attention_bias.weight.shape == (32, 2)
    dropped = _dropped(refs[0].q.weight, attns[0].q.weight, 4, 8)
    assert dropped == _dropped(refs[1].q.weight, attns[1].q.weight, 4, 8) and len(dropped) == 2
    assert all((a.n_heads, a.inner_dim, a.o.in_features) == (2, 16, 16) for a in attns)
    # per layer q, k, v: 2 heads x 8 rows x 32; o: 32 x 16; the bias table: 32 buckets x 2
    assert ctx.records["params_before"] - ctx.records["params_after"] == 2 * (3 * 512 + 512) + 64
    with torch.no_grad():
        for ref in refs:
            for h in dropped:
                ref.o.weight[:, 8 * h : 8 * h + 8] = 0
        torch.testing.assert_close(
            net(ids).last_hidden_state, reference(ids).last_hidden_state, rtol=1e-4, atol=1e-5
        )


def test_wanda_on_heads_without_linear_inputs_is_one_line_naming_the_module() -> None:
    from torch.utils.data import TensorDataset

    import netchisel as nc
    from netchisel.core.errors import ConfigError

    torch.manual_seed(0)
    net = _Net(nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    x = torch.randn(4, 5, 16)
    task = nc.custom_task(lambda m: {"s": 0.0}, [x[:1]], "s", train=TensorDataset(x), name="t")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = StructuredConfig(granularity="heads", importance="wanda", calibration_samples=4)
    with pytest.raises(ConfigError) as error:
        nc.prune_(net, config, task)
    assert "\n" not in str(error.value) and "needs the input statistics of attn" in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
