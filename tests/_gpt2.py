"""A tiny Hugging Face GPT-2 (its projections are `Conv1D`), saved by a trusted builder."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from netchisel.core.modules import builder

PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
"""GPT-2's Conv1D layers in each block."""


@builder
def tiny_gpt2(seed: int = 0) -> nn.Module:
    """GPT-2 with 2 blocks of width 32 (4 heads) over the 256 byte values of `lm_task`."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()  # type: ignore[no-any-return]


def projections(model: nn.Module) -> dict[str, nn.Module]:
    """The modules at GPT-2's Conv1D paths, whatever they are now."""
    return {n: m for n, m in model.named_modules() if n.endswith(PROJECTIONS)}


def tokens(seed: int = 1) -> Tensor:
    """4 sequences of 16 byte tokens, not the calibration data."""
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).logits  # type: ignore[no-any-return]


def relative_error(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| over all logits."""
    return float((out - ref).norm() / ref.norm())
