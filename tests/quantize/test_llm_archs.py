"""The LLM path on the decoder architectures users ship (transformers' Llama, Mistral, Qwen2
and OPT classes, tiny configs from `tests/models/archs.py`): layer-wise GPTQ, AWQ and
SmoothQuant, then compressed-tensors export that the package decompresses into the same
model. GPT-2 (Conv1D projections) is covered in its own tests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.task import Task, language_model_task
from netchisel.quantize import AWQConfig, GPTQConfig, SmoothQuantConfig, quantize_
from netchisel.quantize.compressed_tensors import export_compressed_tensors
from netchisel.quantize.fold import InputScale
from tests.models.archs import ARCHS, VOCAB

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

ARCH_NAMES = ("hf_llama", "hf_mistral", "hf_qwen2", "hf_opt")
SKIP = ("lm_head",)
METHODS: dict[str, tuple[Callable[[], Any], bool]] = {
    # (config, whether the package dequantizes the weights on load)
    "gptq": (lambda: GPTQConfig(bits=4, group_size=32, exclude=SKIP), True),
    "awq": (lambda: AWQConfig(bits=4, group_size=32, exclude=SKIP, fold_only=True), True),
    "smoothquant": (lambda: SmoothQuantConfig(exclude=SKIP), False),
}


def task_and_ids() -> tuple[Task, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (32, 17), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    return language_model_task({"train": data, "val": data}, batch_size=16), tokens[:2, :16]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_quantized_decoder_exports_and_the_package_reads_it(arch: str, method: str) -> None:
    make, dequantize = METHODS[method]
    task, ids = task_and_ids()
    model = ARCHS[arch].build()
    dense = logits(model, ids)
    quantize_(model, make(), task=task)
    ours = logits(model, ids)
    # 4-bit weights (or int8 weights and activations) on random tiny weights: a few percent.
    assert float((ours - dense).norm() / dense.norm()) < {"smoothquant": 0.02}.get(method, 0.08)
    assert not any(isinstance(m, InputScale) for m in model.modules())
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_compressed_tensors(model, Path(tmp) / "ct", scale_dtype=torch.float32)
        linears = [n for n, m in model.named_modules() if hasattr(m, "dequantized_weight")]
        assert sorted(summary.quantized) == sorted(linears) and summary.ignored == ("lm_head",)
        config = transformers.CompressedTensorsConfig(dequantize=dequantize)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            summary.path, quantization_config=config, dtype=torch.float32
        ).eval()
        theirs = logits(loaded, ids)
    # Weights exact; netchisel's int4 kernel computes in bf16 (a few 2**-8 of the largest
    # logit), the package in float32; W8A8: the package rounds activations per token with
    # its own scale (amax / 127.5 against 127).
    bound = 0.02 if method == "smoothquant" else 4 * 2**-8
    assert float((theirs - ours).abs().max()) <= bound * float(ours.abs().max())
