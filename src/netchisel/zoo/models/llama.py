"""`llama`: a Hugging Face `transformers` `LlamaForCausalLM` over byte tokens, with
grouped-query attention, for the LLM path (issue 21) to compress real HF modules.

It is the transformers class itself (not a copy), so everything written for Hugging Face
decoders (layer-wise calibration over `model.model.layers`, compressed-tensors export,
llm-compressor) applies to it. Built from a config, nothing downloaded; `use_cache` is off
(a compressed or traced model is run on whole windows, and the cache object breaks tracing).
The zoo trains it on the zoo text like the `gpt` (`netchisel.zoo.train`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder
from netchisel.zoo.models._marks import marked

_MISSING = "zoo model 'llama' needs the llm extra: pip install 'netchisel[llm]'"


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(_MISSING) from None


@builder
def llama(
    vocab_size: int = 256,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    n_kv_head: int = 2,
    n_embd: int = 128,
    intermediate: int = 352,
) -> nn.Module:
    """A small `LlamaForCausalLM`: RMSNorm, rotary positions, SwiGLU MLP (`intermediate`
    wide), `n_head` query heads sharing `n_kv_head` key/value heads, an untied head.
    forward(input_ids (B, T)) returns a `CausalLMOutputWithPast` whose `.logits` is
    (B, T, vocab); the language-model task reads `.logits`. Defaults: 803,968 parameters.

    Example:
        >>> import torch
        >>> m = llama(n_layer=1, n_embd=32, n_head=4, n_kv_head=2, intermediate=64)
        >>> m(torch.zeros(2, 8, dtype=torch.long)).logits.shape
        torch.Size([2, 8, 256])
        >>> m.config.num_key_value_heads, type(m).__name__
        (2, 'LlamaForCausalLM')
    """
    sizes = (vocab_size, block_size, n_layer, n_head, n_kv_head, n_embd, intermediate)
    if min(sizes) < 1:
        raise ConfigError(
            f"llama sizes must be >= 1 (vocab_size={vocab_size}, block_size={block_size}, "
            f"n_layer={n_layer}, n_head={n_head}, n_kv_head={n_kv_head}, n_embd={n_embd}, "
            f"intermediate={intermediate})"
        )
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ConfigError(
            f"llama n_embd ({n_embd}) must be n_head ({n_head}) times an even head size "
            "(rotary positions rotate pairs)"
        )
    if n_head % n_kv_head:
        raise ConfigError(
            f"llama n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head}): each "
            "key/value head serves the same number of query heads"
        )
    tf = _transformers()
    config = tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=n_embd,
        intermediate_size=intermediate,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=block_size,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = tf.LlamaForCausalLM(config)
    kwargs = {
        "vocab_size": vocab_size,
        "block_size": block_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_kv_head": n_kv_head,
        "n_embd": n_embd,
        "intermediate": intermediate,
    }
    return marked(model, "llama", kwargs)
