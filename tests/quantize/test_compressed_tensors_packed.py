"""`PackedLinear` (group sizes and layouts torch's kernels do not take) through
compressed-tensors: exported, decompressed by the package into exactly netchisel's weights,
read back by netchisel into the same integers; and a per-input-channel scale that cannot be
exported is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.core.errors import ArtifactError, ModelError
from netchisel.quantize import AWQConfig, GPTQConfig, quantize_
from netchisel.quantize.compressed_tensors import export_compressed_tensors
from netchisel.quantize.compressed_tensors_load import load_compressed_tensors
from netchisel.quantize.fold import InputScale
from netchisel.quantize.formats.packed import PackedLinear
from netchisel.quantize.primitives import QuantSpec
from tests._models import lm_task
from tests.quantize.test_compressed_tensors import (
    decompressed,
    logits,
    perplexity,
    tiny_llama,
    token_ids,
)

pytest.importorskip("compressed_tensors")


def packed_llama(spec: QuantSpec) -> nn.Module:
    """The tiny Llama with every Linear but lm_head rounded to `spec` as a PackedLinear."""
    model = tiny_llama()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name != "lm_head":
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, PackedLinear.from_float(module, spec))
    return model


SPECS = {
    "int4 group 16 sym": QuantSpec(4, True, "group", 16),
    "int4 group 16 asym": QuantSpec(4, False, "group", 16),
    "int8 group 16 asym": QuantSpec(8, False, "group", 16),
    "int8 channel asym": QuantSpec(8, False, "channel"),
    "int4 tensor asym": QuantSpec(4, False, "tensor"),
    "int4 tensor sym": QuantSpec(4, True, "tensor"),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_packed_layers_round_trip_exactly(case: str, tmp_path: Path) -> None:
    spec = SPECS[case]
    model = packed_llama(spec)
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    assert len(summary.quantized) == 14 and summary.zero_point_error == 0.0
    scheme = json.loads((summary.path / "config.json").read_text())["quantization_config"]
    weights = scheme["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["symmetric"], weights["strategy"]) == (
        spec.bits,
        spec.symmetric,
        spec.granularity,
    )
    # The package's own decompression gives netchisel's weights bit for bit.
    hf = decompressed(summary.path)
    for name in summary.quantized:
        layer = model.get_submodule(name)
        assert isinstance(layer, PackedLinear)
        assert torch.equal(hf.get_submodule(name).weight, layer.dequantized_weight()), name
    # netchisel reads the same integers, scales and zero points back.
    back = load_compressed_tensors(summary.path)
    for name in summary.quantized:
        a, b = model.get_submodule(name), back.get_submodule(name)
        assert isinstance(b, PackedLinear)
        assert torch.equal(a.packed, b.packed) and torch.equal(a.scale, b.scale), name
        assert torch.equal(a.zero, b.zero), name
    ids = token_ids()
    assert torch.equal(logits(back, ids), logits(model, ids))


def test_gptq_with_a_group_the_int4_kernel_does_not_take_exports(tmp_path: Path) -> None:
    model, ids = tiny_llama(), token_ids()
    quantize_(model, GPTQConfig(bits=4, group_size=16, exclude=("lm_head",)), task=lm_task())
    assert isinstance(model.model.layers[0].mlp.up_proj, PackedLinear)
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    ref, out = logits(model, ids), logits(decompressed(summary.path), ids)
    assert torch.equal(out, ref)
    assert f"{perplexity(out, ids):.4g}" == f"{perplexity(ref, ids):.4g}"


def test_an_unfolded_input_scale_is_refused_and_fold_only_exports(tmp_path: Path) -> None:
    # Grouped-query attention (4 heads, 2 kv heads): o_proj's inputs cannot take a scale
    # folded into v_proj, whose outputs each feed two heads.
    awq = AWQConfig(bits=4, group_size=32, exclude=("lm_head",))
    model = tiny_llama()
    quantize_(model, awq, task=lm_task())
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, InputScale))
    assert wrapped == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    with pytest.raises(ModelError, match="o_proj multiplies its inputs by a per-channel scale"):
        export_compressed_tensors(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()

    folded, ids = tiny_llama(), token_ids()
    quantize_(
        folded,
        AWQConfig(bits=4, group_size=32, exclude=("lm_head",), fold_only=True),
        task=lm_task(),
    )
    assert not any(isinstance(m, InputScale) for m in folded.modules())
    summary = export_compressed_tensors(folded, tmp_path / "b", scale_dtype=torch.float32)
    ref, out = logits(folded, ids), logits(decompressed(summary.path), ids)
    assert (out - ref).abs().max() <= 4 * 2**-8 * ref.abs().max()
    assert f"{perplexity(out, ids):.4g}" == f"{perplexity(ref, ids):.4g}"


def test_a_tensor_zero_point_outside_the_range_is_one_line(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    summary = export_compressed_tensors(
        packed_llama(QuantSpec(4, False, "tensor")), tmp_path / "ct", scale_dtype=torch.float32
    )
    file = summary.path / "model.safetensors"
    tensors = load_file(str(file))
    key = "model.layers.0.mlp.up_proj.weight_zero_point"
    tensors[key] = torch.tensor([100], dtype=torch.int8)
    save_file(tensors, str(file))
    with pytest.raises(ArtifactError, match=f"{key} holds a value outside the 4-bit range"):
        load_compressed_tensors(summary.path)


def test_gpt2_conv1d_layers_are_refused_in_one_line(tmp_path: Path) -> None:
    from netchisel.quantize import RTNConfig
    from tests._gpt2 import tiny_gpt2

    model = tiny_gpt2()
    quantize_(model, RTNConfig(bits=4, group_size=32, exclude=("lm_head",)))
    with pytest.raises(ModelError, match=r"h\.0\.attn\.c_attn was a Hugging Face Conv1D"):
        export_compressed_tensors(model, tmp_path / "g")
    assert not (tmp_path / "g").exists()
