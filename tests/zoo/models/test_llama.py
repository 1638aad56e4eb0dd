from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.train import TrainSettings, fit
from netchisel.zoo import data, llama, train

TINY = {"n_layer": 1, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "intermediate": 64}


def test_a_transformers_llama_with_grouped_query_attention() -> None:
    m = llama()
    assert type(m).__name__ == "LlamaForCausalLM"
    c = m.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.use_cache) == (4, 2, False)
    # embeddings + head 2 * 256 * 128; per layer: q, o 128 x 128, k, v 128 x 64 (2 kv heads
    # of 32), gate, up, down 3 * 128 * 352, two RMSNorms 2 * 128; the final norm 128.
    layer = 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 352 + 2 * 128
    assert sum(p.numel() for p in m.parameters()) == 2 * 256 * 128 + 4 * layer + 128 == 803_968
    assert train.default_task("llama") == ("text", {"batch_size": 32, "block_size": 128})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_kv_head": 3}, r"n_head \(4\) must be a multiple of n_kv_head \(3\)"),
        ({"n_embd": 36, "n_head": 4}, "times an even head size"),
        ({"n_layer": 0}, "sizes must be >= 1"),
    ],
)
def test_bad_sizes_are_one_line(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        llama(**kwargs)
    with pytest.raises(ConfigError, match="trains on bytes: vocab_size must be 256"):
        train.recipe("llama", vocab_size=100)


def test_the_text_task_reads_its_logits_and_training_lowers_the_loss() -> None:
    model = llama(block_size=32, **TINY)
    task = data.task("text", block_size=32, batch_size=16)
    before = task.evaluate(model, "val")
    # Untrained: about uniform over 256 bytes.
    assert before["perplexity"] == pytest.approx(256, rel=0.1)
    assert before["bits_per_token"] == pytest.approx(math.log2(before["perplexity"]))
    fit(model, task, TrainSettings(steps=30, lr=3e-3), Context(task, quiet=True))
    assert task.evaluate(model, "val")["perplexity"] < 0.5 * before["perplexity"]


def test_save_and_load_are_bit_exact(tmp_path: Path) -> None:
    model = llama(block_size=16, **TINY).eval()
    loaded = nc.load(nc.save(model, tmp_path / "llama"))
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
