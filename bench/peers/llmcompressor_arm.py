"""One llm-compressor arm of bench/llm_peer.py, run in llm-compressor's own venv (.venv/llmc:
its pins, transformers <= 5.17 and compressed-tensors 0.19, differ from netchisel's).

Reads the base model (save_pretrained) and the token windows the main script wrote, applies
one modifier through `llmcompressor.oneshot` on the same calibration windows, and prints one
JSON line: perplexity on val and test (the same protocol as netchisel's language-model task:
summed next-token cross-entropy over every window's tokens / their count), seconds, peak RSS.

Usage: .venv/llmc/bin/python bench/peers/llmcompressor_arm.py WORKDIR ARM
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(32):
            logits = model(chunk[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def modifier(arm: str, group_size: int) -> object:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    kind, _, setting = arm.partition("_")
    if kind in ("gptq", "rtn"):
        weights = QuantizationArgs(
            num_bits=int(setting),
            type="int",
            symmetric=True,
            strategy="group",
            group_size=group_size,
        )
        groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
        if kind == "rtn":
            return QuantizationModifier(config_groups=groups, ignore=["lm_head"])
        return GPTQModifier(
            config_groups=groups,
            ignore=["lm_head"],
            block_size=128,
            dampening_frac=0.01,
            actorder=None,
        )
    structure = {"50": "0:0", "2of4": "2:4", "4of8": "4:8"}[setting]
    return SparseGPTModifier(
        sparsity=0.5,
        mask_structure=structure,
        ignore=["lm_head"],
        block_size=128,
        dampening_frac=0.01,
    )


def byte_tokenizer() -> object:
    """A tokenizer whose ids are the bytes (0-255), as the zoo text's tokens are: the dataset
    is already tokens, but `oneshot` wants a processor whenever it is given a dataset."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(256)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<0>")),
        unk_token="<0>",
        pad_token="<0>",
    )


def main() -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    work, arm = sys.argv[1], sys.argv[2]
    tokens = load_file(f"{work}/tokens.safetensors")
    settings = json.loads(Path(f"{work}/settings.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(f"{work}/base", torch_dtype=torch.float32)
    model.config.use_cache = False
    calibration = tokens["calibration"]
    data = Dataset.from_dict(
        {
            "input_ids": calibration.tolist(),
            "attention_mask": torch.ones_like(calibration).tolist(),
        }
    )
    start = time.perf_counter()
    oneshot(
        model=model,
        processor=byte_tokenizer(),
        dataset=data,
        recipe=modifier(arm, settings["group_size"]),
        num_calibration_samples=len(calibration),
        max_seq_length=calibration.shape[1],
        shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - start
    model.eval()
    linears = [
        m.weight
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    ]
    zeros = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
    out = {
        "zeros": zeros,  # fraction of zero weights in the decoder Linears (the sparsity applied)
        "val": perplexity(model, tokens["val"]),
        "test": perplexity(model, tokens["test"]),
        "seconds": seconds,
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
