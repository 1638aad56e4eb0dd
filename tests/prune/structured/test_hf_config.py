"""Hugging Face configs follow head pruning, so `save_pretrained` writes a checkpoint that
`from_pretrained` loads to the same outputs; per-layer counts leave the config as it was."""

from __future__ import annotations

from pathlib import Path

import torch

from netchisel.prune.structured.attention import attention_layouts, cut_heads
from netchisel.prune.structured.hf_config import sync_head_counts
from tests.prune.structured._hf import needs_hf, tiny_llama
from tests.prune.structured.test_attention import _prune_heads


@needs_hf
def test_uniform_head_pruning_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    net = tiny_llama()
    ids = torch.randint(0, 64, (2, 6))
    _prune_heads(net, (ids[:1],))
    assert (net.config.num_attention_heads, net.config.num_key_value_heads) == (2, 1)
    assert net.config.head_dim == 8
    net.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert again.model.layers[1].self_attn.q_proj.out_features == 16
    with torch.no_grad():
        assert torch.equal(again(ids).logits, net(ids).logits)


@needs_hf
def test_per_layer_counts_leave_the_config_and_layouts_read_the_layers() -> None:
    net = tiny_llama()
    name = "model.layers.0.self_attn"
    cut_heads(net, name, attention_layouts(net)[name], torch.tensor([False, True]))
    sync_head_counts(net)
    assert (net.config.num_attention_heads, net.config.num_key_value_heads) == (4, 2)
    layouts = attention_layouts(net)  # layer 0 read from its weights, not the stale config
    assert (layouts[name].heads, layouts[name].kv_heads, layouts[name].head_dim) == (2, 1, 8)
    other = layouts["model.layers.1.self_attn"]
    assert (other.heads, other.kv_heads, other.head_dim) == (4, 2, 8)
    with torch.no_grad():
        assert net(torch.randint(0, 64, (1, 5))).logits.shape == (1, 5, 64)
