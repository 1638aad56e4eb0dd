"""Export to compressed-tensors, checked by the package itself: transformers decompresses
the checkpoint (`CompressedTensorsConfig(dequantize=True)`, the package's compressors) into
a float model whose weights are netchisel's and whose logits and perplexity match."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netchisel.core.errors import ConfigError, ModelError
from netchisel.quantize import DynamicInt8Config, RTNConfig, quantize_
from netchisel.quantize.compressed_tensors import export_compressed_tensors

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

SIZES = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 256}


def tiny_llama(seed: int = 0) -> Any:
    """LlamaForCausalLM: hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128, vocab 256."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=SIZES["vocab"],
        hidden_size=SIZES["hidden"],
        intermediate_size=SIZES["intermediate"],
        num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"],
        num_key_value_heads=SIZES["kv_heads"],
        max_position_embeddings=64,
        use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def quantized_llama(kind: str, seed: int = 0) -> Any:
    """The tiny Llama with every Linear but lm_head quantized by netchisel: int4 (RTN, group
    32, `sym` or `asym`), int8 weight-only, or dynamic int8 (W8A8)."""
    model = tiny_llama(seed)
    if kind == "dynamic":
        quantize_(model, DynamicInt8Config(exclude=("lm_head",)))
    elif kind == "int8":
        quantize_(model, RTNConfig(bits=8, exclude=("lm_head",)))
    else:
        config = RTNConfig(bits=4, group_size=32, symmetric=kind == "sym", exclude=("lm_head",))
        quantize_(model, config)
    return model


def token_ids() -> torch.Tensor:
    return torch.randint(0, SIZES["vocab"], (2, 48), generator=torch.Generator().manual_seed(1))


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()  # type: ignore[no-any-return]


def perplexity(out: torch.Tensor, ids: torch.Tensor) -> float:
    loss = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(loss))


def decompressed(path: Path) -> Any:
    """The checkpoint as transformers + compressed-tensors load it, weights decompressed."""
    config = transformers.CompressedTensorsConfig(dequantize=True)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, dtype=torch.float32
    ).eval()


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "dequantized_weight")}


@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_int4_decompressed_by_the_package_matches_netchisel(kind: str, tmp_path: Path) -> None:
    model, ids = quantized_llama(kind), token_ids()
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    assert summary.format == "pack-quantized" and summary.ignored == ("lm_head",)
    assert len(summary.quantized) == 7 * SIZES["layers"]
    hf = decompressed(summary.path)
    for name, layer in quantized_modules(model).items():
        ours, theirs = layer.dequantized_weight(), hf.get_submodule(name).weight
        step = layer.scales_and_zeros[..., 0].float().max()
        if kind == "sym":  # exact: (q - 0) * s in float32
            assert torch.equal(theirs, ours), name
        else:  # the float zero beyond its integer: <= zero_point_error steps
            assert (theirs - ours).abs().max() <= summary.zero_point_error * step + 1e-7
    # 8 x 2**-8 of a step at most (bf16 rounding of (8 - z) * s); measured 0.0115 here.
    assert (
        summary.zero_point_error == 0.0 if kind == "sym" else 0 < summary.zero_point_error <= 1 / 32
    )
    # netchisel's int4 kernel rounds each Linear's input and output to bf16 (2**-8 relative);
    # the decompressed model runs float32 on the same weights. Four such roundings of the
    # largest logit bound the difference (measured 1.8e-3 here, logits up to 0.63).
    ref, out = logits(model, ids), logits(hf, ids)
    assert (out - ref).abs().max() <= 4 * 2**-8 * ref.abs().max()
    ppl_ref, ppl = perplexity(ref, ids), perplexity(out, ids)
    assert f"{ppl:.4g}" == f"{ppl_ref:.4g}" and abs(ppl - ppl_ref) / ppl_ref < 1e-4


@pytest.mark.parametrize("kind", ["int8", "dynamic"])
def test_int8_weights_decompress_exactly(kind: str, tmp_path: Path) -> None:
    model = quantized_llama(kind)
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    assert summary.format == ("int-quantized" if kind == "dynamic" else "pack-quantized")
    hf = decompressed(summary.path)
    for name, layer in quantized_modules(model).items():
        assert torch.equal(hf.get_submodule(name).weight, layer.dequantized_weight()), name
    meta = json.loads((summary.path / "config.json").read_text())
    assert (meta["architectures"], meta["dtype"]) == (["LlamaForCausalLM"], "float32")
    scheme = meta["quantization_config"]["config_groups"]["group_0"]
    assert scheme["weights"]["strategy"] == "channel" and scheme["weights"]["num_bits"] == 8
    if kind == "dynamic":
        assert scheme["input_activations"] == {
            "num_bits": 8,
            "type": "int",
            "symmetric": True,
            "strategy": "token",
            "group_size": None,
            "dynamic": True,
            "actorder": None,
        }


def test_default_bf16_scales_give_the_same_perplexity(tmp_path: Path) -> None:
    model, ids = quantized_llama("sym"), token_ids()
    path = export_compressed_tensors(model, tmp_path / "ct").path
    hf = decompressed(path)
    ref, out = logits(model, ids), logits(hf, ids)
    # The package dequantizes in the scales' dtype: each weight rounded to bf16 once more.
    assert (out - ref).abs().max() <= 4 * 2**-8 * ref.abs().max()
    assert abs(perplexity(out, ids) / perplexity(ref, ids) - 1) < 1e-4


def test_the_file_holds_packed_int32_by_formula(tmp_path: Path) -> None:
    model = quantized_llama("asym")
    path = export_compressed_tensors(model, tmp_path / "ct").path
    data = (path / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    sizes = {"I32": 4, "I64": 8, "BF16": 2, "F32": 4}
    nbytes = {k: math.prod(v["shape"]) * sizes[v["dtype"]] for k, v in header.items()}
    assert len(data) == 8 + header_len + sum(nbytes.values())  # nothing but the tensors
    h, i, v, layers = SIZES["hidden"], SIZES["intermediate"], SIZES["vocab"], SIZES["layers"]
    kv = h // SIZES["heads"] * SIZES["kv_heads"]
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q k v o gate up down
    packed = {k: n for k, n in nbytes.items() if k.endswith("weight_packed")}
    assert all(header[k]["dtype"] == "I32" for k in packed)
    # 8 four-bit values per int32: out * in / 2 bytes; one bf16 scale and one packed 4-bit
    # zero point per group of 32.
    assert sum(packed.values()) == layers * sum(o * n // 2 for o, n in shapes)
    scales = sum(n for k, n in nbytes.items() if k.endswith("weight_scale"))
    assert scales == layers * sum(o * n // 32 * 2 for o, n in shapes)
    zeros = sum(n for k, n in nbytes.items() if k.endswith("weight_zero_point"))
    assert zeros == layers * sum(math.ceil(o / 8) * 4 * (n // 32) for o, n in shapes)
    floats = 2 * v * h * 4 + (2 * layers + 1) * h * 4  # embed, lm_head; 5 RMSNorms
    assert (
        len(data) - 8 - header_len
        == sum(packed.values()) + scales + zeros + floats + 16 * 7 * layers
    )


def test_export_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, target = quantized_llama("sym"), tmp_path / "ct"
    export_compressed_tensors(model, target)
    before = sorted((p.name, p.read_bytes()) for p in target.iterdir())
    import safetensors.torch

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_compressed_tensors(model, target)
    assert sorted((p.name, p.read_bytes()) for p in target.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]  # no staging left behind


def test_what_cannot_be_exported_is_one_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no transformers config"):
        export_compressed_tensors(nn.Sequential(nn.Linear(4, 4)), tmp_path / "a")
    with pytest.raises(ModelError, match="no netchisel-quantized or pruned Linear"):
        export_compressed_tensors(tiny_llama(), tmp_path / "b")
    three_bit = tiny_llama()
    quantize_(three_bit, RTNConfig(bits=3, group_size=32, exclude=("lm_head",)))
    with pytest.raises(ModelError, match=r"q_proj holds 3-bit weights; .* hold 4 or 8 bits"):
        export_compressed_tensors(three_bit, tmp_path / "c")
    with pytest.raises(ModelError, match="cannot hold its scales exactly"):
        export_compressed_tensors(
            quantized_llama("dynamic"), tmp_path / "d", scale_dtype=torch.bfloat16
        )
    assert not any(tmp_path.iterdir())


def test_gptq_int4_exports_like_rtn(tmp_path: Path) -> None:
    from netchisel.quantize import GPTQConfig
    from tests._models import lm_task

    model, ids = tiny_llama(), token_ids()
    quantize_(model, GPTQConfig(bits=4, group_size=32, exclude=("lm_head",)), task=lm_task())
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    hf = decompressed(summary.path)
    for name, layer in quantized_modules(model).items():
        step = layer.scales_and_zeros[..., 0].float().max()
        diff = (hf.get_submodule(name).weight - layer.dequantized_weight()).abs().max()
        assert diff <= summary.zero_point_error * step + 1e-7, name
    ref, out = logits(model, ids), logits(hf, ids)
    assert (out - ref).abs().max() <= 4 * 2**-8 * ref.abs().max()
    assert f"{perplexity(out, ids):.4g}" == f"{perplexity(ref, ids):.4g}"  # 262.8 both


def test_mixed_bits_become_groups_with_exact_targets(tmp_path: Path) -> None:
    model, ids = tiny_llama(), token_ids()
    config = RTNConfig(
        bits=4,
        group_size=32,
        symmetric=True,
        exclude=("lm_head",),
        per_layer_bits={r".*down_proj": 8},
    )
    quantize_(model, config)
    summary = export_compressed_tensors(model, tmp_path / "ct", scale_dtype=torch.float32)
    groups = json.loads((summary.path / "config.json").read_text())["quantization_config"][
        "config_groups"
    ]
    bits = {g["weights"]["num_bits"]: g["targets"] for g in groups.values()}
    assert sorted(bits) == [4, 8]
    assert bits[8] == [f"re:^model\\.layers\\.{i}\\.mlp\\.down_proj$" for i in range(2)]
    # transformers' dequantize=True route decompresses every dense layer with one scheme;
    # the package's own route (dequantize=False: per-module schemes, decompressed on the
    # first forward by ModelCompressor.decompress_model) reads each layer's.
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        summary.path,
        quantization_config=transformers.CompressedTensorsConfig(dequantize=False),
        dtype=torch.float32,
    ).eval()
    out = logits(hf, ids)
    for name, layer in quantized_modules(model).items():
        assert torch.equal(hf.get_submodule(name).weight, layer.dequantized_weight()), name
    assert (out - logits(model, ids)).abs().max() <= 4 * 2**-8 * out.abs().max()


def test_w8a8_against_the_package_quantizing_activations_at_run_time(tmp_path: Path) -> None:
    model, ids = quantized_llama("dynamic"), token_ids()
    path = export_compressed_tensors(model, tmp_path / "ct").path
    config = transformers.CompressedTensorsConfig(dequantize=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, dtype=torch.float32
    ).eval()
    assert hf.model.layers[0].mlp.up_proj.quantization_scheme.input_activations.strategy == "token"
    ref, out = logits(model, ids), logits(hf, ids)
    # The package's per-token activation scale is amax / 127.5 on [-128, 127], netchisel's
    # (and vLLM's int8 kernels') amax / 127: roundings differ by up to a step per input.
    # Measured 6.5e-3 (1% of the largest logit); perplexity 262.5765 / 262.6140.
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    assert abs(perplexity(out, ids) / perplexity(ref, ids) - 1) < 5e-4


def test_registered_as_an_artifact_export(tmp_path: Path) -> None:
    from netchisel.artifact.exports import export_names, get_export

    assert "compressed_tensors" in export_names()
    model = quantized_llama("sym")
    get_export("compressed_tensors")(
        model, (token_ids(),), tmp_path / "model.compressed_tensors", None
    )
    assert sorted(p.name for p in (tmp_path / "model.compressed_tensors").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_saved_beside_the_artifact_without_example_inputs(tmp_path: Path) -> None:
    import netchisel as nc
    from netchisel.quantize import load_compressed_tensors

    model = quantized_llama("sym")
    nc.save(model, tmp_path / "a", export=["compressed_tensors"])  # no example inputs needed
    again = load_compressed_tensors(tmp_path / "a" / "model.compressed_tensors")
    ids = token_ids()
    assert torch.equal(logits(again, ids), logits(model, ids))
    with pytest.raises(ConfigError, match="export 'pt2' needs example inputs"):
        nc.save(model, tmp_path / "b", export=["pt2"])
