"""Artifacts: a directory with `model.safetensors` and `manifest.json`, loaded with no pickle.

The manifest says how to rebuild the module tree: the builder ("package.module:function" and
its kwargs), then structural edits against what the builder makes (changed widths, replaced or
removed modules), then the codec of every tensor. See docs/formats.md.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from netchisel.artifact.codecs import DTYPES, decode_checked, get_codec, smallest_codec
from netchisel.artifact.describe import (
    JSON,
    apply_tensor_specs,
    attributes,
    check_layer_shapes,
    declared_bytes,
    describe,
    encode_value,
    rebuild,
    refresh_caches,
    set_attributes,
    tensor_specs,
)
from netchisel.artifact.exports import get_export
from netchisel.artifact.schema import check_manifest
from netchisel.artifact.trust import Allowed, Trusted
from netchisel.core.errors import (
    ArtifactError,
    ConfigError,
    ModelError,
    NetChiselError,
    first_line,
)
from netchisel.core.files import as_if_created
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.modules import (
    build,
    builder_of,
    is_trusted_builder,
    mark_builder,
    resolve_builder,
)

FORMAT = "netchisel-artifact"
# 2: defaults left out of the manifest, written without indentation.
# 3: the dtype of every tensor is declared (float32 when absent), so a swapped one is caught.
FORMAT_VERSION = 3
MAX_MANIFEST_BYTES = 64 << 20
# What a builder may allocate, beside the weights file it will be filled from: generous for
# pruned and entropy-coded files (Deep Compression reaches 60x), small enough that a manifest
# asking nn.Linear for a terabyte is refused before anything is allocated.
BUILD_BYTES_PER_FILE_BYTE = 256
MIN_BUILD_BUDGET = 1 << 30
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
_CODEC_ATTR = "_netchisel_codecs"


def set_codec(model: nn.Module, tensor_name: str, codec: str) -> None:
    """Ask `save` to store one state-dict tensor with a codec other than `raw`.

    The choice travels with the model: `load` restores it, so a loaded model saves alike.
    """
    get_codec(codec)
    codecs: dict[str, str] = dict(getattr(model, _CODEC_ATTR, {}))
    codecs[tensor_name] = codec
    object.__setattr__(model, _CODEC_ATTR, codecs)


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    export: Iterable[str] = (),
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> Path:
    """Write `model` as an artifact directory, atomically (a temp dir renamed into place).

    `export` may name "pt2" (torch.export), "onnx" and "onnx_int8" (QDQ int8; both need the
    onnx extra); all need `example_inputs`. "onnx_int8" of a float model also needs
    `calibration` (model inputs from the task); a static int8 model carries its own scales.

    Example:
        >>> import tempfile
        >>> d = save(nn.Sequential(nn.Linear(4, 2)), tempfile.mkdtemp() + "/m")
        >>> sorted(p.name for p in d.iterdir())
        ['manifest.json', 'model.safetensors']
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} is a file: an artifact is a directory; choose another")
    if target.exists() and not (target / MANIFEST).exists() and any(target.iterdir()):
        raise ArtifactError(f"{target} exists and is not an artifact; choose another directory")
    _refuse_nan(model)
    stored, tensors, aliases = _encode_state(model)
    structure = _structure(model)
    _leave_out_known_shapes(structure["edits"], set(model.state_dict()))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__.split("+")[0],
        **structure,
        **{
            k: v
            for k, v in (("metadata", metadata), ("tensors", tensors), ("aliases", aliases))
            if v
        },
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(stored, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        manifest["files"] = {WEIGHTS: _file_info(tmp / WEIGHTS)}
        for kind in export:
            name = _export(model, kind, example_inputs, tmp, calibration)
            manifest["files"][name] = _file_info(tmp / name)
        # Key order is kept: it is the order of parameters in the rebuilt modules. Compact,
        # because the manifest counts in the artifact's size (`python -m json.tool` shows it).
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
        as_if_created(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load(directory: str | Path, *, trust: Iterable[Trusted] = ()) -> nn.Module:
    """Rebuild the saved model (in eval mode) from an artifact directory.

    The manifest is untrusted data: it may name only torch's layers and functions,
    netchisel's, `@netchisel.builder` ones, and what `trust` lists (classes, functions or
    "module:name" strings); anything else, or a file that does not match its manifest, is an
    ArtifactError before any of it is built (docs/security.md).

    Example:
        >>> import tempfile
        >>> net = nn.Sequential(nn.Linear(4, 2))
        >>> d = save(net, tempfile.mkdtemp() + "/m")
        >>> bool(torch.equal(load(d)[0].weight, net[0].weight))
        True
    """
    root = Path(directory)
    allowed = Allowed.with_trust(trust)
    manifest = read_manifest(root)
    weights = _regular_file(root, WEIGHTS)
    expected = manifest["files"][WEIGHTS]
    if weights.stat().st_size != expected["bytes"] or _file_info(weights) != expected:
        raise ArtifactError(f"{weights} is corrupt: its size or checksum differs from the manifest")
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{weights} cannot be read: {first_line(e)}") from None
    codecs = manifest.get("tensors", {})
    budget = max(BUILD_BYTES_PER_FILE_BYTE * expected["bytes"], MIN_BUILD_BUDGET)
    if declared_bytes(manifest) > budget:
        raise ArtifactError(
            f"the manifest declares {declared_bytes(manifest):,} bytes of tensors that the weights "
            f"file does not hold (at most {budget:,}): refused"
        )
    try:
        state = _decode_state(stored, codecs, manifest.get("aliases", {}), budget)
        model = _rebuild_structure(manifest, state, allowed, budget)
        _check_fit(model, state)
        check_layer_shapes(model)
        model.load_state_dict(state, strict=True)
    except NetChiselError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, MemoryError) as e:
        # Whatever a malformed file still provokes is one line, not a traceback.
        raise ArtifactError(
            f"{root} cannot be rebuilt: {type(e).__name__}: {first_line(e)}"
        ) from None
    params = dict(model.named_parameters())
    for name, info in codecs.items():
        if info["codec"] == "bitmask" and name in params:
            set_mask(model, name, state[name] != 0)  # pruned entries stay pruned in fine-tuning
        elif info["codec"] not in ("raw", "bitmask"):
            set_codec(model, name, info["codec"])
    return model.eval()


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, parsed and checked against the schema; or an ArtifactError saying why
    the directory is not an artifact."""
    root = Path(root)
    if not root.exists():
        raise ArtifactError(f"{root} does not exist")
    if not root.is_dir():
        raise ArtifactError(f"{root} is a file: an artifact is a directory")
    if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
        raise ArtifactError(f"{root} is not a netchisel artifact (no {MANIFEST})")
    path = _regular_file(root, MANIFEST)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is over {MAX_MANIFEST_BYTES >> 20} MiB: refused")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSON, UTF-8, or an int of 5,000 digits
        raise ArtifactError(f"{path} is corrupt: {first_line(e)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a netchisel manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {version}; this netchisel reads up to "
            f"{FORMAT_VERSION}: upgrade netchisel"
        )
    check_manifest(manifest, frozenset(DTYPES))
    return manifest


def _regular_file(root: Path, name: str) -> Path:
    """`root/name` if it is a regular file, not a link (which could lead anywhere) or a pipe."""
    path = root / name
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link: an artifact holds its own files")
    if not path.exists():
        raise ArtifactError(f"{root}: {name} is missing")
    if not path.is_file():
        raise ArtifactError(f"{path} is not a regular file")
    return path


def artifact_bytes(directory: str | Path) -> int:
    """Bytes on disk of what `load` reads: the weights file plus the manifest."""
    root = Path(directory)
    return sum((root / name).stat().st_size for name in (WEIGHTS, MANIFEST))


# -- structure ---------------------------------------------------------------------------


def _structure(model: nn.Module) -> dict[str, Any]:
    builder = builder_of(model)
    # Only builders marked @builder are recorded: load will call them with the file's kwargs.
    if (
        builder is None
        or builder[0].startswith("__main__:")  # another process cannot import it
        or not is_trusted_builder(resolve_builder(builder[0]))
    ):
        return {
            "builder": None,
            "edits": [{"op": "replace", "path": "", "module": describe(model)}],
        }
    ref, kwargs = builder
    try:
        json.dumps(kwargs)
    except TypeError:
        raise ModelError(f"builder {ref!r} kwargs are not JSON data: {kwargs!r}") from None
    fresh = build(ref, kwargs)
    edits: list[JSON] = []
    _diff(model, fresh, "", edits)
    return {"builder": {"ref": ref, "kwargs": kwargs}, "edits": edits}


def _diff(cur: nn.Module, fresh: nn.Module, path: str, edits: list[JSON]) -> None:
    """Append the edits that turn `fresh` (what the builder makes) into `cur`."""
    if type(cur) is not type(fresh):
        edits.append({"op": "replace", "path": path, "module": describe(cur, path)})
        return
    ours, theirs = attributes(cur), attributes(fresh)
    changed = {k: v for k, v in ours.items() if k not in theirs or not _same(v, theirs[k])}
    attrs: dict[str, JSON] = {}
    for key, value in changed.items():
        try:
            attrs[key] = encode_value(value)
        except TypeError:
            raise ModelError(
                f"module {path or '<root>'} attribute {key!r} changed to a value that cannot be "
                "saved"
            ) from None
    ours_t, theirs_t = tensor_specs(cur), tensor_specs(fresh)
    tensors = {k: v for k, v in ours_t.items() if theirs_t.get(k) != v}
    dropped = sorted(set(theirs_t) - set(ours_t))
    if attrs or tensors or dropped:
        patch = {"attrs": attrs, "tensors": tensors, "drop": dropped}
        edits.append({"op": "patch", "path": path, **{k: v for k, v in patch.items() if v}})
    for name, child in cur._modules.items():
        child_path = f"{path}.{name}" if path else name
        other = fresh._modules.get(name)
        if child is None or other is None:
            if child is not other:
                module = describe(child, child_path) if child is not None else None
                edits.append({"op": "replace", "path": child_path, "module": module})
            continue
        _diff(child, other, child_path, edits)
    for name in fresh._modules:
        if name not in cur._modules:
            edits.append({"op": "remove", "path": f"{path}.{name}" if path else name})
    kept = [n for n in fresh._modules if n in cur._modules]
    added = [n for n in cur._modules if n not in fresh._modules]
    if list(cur._modules) != kept + added:
        edits.append({"op": "order", "path": path, "order": list(cur._modules)})


def _leave_out_known_shapes(edits: list[JSON], state_names: set[str]) -> None:
    """Drop the shape from the specs of tensors the weights file holds: `load` reads it from
    there. The dtype stays (float32 is the default, left out), so `load` can check it."""

    def strip(specs: dict[str, JSON], path: str) -> None:
        for name, spec in specs.items():
            key = f"{path}.{name}" if path else name
            if key in state_names and not spec.get("none") and spec.get("persistent", True):
                spec.pop("shape", None)

    def walk(module: JSON | None, path: str) -> None:
        if module is None:
            return
        strip(module.get("tensors", {}), path)
        for name, child in module.get("children", {}).items():
            walk(child, f"{path}.{name}" if path else name)

    for edit in edits:
        if edit["op"] == "patch":
            strip(edit.get("tensors", {}), edit["path"])
        elif edit["op"] == "replace":
            walk(edit["module"], edit["path"])


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # some objects refuse comparison; treat as unchanged only if identical
        return a is b


def _rebuild_structure(
    manifest: dict[str, Any], state: dict[str, torch.Tensor], allowed: Allowed, budget: int
) -> nn.Module:
    builder = manifest["builder"]
    legacy = manifest["format_version"] < 3  # format 2 left stored tensors' dtypes out
    model: nn.Module | None = None
    if builder is not None:
        model = _call_builder(builder["ref"], builder["kwargs"], allowed, budget)
    for edit in manifest["edits"]:
        op, path = edit["op"], edit["path"]
        if op == "replace" and path == "":
            model = rebuild(edit["module"], state, "", allowed, legacy)
            continue
        if model is None:
            raise ArtifactError("manifest has edits but no builder and no root module")
        parent_path, _, name = path.rpartition(".")
        try:
            target = model.get_submodule(path) if op in ("patch", "order") else None
            parent = model.get_submodule(parent_path)
        except AttributeError:
            raise ArtifactError(
                f"manifest edit {op} names {path!r}, which the model lacks"
            ) from None
        if op == "replace":
            module = edit["module"]
            parent._modules[name] = (
                rebuild(module, state, path, allowed, legacy) if module else None
            )
        elif op == "remove":
            parent._modules.pop(name, None)
        elif op == "patch" and target is not None:
            set_attributes(target, edit.get("attrs", {}), allowed, path)
            apply_tensor_specs(target, edit.get("tensors", {}), state, path, legacy)
            for key in edit.get("drop", []):
                target._parameters.pop(key, None)
                target._buffers.pop(key, None)
            refresh_caches(target)
        elif op == "order" and target is not None:
            if sorted(edit["order"]) != sorted(target._modules):
                raise ArtifactError(f"manifest edit order of {path!r} does not list its children")
            target._modules = {k: target._modules[k] for k in edit["order"]}
    if model is None:
        raise ArtifactError("manifest has neither a builder nor a root module")
    if builder is not None:
        mark_builder(model, builder["ref"], builder["kwargs"])
    return model


def _call_builder(ref: str, kwargs: dict[str, Any], allowed: Allowed, budget: int) -> nn.Module:
    """Call an allowed builder with the file's kwargs, after a dry run on the meta device has
    shown that what it builds fits `budget` bytes (a hostile manifest cannot make nn.Linear
    allocate a terabyte)."""
    fn = allowed.resolve(ref, "builder")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ArtifactError(f"manifest builder {ref!r}: {e}") from None
    except ValueError:  # no signature to check
        pass
    try:
        with torch.device("meta"):
            dry = fn(**kwargs)
        size = sum(t.numel() * t.element_size() for t in dry.state_dict().values())
    except Exception:
        # A @netchisel.builder (netchisel's zoo, or one the caller marked) is trusted to bound
        # its own kwargs; a bare layer class that cannot be measured is not called at all.
        if not is_trusted_builder(fn) or isinstance(fn, type):
            raise ArtifactError(
                f"manifest builder {ref!r} cannot be measured before it runs: refused"
            ) from None
        size = 0
    if size > budget:
        raise ArtifactError(
            f"manifest builder {ref!r} with its kwargs makes {size:,} bytes of tensors for a "
            f"{budget // BUILD_BYTES_PER_FILE_BYTE:,}-byte weights file: refused"
        )
    try:
        model = fn(**kwargs)
    except NetChiselError:
        raise
    except Exception as e:
        raise ArtifactError(f"manifest builder {ref!r} failed: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ArtifactError(f"manifest builder {ref!r} returned {type(model).__name__}")
    return model


def _check_fit(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every stored tensor has the name, shape and dtype the rebuilt model declares, and no NaN.

    load_state_dict would cast a float16 or int64 tensor into a float32 parameter silently.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the model lacks"
        raise ArtifactError(
            f"the weights do not fit the rebuilt model: the file {what} "
            f"({len(missing) + len(extra)} such)"
        )
    for name, want in expected.items():
        got = state[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise ArtifactError(
                f"tensor {name!r} is stored as {_kind(got)}, the model declares {_kind(want)}: "
                "the file is corrupt or was edited"
            )
        if got.is_floating_point() and bool(torch.isnan(got).any()):
            raise ArtifactError(f"tensor {name!r} holds NaN values: refused")


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def _refuse_nan(model: nn.Module) -> None:
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            raise ModelError(
                f"state entry {name!r} is a {type(t).__name__}, not a tensor (torch.ao dynamic "
                "quantization packs weights so): use quantize.dynamic_int8 to save int8 layers"
            )
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise ModelError(f"tensor {name!r} holds NaN values (did training diverge?): not saved")


# -- tensors -----------------------------------------------------------------------------


def _encode_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], JSON, dict[str, str]]:
    """The tensors to write, the manifest's codec table (raw tensors are left out), aliases."""
    codecs: dict[str, str] = dict(getattr(model, _CODEC_ATTR, {}))
    for name, mask in masks_of(model).items():
        # Pruned weights are stored sparsely when that is smaller; frozen ones are dense.
        if mask.fill is None and name not in codecs:
            codecs[name] = smallest_codec(model.get_parameter(name).detach().cpu())
    stored: dict[str, torch.Tensor] = {}
    tensors: dict[str, JSON] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:  # tied weights are stored once
            aliases[name] = seen[key]
            continue
        seen[key] = name
        codec = codecs.get(name, "raw")
        parts, meta = get_codec(codec).encode(tensor)
        for suffix, part in parts.items():
            stored[name + (f"::{suffix}" if suffix else "")] = part.contiguous()
        if codec != "raw":
            info = {"codec": codec, "meta": meta, "parts": sorted(parts)}
            tensors[name] = {k: v for k, v in info.items() if (v and v != [""]) or k == "codec"}
    return stored, tensors, aliases


def _decode_state(
    stored: dict[str, torch.Tensor], tensors: JSON, aliases: dict[str, str], budget: int
) -> dict[str, torch.Tensor]:
    """The state dict: tensors in the codec table decoded, every other stored tensor raw."""
    state: dict[str, torch.Tensor] = {}
    claimed: set[str] = set()
    for name, info in tensors.items():
        keys = {s: name + (f"::{s}" if s else "") for s in info.get("parts", [""])}
        try:
            parts = {s: stored[key] for s, key in keys.items()}
        except KeyError as e:
            raise ArtifactError(
                f"{WEIGHTS} lacks tensor {e.args[0]!r} named in the manifest"
            ) from None
        claimed.update(keys.values())
        state[name] = decode_checked(name, info["codec"], parts, info.get("meta", {}), budget)
    for key, tensor in stored.items():
        if key not in claimed:
            if "::" in key:
                raise ArtifactError(
                    f"{WEIGHTS} has part {key!r} that no codec in the manifest claims"
                )
            state[key] = tensor
    for name, canonical in aliases.items():
        if canonical not in state:
            raise ArtifactError(f"manifest alias {name!r} names {canonical!r}, which is not stored")
        state[name] = state[canonical]
    return state


# -- files -------------------------------------------------------------------------------


def _file_info(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _export(
    model: nn.Module,
    kind: str,
    example_inputs: tuple[torch.Tensor, ...] | None,
    out: Path,
    calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> str:
    write = get_export(kind)
    if example_inputs is None:
        raise ConfigError(f"export {kind!r} needs example inputs")
    name = f"model.{kind}"
    write(model, example_inputs, out / name, calibration)
    return name
