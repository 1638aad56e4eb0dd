"""Artifacts: a directory with `model.safetensors` and `manifest.json`, loaded with no pickle.

The manifest says how to rebuild the module tree: the builder ("package.module:function" and
its kwargs), then structural edits against what the builder makes (changed widths, replaced or
removed modules), then the codec of every tensor. See docs/formats.md.
"""

from __future__ import annotations

import hashlib
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
from netchisel.artifact.describe import check_layer_shapes, declared_bytes
from netchisel.artifact.exports import get_export, needs_inputs
from netchisel.artifact.schema import check_manifest
from netchisel.artifact.structure import (
    BUILD_BYTES_PER_FILE_BYTE,
    MIN_BUILD_BUDGET,
    check_fit,
    declared_non_persistent,
    fill_non_persistent,
    leave_out_known_shapes,
    rebuild_structure,
    refuse_nan,
    structure_of,
    with_versions,
)
from netchisel.artifact.trust import Allowed, Trusted
from netchisel.artifact.values import JSON
from netchisel.core.errors import (
    ArtifactError,
    ConfigError,
    NetChiselError,
    first_line,
)
from netchisel.core.files import as_if_created
from netchisel.core.masks import masks_of, set_mask

FORMAT = "netchisel-artifact"
# 2: defaults left out of the manifest, written without indentation.
# 3: the dtype of every tensor is declared (float32 when absent), so a swapped one is caught.
FORMAT_VERSION = 3
MAX_MANIFEST_BYTES = 64 << 20
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
    refuse_nan(model)
    stored, tensors, aliases = _encode_state(model)
    structure = structure_of(model)
    leave_out_known_shapes(structure["edits"], set(model.state_dict()))
    # The values of the non-persistent buffers the manifest declares (a rotary embedding's
    # inv_freq): not in the state dict, so the builder cannot supply them; stored raw.
    buffers = dict(model.named_buffers())
    for key in declared_non_persistent(structure["edits"]):
        stored[key] = buffers[key].detach().cpu().contiguous().clone()
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
            written = tmp / name
            for path in sorted(written.rglob("*")) if written.is_dir() else [written]:
                if path.is_file():
                    manifest["files"][path.relative_to(tmp).as_posix()] = _file_info(path)
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
        model = rebuild_structure(manifest, state, allowed, budget)
        extra = fill_non_persistent(model, state)
        check_fit(model, {k: v for k, v in state.items() if k not in extra})
        check_layer_shapes(model)
        model.load_state_dict(
            with_versions(model, {k: v for k, v in state.items() if k not in extra}),
            strict=True,
        )
        check_loaded(model)
    except ArtifactError:
        raise
    except NetChiselError as e:
        raise ArtifactError(f"{root} cannot be rebuilt: {e}") from None
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


def check_loaded(model: nn.Module) -> None:
    """Call `check_loaded()` of every module class that defines one (netchisel's dynamic
    models check their plain attributes, which a manifest sets: widths, thresholds, exits,
    top-k), so a hostile value is refused at load, not met at the first forward.

    Example:
        >>> class Half(nn.Module):
        ...     def check_loaded(self) -> None:
        ...         raise ValueError("bad")
        >>> check_loaded(nn.Sequential(Half()))
        Traceback (most recent call last):
        ValueError: bad
    """
    for module in model.modules():
        check = getattr(type(module), "check_loaded", None)  # the class's, never an attribute
        if callable(check):
            check(module)


def _export(
    model: nn.Module,
    kind: str,
    example_inputs: tuple[torch.Tensor, ...] | None,
    out: Path,
    calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> str:
    write = get_export(kind)
    if example_inputs is None and needs_inputs(kind):
        raise ConfigError(f"export {kind!r} needs example inputs")
    name = f"model.{kind}"
    write(model, example_inputs or (), out / name, calibration)
    return name
