"""Export a Hugging Face model whose Linears netchisel quantized as a compressed-tensors
checkpoint (the format vLLM and transformers load): `config.json` with a
`quantization_config`, and `model.safetensors` with each layer's integers packed in int32.

- `Int4WeightOnlyLinear` -> int 4 bits, `group` strategy, symmetric or not: `pack-quantized`
  (`weight_packed` int32, `weight_scale`, `weight_shape`, and packed `weight_zero_point`).
- `Int8WeightOnlyLinear` -> int 8 bits, `channel`, symmetric: `pack-quantized`.
- `PackedLinear` (the format of group sizes and layouts no kernel of torch takes, e.g. GPTQ
  with group 16) of 4 or 8 bits -> `pack-quantized` with its own `tensor`, `channel` or
  `group` strategy, symmetric or not (its zero points are integers already: exact).
- `DynamicInt8Linear` -> int 8 bits `channel` weights with dynamic int 8 `token` (or
  `tensor`) input activations, W8A8: `int-quantized` (`weight` int8, `weight_scale`).
- Linears left float are listed in `ignore`; every other tensor is written as it is.
- Pruned float Linears of a model with no quantized layer -> a `sparsity_config`:
  `sparse-24-bitmask` when every one is 2:4, else `sparse-bitmask`
  (`compressed_tensors_sparse`), for each layer whose bitmask form is smaller than its dense
  weight. Beside quantized layers they are written dense: the package cannot decompress
  both kinds in one checkpoint. A quantized layer's zeros stay in its integers.

Symmetric int4, int8 and dynamic int8 are exact: the checkpoint's `(q - zero_point) * scale`
is netchisel's weight, bit for bit, in the scales' dtype. netchisel's int4 kernel stores an
asymmetric group's zero as a bf16 float, `(8 - z) * scale`; compressed-tensors wants an
integer. The integer is recovered by rounding `zero / scale` (both are bf16 roundings of
`(8 - z) * s` and `s`, so the ratio is within 8 x 2**-8 of the integer), and what the
float held beyond it (at most 8 x 2**-8 = 1/32 of a step) is lost: the summary's
`zero_point_error` says how much, in steps.

Written by hand: the package packs weights it quantizes itself from float; netchisel already
holds the integers and must write them as they are.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.artifact.bits import unpack_bits
from netchisel.artifact.exports import register_export
from netchisel.core.conv1d import FROM_CONV1D
from netchisel.core.errors import ModelError
from netchisel.core.files import commit_dir, staging_dir
from netchisel.quantize.compressed_tensors_pack import pack_int32
from netchisel.quantize.compressed_tensors_sparse import SparseLayers, Sparsity, sparse_layers
from netchisel.quantize.fold import InputScale
from netchisel.quantize.formats.dynamic_int8 import DynamicInt8Linear
from netchisel.quantize.formats.int4 import Int4WeightOnlyLinear
from netchisel.quantize.formats.int8 import Int8WeightOnlyLinear
from netchisel.quantize.formats.packed import PackedLinear

PACKED = "pack-quantized"
INT_QUANTIZED = "int-quantized"
SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class ExportSummary:
    """What `export_compressed_tensors` wrote.

    - `format`: the checkpoint's format (`mixed-precision` when layers differ in format; the
      sparse format when no layer is quantized).
    - `quantized` / `ignored`: the Linear layers written quantized / left float (`ignore`).
    - `sparse` / `sparse_format`: the float Linears written sparse, and in which format.
    - `zero_point_error`: the largest change of a weight, in quantization steps, from
      writing netchisel's float int4 zero points as integers (0 when all are symmetric).
    """

    path: Path
    format: str
    quantized: tuple[str, ...]
    ignored: tuple[str, ...]
    zero_point_error: float
    sparse: tuple[str, ...] = ()
    sparse_format: str | None = None


@dataclass(frozen=True)
class _Layer:
    weights: dict[str, Any]
    activations: dict[str, Any] | None
    format: str
    tensors: dict[str, Tensor]
    zero_point_error: float

    def key(self) -> str:
        return json.dumps([self.weights, self.activations, self.format], sort_keys=True)


def export_compressed_tensors(
    model: nn.Module,
    directory: str | Path,
    *,
    scale_dtype: torch.dtype | None = None,
    sparsity: Sparsity = "auto",
) -> ExportSummary:
    """Write `model` (a transformers `PreTrainedModel` quantized by netchisel) to `directory`
    as a compressed-tensors checkpoint; the directory is replaced whole, or left as it was.

    `scale_dtype`: the dtype of the stored scales; None keeps netchisel's (bf16 for the int4
    and int8 kernels, float32 for dynamic int8). float32 makes the package's own
    dequantization, which computes in the scales' dtype, give netchisel's weights exactly.
    A dtype that cannot hold a scale exactly is refused. `sparsity`: `auto` stores the pruned
    float Linears of an unquantized model sparse (2:4 when all are), `sparse-bitmask` /
    `sparse-24-bitmask` force a format, `none` writes them dense.

    Example:
        >>> import tempfile, transformers
        >>> from netchisel.quantize import RTNConfig, quantize_
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=64,
        ...     intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> _ = quantize_(model, RTNConfig(bits=4, group_size=32, exclude=("lm_head",)))
        >>> summary = export_compressed_tensors(model, tempfile.mkdtemp() + "/ct")
        >>> summary.format, len(summary.quantized), summary.ignored
        ('pack-quantized', 7, ('lm_head',))
    """
    if scale_dtype is not None and scale_dtype not in SCALE_DTYPES:
        raise ModelError(
            f"scale_dtype {scale_dtype} is not a float dtype compressed-tensors stores scales "
            "in: use torch.bfloat16, torch.float16 or torch.float32"
        )
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        raise ModelError(
            f"{type(model).__name__} has no transformers config: compressed-tensors export "
            "takes a Hugging Face PreTrainedModel"
        )
    swapped = next((n for n, m in model.named_modules() if getattr(m, FROM_CONV1D, False)), None)
    if swapped is not None:
        raise ModelError(
            f"layer {swapped} was a Hugging Face Conv1D (GPT-2), which transformers rebuilds as "
            "Conv1D with its weight transposed and compressed-tensors neither quantizes nor "
            "sparsifies: save this model with netchisel.save instead"
        )
    layers = dict(_quantized_layers(model, scale_dtype))
    # The package decompresses a sparse layer, or a quantized one, not both kinds side by side
    # (0.14 fails on such a checkpoint), so a quantized model's pruned float layers stay dense.
    sparse = sparse_layers(model, "none" if layers and sparsity == "auto" else sparsity)
    if layers and sparse is not None:
        raise ModelError(
            f"sparsity {sparsity!r} beside quantized layers: compressed-tensors cannot "
            "decompress sparse and quantized layers in one checkpoint; export with sparsity "
            "'auto' or 'none' (the pruned float layers are then written dense)"
        )
    if not layers and sparse is None:
        raise ModelError(
            "the model has no netchisel-quantized or pruned Linear layer to export: quantize "
            "it (e.g. quantize.rtn with bits 4) or prune it (e.g. prune.sparsegpt) first"
        )
    # Subclasses too: the package's `Linear` target matches a module's base classes.
    ignored = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    groups: dict[str, list[str]] = {}
    for name, layer in layers.items():
        groups.setdefault(layer.key(), []).append(name)
    formats = {layer.format for layer in layers.values()}
    quantization_config: dict[str, Any] = {"quant_method": "compressed-tensors"}
    if layers:
        quantization_config |= {
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed",
            "config_groups": {
                f"group_{i}": _scheme(layers[names[0]], names, single=len(groups) == 1)
                for i, names in enumerate(groups.values())
            },
            "ignore": list(ignored),
            "kv_cache_scheme": None,
        }
    if sparse is not None:
        quantization_config["sparsity_config"] = sparse.config()
    tensors = _state_tensors(model, layers, sparse)
    path = Path(directory)
    staged = staging_dir(path)
    try:
        from safetensors.torch import save_file

        save_file(tensors, str(staged / "model.safetensors"), metadata={"format": "pt"})
        meta = {**config.to_dict(), "quantization_config": quantization_config}
        # What save_pretrained records and vLLM reads to pick the model class and dtype.
        meta["architectures"] = meta.get("architectures") or [type(model).__name__]
        meta["dtype"] = meta.get("dtype") or _float_dtype(tensors)
        (staged / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        commit_dir(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    sparse_format = None if sparse is None else sparse.format
    return ExportSummary(
        path=path,
        format=str(quantization_config.get("format", sparse_format)),
        quantized=tuple(layers),
        ignored=ignored,
        zero_point_error=max((layer.zero_point_error for layer in layers.values()), default=0.0),
        sparse=() if sparse is None else tuple(sparse.tensors),
        sparse_format=sparse_format,
    )


@register_export("compressed_tensors", needs_inputs=False)
def export_compressed_tensors_beside(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    calibration: object = None,
) -> None:
    """`save(..., export=["compressed_tensors"])`: the checkpoint as the directory
    `model.compressed_tensors` beside the artifact (inputs and calibration are not used)."""
    export_compressed_tensors(model, path)


def _float_dtype(tensors: dict[str, Tensor]) -> str:
    """The dtype most float tensors have, as transformers names it ("float32")."""
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()] or [torch.float32]
    return str(max(set(floats), key=floats.count)).removeprefix("torch.")


def _scheme(layer: _Layer, names: list[str], single: bool) -> dict[str, Any]:
    # One scheme covers every Linear not ignored (llm-compressor's own layout); several
    # name their layers exactly.
    targets = ["Linear"] if single else [f"re:^{re.escape(n)}$" for n in names]
    return {
        "targets": targets,
        "weights": layer.weights,
        "input_activations": layer.activations,
        "output_activations": None,
        "format": layer.format,
    }


def _quantized_layers(
    model: nn.Module, scale_dtype: torch.dtype | None
) -> Iterator[tuple[str, _Layer]]:
    """Each quantized Linear's scheme and tensors; a quantized module of another format is
    an error (it would be exported as float otherwise)."""
    # One int4 layer with a zero point makes every int4 layer asymmetric (zero points 0
    # where there are none), so one scheme covers them all.
    asymmetric_int4 = any(
        isinstance(m, Int4WeightOnlyLinear) and bool(_int4_zero(m).any()) for m in model.modules()
    )
    for name, module in model.named_modules():
        if isinstance(module, InputScale):
            raise ModelError(
                f"layer {name} multiplies its inputs by a per-channel scale that could not be "
                "folded into the op before it, and compressed-tensors has no field for one: "
                "quantize with quantize.awq / quantize.smoothquant fold_only: true"
            )
        if isinstance(module, Int4WeightOnlyLinear):
            yield name, _int4(name, module, scale_dtype, asymmetric_int4)
        elif isinstance(module, Int8WeightOnlyLinear):
            yield name, _int8(name, module, scale_dtype)
        elif isinstance(module, DynamicInt8Linear):
            yield name, _dynamic_int8(name, module, scale_dtype)
        elif isinstance(module, PackedLinear):
            yield name, _packed(name, module, scale_dtype)
        elif callable(getattr(module, "dequantized_weight", None)):
            raise ModelError(
                f"layer {name} is a {type(module).__name__}, which compressed-tensors export "
                "does not cover (Int4WeightOnlyLinear, Int8WeightOnlyLinear, PackedLinear, "
                "DynamicInt8Linear): quantize it with quantize.rtn/gptq/awq bits 4 or 8, "
                "or quantize.dynamic_int8"
            )


def _int4_zero(layer: Int4WeightOnlyLinear) -> Tensor:
    groups = layer.in_features // layer.group_size
    return layer.scales_and_zeros[:groups, : layer.out_features, 1].float().T


def _int4(
    name: str, layer: Int4WeightOnlyLinear, scale_dtype: torch.dtype | None, asymmetric: bool
) -> _Layer:
    if layer.in_features % layer.group_size:
        raise ModelError(
            f"layer {name}: group_size {layer.group_size} does not divide in_features "
            f"{layer.in_features}; compressed-tensors groups must (quantize with a divisor)"
        )
    rows, cols = layer.out_features, layer.in_features
    groups = cols // layer.group_size
    q = (layer.unpacked()[:rows, :cols] - 8).to(torch.int8)  # signed, as the format stores
    scale = layer.scales_and_zeros[:groups, :rows, 0].T.contiguous()
    zero = _int4_zero(layer)
    # (u - 8) * s + zero == (q - zp) * s with zp = -zero / s, an integer up to bf16 rounding.
    steps = torch.where(scale.float() != 0, zero / scale.float(), torch.zeros_like(zero))
    zero_point = -steps.round()
    if int(zero_point.min()) < -8 or int(zero_point.max()) > 7:
        raise ModelError(
            f"layer {name}: an int4 zero point lies outside [-8, 7] (the format's range); "
            "quantize it again with quantize.rtn bits 4"
        )
    tensors = {
        "weight_packed": pack_int32(q, 4),
        "weight_scale": _scales(name, scale, scale_dtype),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if asymmetric:
        tensors["weight_zero_point"] = pack_int32(zero_point.to(torch.int8), 4, dim=0)
    weights = _weights(4, not asymmetric, "group", layer.group_size)
    error = float((steps + zero_point).abs().max()) if asymmetric else 0.0
    return _Layer(weights, None, PACKED, _with_bias(tensors, layer), error)


def _int8(name: str, layer: Int8WeightOnlyLinear, scale_dtype: torch.dtype | None) -> _Layer:
    tensors = {
        "weight_packed": pack_int32(layer.weight_int8, 8),
        "weight_scale": _scales(name, layer.scales.reshape(-1, 1), scale_dtype),
        "weight_shape": torch.tensor(list(layer.weight_int8.shape), dtype=torch.int64),
    }
    weights = _weights(8, True, "channel", None)
    return _Layer(weights, None, PACKED, _with_bias(tensors, layer), 0.0)


def _packed(name: str, layer: PackedLinear, scale_dtype: torch.dtype | None) -> _Layer:
    if layer.bits not in (4, 8):
        raise ModelError(
            f"layer {name} holds {layer.bits}-bit weights; compressed-tensors layers that vLLM "
            "runs hold 4 or 8 bits: quantize it with bits 4 or 8"
        )
    rows, cols = layer.out_features, layer.in_features
    codes = unpack_bits(layer.packed.cpu(), layer.bits, rows * cols, signed=layer.symmetric)
    # Stored unsigned when asymmetric: shift both codes and zero points to the signed range.
    offset = 0 if layer.symmetric else 1 << (layer.bits - 1)
    q = (codes.reshape(rows, cols).to(torch.int16) - offset).to(torch.int8)
    zero_point = layer.zero.detach().float().cpu() - offset
    strategy = layer.granularity
    scale = layer.scale.detach().reshape(1) if strategy == "tensor" else layer.scale.detach()
    tensors = {
        "weight_packed": pack_int32(q, layer.bits),
        "weight_scale": _scales(name, scale, scale_dtype),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if not layer.symmetric:
        if strategy == "tensor":
            tensors["weight_zero_point"] = zero_point.reshape(1).to(torch.int8)
        else:
            tensors["weight_zero_point"] = pack_int32(zero_point.to(torch.int8), layer.bits, 0)
    group = layer.group_size if strategy == "group" else None
    weights = _weights(layer.bits, layer.symmetric, strategy, group)
    return _Layer(weights, None, PACKED, _with_bias(tensors, layer), 0.0)


def _dynamic_int8(name: str, layer: DynamicInt8Linear, scale_dtype: torch.dtype | None) -> _Layer:
    tensors = {
        "weight": layer.weight_int8.clone(),
        "weight_scale": _scales(name, layer.weight_scale.reshape(-1, 1), scale_dtype),
    }
    strategy = "token" if layer.activations == "per_token" else "tensor"
    activations = {**_weights(8, True, strategy, None), "dynamic": True}
    weights = _weights(8, True, "channel", None)
    return _Layer(weights, activations, INT_QUANTIZED, _with_bias(tensors, layer), 0.0)


def _weights(bits: int, symmetric: bool, strategy: str, group_size: int | None) -> dict[str, Any]:
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": False,
        "actorder": None,
    }


def _scales(name: str, scale: Tensor, dtype: torch.dtype | None) -> Tensor:
    out = scale.detach().clone().contiguous() if dtype is None else scale.to(dtype)
    if not torch.equal(out.float(), scale.float()):
        raise ModelError(
            f"layer {name}: scale_dtype {dtype} cannot hold its scales exactly; use "
            "torch.float32 (or None for netchisel's own dtype)"
        )
    return out.contiguous()


def _with_bias(tensors: dict[str, Tensor], layer: nn.Module) -> dict[str, Tensor]:
    bias = getattr(layer, "bias", None)
    if isinstance(bias, Tensor):
        tensors["bias"] = bias.detach().clone()
    return tensors


def _state_tensors(
    model: nn.Module, layers: dict[str, _Layer], sparse: SparseLayers | None
) -> dict[str, Tensor]:
    """The model's state dict with each quantized layer's tensors, and each sparse layer's
    weight, replaced by the format's; a tensor shared under several names (tied embeddings)
    is written once."""
    replaced = {
        f"{name}.{key}" for name in layers for key in model.get_submodule(name).state_dict()
    }
    sparse_tensors = {} if sparse is None else sparse.tensors
    replaced |= {f"{name}.weight" for name in sparse_tensors}
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...], torch.dtype]] = set()
    for key, value in model.state_dict().items():
        if key in replaced:
            continue
        identity = (value.data_ptr(), tuple(value.shape), value.dtype)
        if value.numel() and identity in seen:
            continue  # transformers ties it again on load
        seen.add(identity)
        out[key] = value.detach().contiguous()
    for name, layer in layers.items():
        out.update({f"{name}.{key}": t.contiguous() for key, t in layer.tensors.items()})
    for name, parts in sparse_tensors.items():
        out.update({f"{name}.{key}": t.contiguous() for key, t in parts.items()})
    return out
