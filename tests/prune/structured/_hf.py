"""A tiny Hugging Face Llama (grouped-query attention, the library's default use_cache) for
the structured-pruning tests, and the mark that skips them without transformers."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers"
)


def tiny_llama() -> nn.Module:
    """2 layers, hidden 32, 4 query heads on 2 key/value heads, vocabulary 64; seeded, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()
