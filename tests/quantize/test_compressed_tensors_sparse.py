"""Sparse compressed-tensors export: pruned Linears written as values + bitmask, decompressed
bit for bit by the package's last sparse release (0.14, run in a subprocess from
`.venv/ct014`) and by netchisel's own reader; hostile bitmasks refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from netchisel.core.errors import ArtifactError, ModelError
from netchisel.quantize import RTNConfig, quantize_
from netchisel.quantize.compressed_tensors import export_compressed_tensors
from netchisel.quantize.compressed_tensors_load import load_compressed_tensors
from netchisel.quantize.compressed_tensors_sparse import (
    pack_bits,
    sparse_layers,
    two_four_mask,
    unpack_bits,
)
from tests.quantize.test_compressed_tensors import logits, tiny_llama, token_ids

CT014 = Path(__file__).resolve().parents[2] / ".venv" / "ct014"
needs_ct014 = pytest.mark.skipif(
    not (CT014 / "compressed_tensors").is_dir(), reason="needs .venv/ct014 (make)"
)


def pruned_llama(pattern: str) -> Any:
    """The tiny Llama with every Linear but lm_head pruned by magnitude: `2:4` or 50% of
    each layer unstructured."""
    model = tiny_llama()
    with torch.no_grad():
        for name, layer in model.named_modules():
            if type(layer) is not nn.Linear or name == "lm_head":
                continue
            w = layer.weight
            if pattern == "2:4":
                groups = w.view(w.shape[0], -1, 4)
                groups.scatter_(-1, groups.abs().topk(2, -1, largest=False).indices, 0.0)
            else:
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0.0
    return model


def test_bits_pack_as_numpys_little_endian_packbits() -> None:
    mask = torch.rand(7, 21, generator=torch.Generator().manual_seed(0)) > 0.5
    want = np.packbits(mask.numpy(), axis=-1, bitorder="little")
    assert np.array_equal(pack_bits(mask).numpy(), want)
    assert torch.equal(unpack_bits(pack_bits(mask), 21), mask)


def test_two_four_mask_keeps_every_nonzero_and_exactly_two_per_group() -> None:
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0], [0.0, 5.0, 0.0, 0.0] * 2])
    mask = two_four_mask(w)
    assert mask is not None
    assert mask.view(2, 2, 4).sum(-1).tolist() == [[2, 2], [2, 2]]
    assert bool(mask[w != 0].all())
    assert two_four_mask(torch.tensor([[1.0, 1.0, 1.0, 0.0]])) is None  # 3 of 4 kept
    assert two_four_mask(torch.ones(2, 6).triu()) is None  # 6 inputs: not groups of 4


@pytest.mark.parametrize(
    ("pattern", "fmt"), [("2:4", "sparse-24-bitmask"), ("50%", "sparse-bitmask")]
)
def test_export_is_smaller_and_reads_back_bit_exactly(
    pattern: str, fmt: str, tmp_path: Path
) -> None:
    model = pruned_llama(pattern)
    summary = export_compressed_tensors(model, tmp_path / "ct")
    assert (summary.format, summary.sparse_format, len(summary.sparse)) == (fmt, fmt, 14)
    meta = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert meta["sparsity_config"]["global_sparsity"] == 0.5 and "config_groups" not in meta
    # Bytes of tensors, exactly: each pruned layer is its float32 non-zeros (half), one bit per
    # weight, 8 bytes per row offset (unstructured only) and a 2-integer shape.
    state = model.state_dict()
    offsets = 8 if fmt == "sparse-bitmask" else 0
    sparse = sum(
        w.numel() // 2 * 4 + w.numel() // 8 + 16 + offsets * w.shape[0]
        for w in (state[f"{name}.weight"] for name in summary.sparse)
    )
    dense = sum(
        v.numel() * 4 for k, v in state.items() if k.removesuffix(".weight") not in summary.sparse
    )
    file = (tmp_path / "ct" / "model.safetensors").read_bytes()
    assert len(file) - 8 - int.from_bytes(file[:8], "little") == sparse + dense
    weights = sum(state[f"{name}.weight"].numel() for name in summary.sparse)
    assert sparse < 0.61 * weights * 4  # 50% + 1/32 (+ 1/4 of the row offsets' 8 bytes / 64)
    back = load_compressed_tensors(tmp_path / "ct")
    ids = token_ids()
    assert torch.equal(logits(back, ids), logits(model, ids))


def test_sparsity_choices_and_refusals(tmp_path: Path) -> None:
    unstructured = pruned_llama("50%")
    with pytest.raises(
        ModelError, match=r"layer model\.layers\.0\.mlp\.down_proj is not 2:4 sparse"
    ):
        export_compressed_tensors(unstructured, tmp_path / "a", sparsity="sparse-24-bitmask")
    assert not (tmp_path / "a").exists()
    two_four = export_compressed_tensors(
        pruned_llama("2:4"), tmp_path / "b", sparsity="sparse-bitmask"
    )
    assert two_four.sparse_format == "sparse-bitmask"
    with pytest.raises(ModelError, match="no netchisel-quantized or pruned Linear"):
        export_compressed_tensors(unstructured, tmp_path / "c", sparsity="none")
    with pytest.raises(ModelError, match="sparsity 'bitmask' is not one of auto, none"):
        sparse_layers(unstructured, "bitmask")
    # Beside quantized layers pruned float layers are written dense (auto), or refused.
    mixed = pruned_llama("50%")
    quantize_(mixed, RTNConfig(bits=4, group_size=32, exclude=("lm_head", r".*self_attn.*")))
    summary = export_compressed_tensors(mixed, tmp_path / "d")
    assert summary.sparse == () and len(summary.quantized) == 6
    with pytest.raises(ModelError, match="cannot decompress sparse and quantized layers"):
        export_compressed_tensors(mixed, tmp_path / "e", sparsity="sparse-bitmask")


_ORACLE = """
import sys, torch, transformers
from compressed_tensors.compressors import ModelCompressor
import compressed_tensors
path, out = sys.argv[1], sys.argv[2]
config = transformers.AutoConfig.from_pretrained(path)
qc = config.quantization_config
del config.quantization_config
model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
ModelCompressor.from_compression_config(qc).decompress(path, model)
torch.save({"version": compressed_tensors.__version__, "state": model.state_dict()}, out)
"""


@needs_ct014
@pytest.mark.parametrize("pattern", ["2:4", "50%"])
def test_the_package_decompresses_the_export_bit_exactly(pattern: str, tmp_path: Path) -> None:
    model = pruned_llama(pattern)
    export_compressed_tensors(model, tmp_path / "ct")
    env = {**os.environ, "PYTHONPATH": str(CT014), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _ORACLE, str(tmp_path / "ct"), str(tmp_path / "out.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["version"] == "0.14.0.1"
    want = model.state_dict()
    assert set(got["state"]) == set(want)
    assert all(torch.equal(got["state"][k], v) for k, v in want.items())


def _tampered(tmp_path: Path, edit: Any) -> Path:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ct"
    export_compressed_tensors(pruned_llama("50%"), path)
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


LAYER = "model.layers.0.mlp.up_proj"
EDITS: dict[str, tuple[str, Any]] = {
    "holds 4096 values, its bitmask": ("bitmask", lambda t: t | 1),
    "row_offsets disagree": ("row_offsets", lambda t: t.flip(0)),
    r"\.shape disagrees": ("shape", lambda t: torch.tensor([64, 65])),
    "has shape": ("bitmask", lambda t: t[:, :3].contiguous()),
    "at most 8192 long": ("compressed", lambda t: torch.zeros(10**6)),
    "no tensor": ("row_offsets", None),
}


@pytest.mark.parametrize("message", list(EDITS))
def test_hostile_sparse_tensors_are_one_line(message: str, tmp_path: Path) -> None:
    part, change = EDITS[message]
    key = f"{LAYER}.{part}"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        if change is None:
            del tensors[key]
        else:
            tensors[key] = change(tensors[key])

    with pytest.raises(ArtifactError, match=message):
        load_compressed_tensors(_tampered(tmp_path, edit))


def test_a_two_four_bitmask_keeping_three_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ct"
    export_compressed_tensors(pruned_llama("2:4"), path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors[f"{LAYER}.bitmask"] = tensors[f"{LAYER}.bitmask"] | 7  # 3 kept in group 0
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="does not keep exactly 2 of every 4 inputs"):
        load_compressed_tensors(path)
