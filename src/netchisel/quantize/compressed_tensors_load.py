"""Read a compressed-tensors checkpoint (netchisel's export, or one llm-compressor wrote)
into a transformers model whose quantized Linears are netchisel's modules, so int4 runs
netchisel's int4 kernel; sparse layers (`sparse-bitmask`, `sparse-24-bitmask`) are
decompressed into their float Linears.

The checkpoint is hostile data. The model is built from `config.json` by transformers
(`AutoConfig.for_model`, never remote code), first on the meta device: every tensor name,
dtype and shape in the safetensors headers is checked against that skeleton and the schemes
(`compressed_tensors_schemes`) before anything is allocated, so a name that leads nowhere, a
packed width that disagrees with `weight_shape`, or a scale of the wrong shape is one
`ArtifactError` line. Values are checked as they are read (finite scales). No pickle:
safetensors and json only.

What changes on the way in (netchisel's int4 and int8 kernels store scales in bf16): a
weight-only scale that bf16 cannot hold is rounded to the nearest bf16 (a relative change of
at most 2**-8), and an asymmetric int4 group's zero, `-zero_point * scale`, is stored as a
bf16 float (at most 8 x 2**-8 = 1/32 of a step away). netchisel's own exports, symmetric
checkpoints with bf16 scales and W8A8 ones (float32 scales) load exactly.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.artifact.bits import pack_bits
from netchisel.core.errors import ArtifactError
from netchisel.quantize.compressed_tensors_pack import packed_words, unpack_int32
from netchisel.quantize.compressed_tensors_schemes import (
    Scheme,
    matches,
    read_quantization_config,
    read_sparsity_config,
    scheme_of,
)
from netchisel.quantize.compressed_tensors_sparse import BITMASK, decompress, keys_of
from netchisel.quantize.formats.dynamic_int8 import DynamicInt8Linear
from netchisel.quantize.formats.int4 import Int4WeightOnlyLinear
from netchisel.quantize.formats.int8 import Int8WeightOnlyLinear
from netchisel.quantize.formats.packed import PackedLinear
from netchisel.quantize.primitives import QuantSpec

_MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few kB
_SHARD = re.compile(r"[A-Za-z0-9_.-]+\.safetensors")
_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_INTS = ("I64", "I32", "I16", "I8", "U8")
_MISSING = "compressed-tensors import needs the llm extra: pip install 'netchisel[llm]'"


@dataclass(frozen=True)
class _Header:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def load_compressed_tensors(
    directory: str | Path, *, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The transformers causal LM of a compressed-tensors checkpoint, with netchisel's
    quantized modules in place of its quantized Linears; float tensors in `dtype`.

    Example:
        >>> import tempfile, transformers
        >>> from netchisel.quantize import RTNConfig, quantize_
        >>> from netchisel.quantize.compressed_tensors import export_compressed_tensors
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=64,
        ...     intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> _ = quantize_(model, RTNConfig(bits=4, group_size=32, exclude=("lm_head",)))
        >>> path = export_compressed_tensors(model, tempfile.mkdtemp() + "/ct").path
        >>> type(load_compressed_tensors(path).model.layers[0].mlp.up_proj).__name__
        'Int4WeightOnlyLinear'
    """
    root = Path(directory)
    meta = _read_config(root)
    schemes, ignore = read_quantization_config(meta)
    sparsity = read_sparsity_config(meta)
    headers = _headers(root)
    tf = _transformers()
    config = _model_config(tf, meta)
    with torch.device("meta"):
        skeleton = _build(tf, config, dtype)
    plan = _plan(skeleton, schemes, ignore, headers, sparsity)
    del skeleton
    model = _build(tf, config, dtype)
    _load(model, plan, headers)
    return model.eval()


def _read_config(root: Path) -> dict[str, Any]:
    path = root / "config.json"
    if not path.is_file():
        raise ArtifactError(f"{root} has no config.json: not a transformers checkpoint directory")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ArtifactError(f"{path} is {path.stat().st_size} bytes: too large for a config")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return meta


def _headers(root: Path) -> dict[str, _Header]:
    """Every tensor's file, dtype and shape, from the safetensors headers (no data read)."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ArtifactError(f"{index} is not a safetensors index ({e})") from None
        if not isinstance(weight_map, dict):
            raise ArtifactError(f"{index} has no weight_map object")
        shards = sorted({str(v) for v in weight_map.values()})
    else:
        shards = ["model.safetensors"]
    from safetensors import SafetensorError, safe_open

    out: dict[str, _Header] = {}
    for shard in shards:
        if not _SHARD.fullmatch(shard) or shard.startswith("."):
            raise ArtifactError(f"shard name {shard!r} must be a plain *.safetensors file name")
        path = root / shard
        if not path.is_file():
            raise ArtifactError(f"{path} is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118  (a safe_open handle, not a dict)
                    piece = f.get_slice(key)
                    out[key] = _Header(path, str(piece.get_dtype()), tuple(piece.get_shape()))
        except SafetensorError as e:
            raise ArtifactError(f"{path} is not a valid safetensors file ({e})") from None
    return out


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ArtifactError(_MISSING) from None


def _model_config(tf: Any, meta: dict[str, Any]) -> Any:
    kind = meta.get("model_type")
    if not isinstance(kind, str) or kind not in tf.CONFIG_MAPPING:
        raise ArtifactError(f"config.json model_type {kind!r} is not a transformers model type")
    if meta.get("auto_map"):
        raise ArtifactError("config.json names remote code (auto_map); netchisel never runs it")
    fields = {k: v for k, v in meta.items() if k not in ("model_type", "quantization_config")}
    try:
        return tf.AutoConfig.for_model(kind, **fields)
    except Exception as e:  # transformers' validators raise many types on hostile fields
        raise ArtifactError(f"config.json does not make a {kind} config ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    """A third-party message on one line (transformers' validators write several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _build(tf: Any, config: Any, dtype: torch.dtype) -> nn.Module:
    try:
        model: nn.Module = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as e:  # a hostile config reaches model code (ZeroDivisionError ...)
        raise ArtifactError(
            f"transformers cannot build a causal LM from config.json ({_one_line(e)})"
        ) from None
    return model


@dataclass(frozen=True)
class _Plan:
    quantized: dict[str, Scheme]  # layer name -> its scheme
    floats: dict[str, str]  # model state key -> checkpoint key (itself, or a tied alias)
    sparse: dict[str, str]  # float layer name -> its sparse format


def _plan(
    skeleton: nn.Module,
    schemes: list[Scheme],
    ignore: tuple[str, ...],
    headers: dict[str, _Header],
    sparsity: tuple[str, tuple[str, ...], tuple[str, ...]],
) -> _Plan:
    """Check every name, dtype and shape against the skeleton before loading anything."""
    quantized = {
        name: scheme
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.Linear)
        and (scheme := scheme_of(name, module, schemes, ignore)) is not None
    }
    sparse = _sparse_layers(skeleton, sparsity, headers)
    both = sorted(set(sparse) & set(quantized))
    if both:
        raise ArtifactError(
            f"layer {both[0]} is both sparse-compressed and quantized; netchisel reads one or "
            "the other per layer"
        )
    state = skeleton.state_dict()
    expected: set[str] = set()
    for name, scheme in quantized.items():
        linear = skeleton.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        expected |= _check_layer(name, linear, scheme, headers)
    for name, fmt in sparse.items():
        linear = skeleton.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        expected |= _check_sparse(name, linear, fmt, headers)
    owned = {f"{n}.{k}" for n in quantized for k in skeleton.get_submodule(n).state_dict()}
    owned |= {f"{n}.weight" for n in sparse}
    aliases = _aliases(skeleton)
    floats: dict[str, str] = {}
    for key, value in state.items():
        if key in owned:
            continue
        source = next((a for a in aliases.get(key, (key,)) if a in headers), None)
        if source is None:
            raise ArtifactError(f"the checkpoint has no tensor {key!r}, which the model needs")
        _check(headers[source], value.shape, tuple(_FLOATS) + _INTS, source)
        floats[key] = source
    unknown = sorted(set(headers) - expected - set(floats.values()))
    if unknown:
        raise ArtifactError(
            f"tensor {unknown[0]!r} names nothing the model or its schemes define "
            f"({len(unknown)} such)"
        )
    return _Plan(quantized, floats, sparse)


def _sparse_layers(
    skeleton: nn.Module,
    sparsity: tuple[str, tuple[str, ...], tuple[str, ...]],
    headers: dict[str, _Header],
) -> dict[str, str]:
    """The Linears stored sparse: targeted by the sparsity config and holding a bitmask (a
    targeted layer the writer kept dense has its `weight`)."""
    fmt, targets, ignore = sparsity
    if not fmt:
        return {}
    return {
        name: fmt
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.Linear)
        and matches(name, module, targets)
        and not matches(name, module, ignore)
        and f"{name}.bitmask" in headers
    }


def _check_sparse(name: str, linear: nn.Linear, fmt: str, headers: dict[str, _Header]) -> set[str]:
    out, inp = linear.out_features, linear.in_features
    keys = {f"{name}.{k}" for k in keys_of(fmt)}
    shape = _header(headers, f"{name}.shape")
    if shape.dtype not in _INTS or shape.shape not in ((2,), (2, 1)):
        raise ArtifactError(f"tensor {name}.shape must be 2 integers")
    _check(_header(headers, f"{name}.bitmask"), (out, -(-inp // 8)), ("U8",), f"{name}.bitmask")
    values = _header(headers, f"{name}.compressed")
    if fmt == BITMASK:
        _check(_header(headers, f"{name}.row_offsets"), (out,), ("I64",), f"{name}.row_offsets")
        if len(values.shape) != 1 or values.shape[0] > out * inp:
            raise ArtifactError(f"tensor {name}.compressed must be 1-D, at most {out * inp} long")
        _check(values, values.shape, tuple(_FLOATS), f"{name}.compressed")
    else:
        if inp % 4:
            raise ArtifactError(f"{name}: 2:4 sparsity needs in_features ({inp}) divisible by 4")
        _check(values, (out, inp // 2), tuple(_FLOATS), f"{name}.compressed")
    return keys


def _aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """State keys that share a tensor (tied embeddings): any of them may hold it."""
    by_tensor: dict[int, list[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(value), []).append(key)
    return {k: tuple(keys) for keys in by_tensor.values() for k in keys}


def _check_layer(
    name: str, linear: nn.Linear, scheme: Scheme, headers: dict[str, _Header]
) -> set[str]:
    out, inp = linear.out_features, linear.in_features
    keys = {f"{name}.weight_scale"}
    bias = f"{name}.bias"
    if linear.bias is not None:
        _check(_header(headers, bias), (out,), tuple(_FLOATS), bias)
        keys.add(bias)
    if scheme.module == "dynamic_int8":
        _check(_header(headers, f"{name}.weight"), (out, inp), ("I8",), f"{name}.weight")
        scale = _header(headers, f"{name}.weight_scale")
        want = (1,) if scheme.strategy == "tensor" else (out, 1)
        if scale.shape not in (want, want[:1]):
            raise ArtifactError(
                f"{name}.weight_scale has shape {list(scale.shape)}, want {list(want)}"
            )
        _check(scale, scale.shape, tuple(_FLOATS), f"{name}.weight_scale")
        return keys | {f"{name}.weight"}
    groups = 1 if scheme.group_size is None else inp // scheme.group_size
    rows = 1 if scheme.strategy == "tensor" else out
    if scheme.group_size is not None and inp % scheme.group_size:
        raise ArtifactError(
            f"{name}: group_size {scheme.group_size} does not divide in_features {inp}"
        )
    shape = f"{name}.weight_shape"
    _check(_header(headers, shape), (2,), _INTS, shape)
    packed = f"{name}.weight_packed"
    _check(_header(headers, packed), (out, packed_words(inp, scheme.bits)), ("I32",), packed)
    scale_key = f"{name}.weight_scale"
    scales: tuple[int, ...] = (rows, groups)
    if rows == 1 and tuple(_header(headers, scale_key).shape) == (1,):
        scales = (1,)  # one scale for the tensor, as the package stores it
    _check(_header(headers, scale_key), scales, tuple(_FLOATS), scale_key)
    keys |= {shape, packed}
    if not scheme.symmetric:
        zp = f"{name}.weight_zero_point"
        if scheme.strategy == "tensor":  # one value, stored as it is
            _check(_header(headers, zp), _header(headers, zp).shape, ("I8",), zp)
            if _header(headers, zp).shape not in ((1,), (1, 1)):
                raise ArtifactError(f"tensor {zp!r} must hold one value")
        else:
            _check(_header(headers, zp), (packed_words(out, scheme.bits), groups), ("I32",), zp)
        keys.add(zp)
    return keys


def _header(headers: dict[str, _Header], key: str) -> _Header:
    if key not in headers:
        raise ArtifactError(f"the checkpoint has no tensor {key!r}, which its scheme needs")
    return headers[key]


def _check(
    header: _Header, shape: tuple[int, ...] | torch.Size, dtypes: tuple[str, ...], key: str
) -> None:
    if header.dtype not in dtypes:
        raise ArtifactError(f"tensor {key!r} is {header.dtype}, want one of {', '.join(dtypes)}")
    if tuple(header.shape) != tuple(shape):
        raise ArtifactError(f"tensor {key!r} has shape {list(header.shape)}, want {list(shape)}")


def _load(model: nn.Module, plan: _Plan, headers: dict[str, _Header]) -> None:
    from safetensors import safe_open

    handles: dict[Path, Any] = {}

    def read(key: str) -> Tensor:
        path = headers[key].file
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt")
        return handles[path].get_tensor(key)  # type: ignore[no-any-return]

    # transformers tied the model's shared tensors when it built it; filling the shared
    # Parameter keeps them tied (tie_weights afterwards would try to assign a quantized
    # layer's read-only `weight`).
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, source in plan.floats.items():
            state[key].copy_(read(source))
        for name, fmt in plan.sparse.items():
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            parts = {k: read(f"{name}.{k}") for k in keys_of(fmt)}
            weight = decompress(name, fmt, parts, linear.out_features, linear.in_features)
            linear.weight.copy_(weight)
        for name, scheme in plan.quantized.items():
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)
            parent, _, child = name.rpartition(".")
            layer = _layer(name, linear, scheme, read)
            setattr(model.get_submodule(parent) if parent else model, child, layer)


def _layer(name: str, linear: nn.Linear, scheme: Scheme, read: Any) -> nn.Module:
    """The netchisel module of one layer, from its checked tensors."""
    out, inp = linear.out_features, linear.in_features
    if linear.bias is not None:
        linear.bias.copy_(read(f"{name}.bias"))
    scale = read(f"{name}.weight_scale").float()
    if not bool(torch.isfinite(scale).all()):
        raise ArtifactError(f"{name}.weight_scale holds a non-finite value")
    if scheme.module == "dynamic_int8":
        layer = DynamicInt8Linear(inp, out, linear.bias is not None, scheme.activations)  # type: ignore[arg-type]
        layer.weight_int8.copy_(read(f"{name}.weight"))
        layer.weight_scale.copy_(scale.reshape(-1).expand(out))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone())
        return layer
    if tuple(int(v) for v in read(f"{name}.weight_shape").tolist()) != (out, inp):
        raise ArtifactError(f"{name}.weight_shape disagrees with the model's layer [{out}, {inp}]")
    q = unpack_int32(read(f"{name}.weight_packed"), scheme.bits, inp)
    if scheme.module == "int8":
        return Int8WeightOnlyLinear.from_float(linear, q, scale)
    if scheme.module == "packed":
        return _packed(name, linear, scheme, q, scale, read)
    groups = inp // (scheme.group_size or inp)
    zero = torch.zeros(out, groups)
    if not scheme.symmetric:
        zero = unpack_int32(read(f"{name}.weight_zero_point"), 4, out, dim=0).float()
    # Signed q and zero point: (q - zp) * s, which load_quantized stores as
    # (u - 8) * s + (-zp * s) with u = q + 8.
    return Int4WeightOnlyLinear.from_float(
        linear, scheme.group_size or inp, q, scale, zero, symmetric=True
    )


def _packed(
    name: str, linear: nn.Linear, scheme: Scheme, q: Tensor, scale: Tensor, read: Any
) -> PackedLinear:
    """A `PackedLinear` holding the checkpoint's integers: signed codes as they are when
    symmetric; shifted by 2**(bits - 1) to netchisel's unsigned codes (and zero points)
    when not. Exact: `(q - zp) * scale` is the same weight either way."""
    out = linear.out_features
    granularity = scheme.strategy
    spec = QuantSpec(scheme.bits, scheme.symmetric, granularity, scheme.group_size or 1)  # type: ignore[arg-type]
    layer = PackedLinear(
        linear.in_features,
        out,
        linear.bias is not None,
        spec.bits,
        spec.symmetric,
        spec.granularity,
        spec.group_size,
    )
    offset = 0 if scheme.symmetric else 1 << (scheme.bits - 1)
    zero = torch.zeros_like(layer.zero)
    if not scheme.symmetric:
        zp_key = f"{name}.weight_zero_point"
        if granularity == "tensor":
            zp = read(zp_key).reshape(1, 1).float()
        else:
            zp = unpack_int32(read(zp_key), scheme.bits, out, dim=0).float()
        if int(zp.min()) < -offset or int(zp.max()) >= offset:
            raise ArtifactError(f"{zp_key} holds a value outside the {scheme.bits}-bit range")
        zero = zp + offset
    layer.packed.copy_(pack_bits((q.to(torch.int16) + offset).to(spec.storage_dtype), spec.bits))
    layer.scale.copy_(scale.reshape(layer.scale.shape))
    layer.zero.copy_(zero.reshape(layer.zero.shape))
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().float().clone())
    return layer
