"""Reading compressed-tensors checkpoints into netchisel's modules: netchisel's own export
comes back bit for bit, one written by the package's own compressor loads with the outputs
the package decompresses to, and hostile edits are refused with one line each."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from netchisel.core.errors import ArtifactError
from netchisel.quantize.compressed_tensors import export_compressed_tensors
from netchisel.quantize.compressed_tensors_load import load_compressed_tensors
from netchisel.quantize.formats import DynamicInt8Linear, Int4WeightOnlyLinear, Int8WeightOnlyLinear
from tests.quantize.test_compressed_tensors import (
    decompressed,
    logits,
    perplexity,
    quantized_llama,
    tiny_llama,
    token_ids,
)

ct = pytest.importorskip("compressed_tensors")
MODULES = {
    "sym": Int4WeightOnlyLinear,
    "asym": Int4WeightOnlyLinear,
    "int8": Int8WeightOnlyLinear,
    "dynamic": DynamicInt8Linear,
}


@pytest.mark.parametrize("kind", list(MODULES))
def test_netchisel_export_loads_back_bit_for_bit(kind: str, tmp_path: Path) -> None:
    model, ids = quantized_llama(kind), token_ids()
    path = export_compressed_tensors(model, tmp_path / "ct").path
    back = load_compressed_tensors(path)
    assert type(back.model.layers[1].mlp.down_proj) is MODULES[kind]
    assert type(back.lm_head) is torch.nn.Linear
    # Same integers, same bf16 scales (and for asymmetric int4 the same bf16 zero, since
    # netchisel's scales are bf16 already: bf16(-zp * s) is the float it stored), same kernels.
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(logits(back, ids), logits(model, ids))


def package_checkpoint(path: Path, symmetric: bool) -> None:
    """A W4A16 (group 32) checkpoint written by compressed-tensors' own API: schemes applied,
    min-max scales by its `calculate_qparams`, `ModelCompressor.compress_model`, saved by
    transformers and its config completed by `update_config`."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = tiny_llama(seed=3)
    args = QuantizationArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    apply_quantization_config(model, config)
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is not None:
            groups = module.weight.detach().unflatten(-1, (-1, 32))
            scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
            module.weight_scale.data.copy_(scale)
            if not symmetric:
                module.weight_zero_point.data.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(path)
    compressor.update_config(str(path))


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_checkpoint_the_package_wrote_loads_with_its_outputs(
    symmetric: bool, tmp_path: Path
) -> None:
    package_checkpoint(tmp_path / "ct", symmetric)
    hf, back, ids = (
        decompressed(tmp_path / "ct"),
        load_compressed_tensors(tmp_path / "ct"),
        token_ids(),
    )
    assert type(back.model.layers[0].self_attn.q_proj) is Int4WeightOnlyLinear
    for name, layer in back.named_modules():
        if isinstance(layer, Int4WeightOnlyLinear):
            ref, ours = hf.get_submodule(name).weight, layer.dequantized_weight()
            step = ref.abs().amax() / 7  # at least one scale, per tensor
            # The package's float32 scales (and zero * scale) are stored in bf16 here:
            # 2**-8 relative each, of |w| and of |zp| * s <= 8 steps.
            assert ((ours - ref).abs() <= 2**-8 * (ref.abs() + 8.1 * step)).all(), name
    ref, out = logits(hf, ids), logits(back, ids)
    assert (out - ref).abs().max() <= 4 * 2**-8 * ref.abs().max()  # as in the export test
    assert abs(perplexity(out, ids) / perplexity(ref, ids) - 1) < 1e-4


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "ct"
    export_compressed_tensors(quantized_llama("asym"), path)
    return path


LAYER = "model.layers.0.mlp.up_proj"


def _tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        tensors = load_file(path / "model.safetensors")
        edit(tensors)
        save_file(tensors, path / "model.safetensors")

    return apply


def _config(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        meta = json.loads((path / "config.json").read_text())
        edit(meta)
        (path / "config.json").write_text(json.dumps(meta))

    return apply


def _rename(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda t: t.__setitem__(new, t.pop(old))


def _group(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["quantization_config"]["config_groups"]["group_0"]  # type: ignore[no-any-return]


def _write_index(path: Path) -> None:
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../model.safetensors"}})
    )


HOSTILE = {
    "a name outside the tree": (
        _tensors(_rename(f"{LAYER}.weight_packed", "model.layers.9.mlp.up_proj.weight_packed")),
        "no tensor 'model.layers.0.mlp.up_proj.weight_packed'",
    ),
    "an extra name": (
        _tensors(lambda t: t.__setitem__("model.__class__.weight", torch.zeros(1))),
        "tensor 'model.__class__.weight' names nothing",
    ),
    "weight_shape disagrees": (
        _tensors(lambda t: t.__setitem__(f"{LAYER}.weight_shape", torch.tensor([128, 96]))),
        "weight_shape disagrees with the model's layer [128, 64]",
    ),
    "packed width disagrees": (
        _tensors(
            lambda t: t.__setitem__(
                f"{LAYER}.weight_packed", t[f"{LAYER}.weight_packed"][:, :7].contiguous()
            )
        ),
        "weight_packed' has shape [128, 7], want [128, 8]",
    ),
    "scale of the wrong shape": (
        _tensors(lambda t: t.__setitem__(f"{LAYER}.weight_scale", torch.ones(128, 3))),
        "weight_scale' has shape [128, 3], want [128, 2]",
    ),
    "scale of an integer dtype": (
        _tensors(
            lambda t: t.__setitem__(f"{LAYER}.weight_scale", torch.ones(128, 2, dtype=torch.int32))
        ),
        "weight_scale' is I32, want one of F16, BF16, F32",
    ),
    "zero point of the wrong shape": (
        _tensors(
            lambda t: t.__setitem__(
                f"{LAYER}.weight_zero_point", torch.zeros(15, 2, dtype=torch.int32)
            )
        ),
        "weight_zero_point' has shape [15, 2], want [16, 2]",
    ),
    "a NaN scale": (
        _tensors(lambda t: t[f"{LAYER}.weight_scale"].__setitem__((0, 0), float("nan"))),
        "weight_scale holds a non-finite value",
    ),
    "a missing float tensor": (
        _tensors(lambda t: t.pop("model.norm.weight")),
        "no tensor 'model.norm.weight', which the model needs",
    ),
    "num_bits 3": (
        _config(lambda m: _group(m)["weights"].__setitem__("num_bits", 3)),
        "3-bit 'group' weights has no netchisel module",
    ),
    "num_bits as text": (
        _config(lambda m: _group(m)["weights"].__setitem__("num_bits", "4")),
        "num_bits must be an integer, got '4'",
    ),
    "a group size the tensors do not have": (
        _config(lambda m: _group(m)["weights"].__setitem__("group_size", 16)),
        "weight_scale' has shape [64, 2], want [64, 4]",
    ),
    "a strategy netchisel does not read": (
        _config(lambda m: _group(m)["weights"].__setitem__("strategy", "token")),
        "weights.strategy 'token': netchisel reads tensor, channel or group",
    ),
    "a bad regex target": (
        _config(lambda m: _group(m).__setitem__("targets", ["re:("])),
        "'re:(' is not a regular expression",
    ),
    "another quant_method": (
        _config(lambda m: m["quantization_config"].__setitem__("quant_method", "gptq")),
        "quant_method is 'gptq'",
    ),
    "an unknown model type": (
        _config(lambda m: m.__setitem__("model_type", "evil")),
        "model_type 'evil' is not a transformers model type",
    ),
    "a size of the wrong type": (
        _config(lambda m: m.__setitem__("hidden_size", "x")),
        "config.json does not make a llama config (Validation error for field 'hidden_size':",
    ),
    "zero key/value heads": (
        _config(lambda m: m.__setitem__("num_key_value_heads", 0)),
        "transformers cannot build a causal LM from config.json",
    ),
    "remote code": (
        _config(lambda m: m.__setitem__("auto_map", {"AutoModel": "x.Y"})),
        "names remote code",
    ),
    "config.json not JSON": (
        lambda p: (p / "config.json").write_text("{"),
        "is not valid JSON",
    ),
    "a corrupt safetensors file": (
        lambda p: (p / "model.safetensors").write_bytes(b"\xff" * 64),
        "is not a valid safetensors file",
    ),
    "a shard outside the directory": (_write_index, "must be a plain *.safetensors file name"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_checkpoints_are_refused_with_one_line(
    case: str, good: Path, tmp_path: Path
) -> None:
    edit, message = HOSTILE[case]
    path = tmp_path / "ct"
    shutil.copytree(good, path)
    edit(path)
    with pytest.raises(ArtifactError) as info:
        load_compressed_tensors(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_mixed_groups_and_tied_embeddings_load_back(tmp_path: Path) -> None:
    from netchisel.quantize import RTNConfig, quantize_

    model, ids = tiny_llama(), token_ids()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    config = RTNConfig(bits=4, group_size=64, exclude=("lm_head",), per_layer_bits={r".*o_proj": 8})
    quantize_(model, config)
    path = export_compressed_tensors(model, tmp_path / "ct").path
    assert "lm_head.weight" not in load_file(path / "model.safetensors")  # written once
    back = load_compressed_tensors(path)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert type(back.model.layers[0].self_attn.o_proj) is Int8WeightOnlyLinear
    assert back.model.layers[0].self_attn.q_proj.group_size == 64
    assert torch.equal(logits(back, ids), logits(model, ids))
