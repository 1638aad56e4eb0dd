"""The module tree of an artifact: the edits that turn a builder's model into the saved one,
and the checked way back (allowed builders only, bounded by the file, tensors that fit).

See docs/formats.md for the edits and docs/security.md for the checks.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netchisel.artifact.describe import (
    apply_tensor_specs,
    attributes,
    describe,
    rebuild,
    refresh_caches,
    set_attributes,
    tensor_specs,
)
from netchisel.artifact.trust import Allowed
from netchisel.artifact.values import JSON, encode_value
from netchisel.core.errors import ArtifactError, ModelError, NetChiselError, first_line
from netchisel.core.modules import (
    build,
    builder_of,
    is_trusted_builder,
    mark_builder,
    resolve_builder,
)

# What a builder may allocate, beside the weights file it will be filled from: generous for
# pruned and entropy-coded files (Deep Compression reaches 60x), small enough that a manifest
# asking nn.Linear for a terabyte is refused before anything is allocated.
BUILD_BYTES_PER_FILE_BYTE = 256
MIN_BUILD_BUDGET = 1 << 30


def structure_of(model: nn.Module) -> dict[str, Any]:
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
    diff(model, fresh, "", edits)
    return {"builder": {"ref": ref, "kwargs": kwargs}, "edits": edits}


def diff(cur: nn.Module, fresh: nn.Module, path: str, edits: list[JSON]) -> None:
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
        diff(child, other, child_path, edits)
    for name in fresh._modules:
        if name not in cur._modules:
            edits.append({"op": "remove", "path": f"{path}.{name}" if path else name})
    kept = [n for n in fresh._modules if n in cur._modules]
    added = [n for n in cur._modules if n not in fresh._modules]
    if list(cur._modules) != kept + added:
        edits.append({"op": "order", "path": path, "order": list(cur._modules)})


def leave_out_known_shapes(edits: list[JSON], state_names: set[str]) -> None:
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


def rebuild_structure(
    manifest: dict[str, Any], state: dict[str, torch.Tensor], allowed: Allowed, budget: int
) -> nn.Module:
    builder = manifest["builder"]
    legacy = manifest["format_version"] < 3  # format 2 left stored tensors' dtypes out
    model: nn.Module | None = None
    if builder is not None:
        model = call_builder(builder["ref"], builder["kwargs"], allowed, budget)
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


def call_builder(ref: str, kwargs: dict[str, Any], allowed: Allowed, budget: int) -> nn.Module:
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


def check_fit(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
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


def refuse_nan(model: nn.Module) -> None:
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            raise ModelError(
                f"state entry {name!r} is a {type(t).__name__}, not a tensor (torch.ao dynamic "
                "quantization packs weights so): use quantize.dynamic_int8 to save int8 layers"
            )
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise ModelError(f"tensor {name!r} holds NaN values (did training diverge?): not saved")


def declared_non_persistent(edits: list[JSON]) -> list[str]:
    """The full names of the non-persistent buffers whose specs the edits carry: `save`
    stores their values, which no state dict holds.

    Example:
        >>> declared_non_persistent([{"op": "replace", "path": "a", "module": {"class": "x:Y",
        ...     "tensors": {"f": {"kind": "buffer", "shape": [2], "persistent": False}}}}])
        ['a.f']
    """
    found: list[str] = []

    def specs(table: JSON, path: str) -> None:
        for name, spec in table.items():
            if spec.get("persistent") is False and not spec.get("none"):
                found.append(f"{path}.{name}" if path else name)

    def walk(module: JSON | None, path: str) -> None:
        if module is not None:
            specs(module.get("tensors", {}), path)
            for name, child in module.get("children", {}).items():
                walk(child, f"{path}.{name}" if path else name)

    for edit in edits:
        if edit["op"] == "patch":
            specs(edit.get("tensors", {}), edit["path"])
        elif edit["op"] == "replace":
            walk(edit["module"], edit["path"])
    return found


def fill_non_persistent(model: nn.Module, state: Mapping[str, torch.Tensor]) -> set[str]:
    """Copy the stored values of the model's non-persistent buffers into them (checked like
    the state dict: same dtype and shape, no NaN); return the names used."""
    used: set[str] = set()
    for path, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            key = f"{path}.{name}" if path else name
            buffer, got = module._buffers.get(name), state.get(key)
            if got is None or buffer is None:
                continue
            if got.dtype != buffer.dtype or got.shape != buffer.shape:
                raise ArtifactError(
                    f"buffer {key!r} is stored as {_kind(got)}, the model declares "
                    f"{_kind(buffer)}: the file is corrupt or was edited"
                )
            if got.is_floating_point() and bool(torch.isnan(got).any()):
                raise ArtifactError(f"tensor {key!r} holds NaN values: refused")
            with torch.no_grad():
                buffer.copy_(got)
            used.add(key)
    return used


def with_versions(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the per-module `version` metadata that `model.state_dict()` carries.

    A module's `_load_from_state_dict` may read it (torchvision's MNASNet rebuilds its stem
    for version 1 when it is missing); the versions are those of the classes rebuilt, which
    are the ones the described structure was saved from.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    # The class's version, never an instance attribute a manifest could have set.
    metadata = OrderedDict(
        (path, {"version": type(module)._version}) for path, module in model.named_modules()
    )
    out._metadata = metadata  # type: ignore[attr-defined]
    return out
