"""The manifest's schema, checked before anything in it is resolved, imported or allocated.

Every failure is one `ArtifactError` naming the field (`edits[1].module.children.fc.class`)
and what was expected. The layout is written in docs/formats.md; this is its executable form.
"""

from __future__ import annotations

import re
from typing import Any

from netchisel.core.errors import ArtifactError

JSON = Any
TAGS = frozenset(
    {
        "__tuple__",
        "__dict__",
        "__dtype__",
        "__set__",
        "__float__",
        "__callable__",
        "__partial__",
        "__config__",
    }
)
OPS = frozenset({"replace", "patch", "remove", "order"})
FILES = frozenset(
    {
        "model.safetensors",
        "model.pt2",
        "model.onnx",
        "model.onnx_int8",
        # An export that is a directory lists its files (a Hugging Face checkpoint).
        "model.compressed_tensors/config.json",
        "model.compressed_tensors/model.safetensors",
    }
)
_TOP: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "torch_version": str,
    "builder": (dict, type(None)),
    "edits": list,
    "files": dict,
    "metadata": dict,
    "tensors": dict,
    "aliases": dict,
}
_REQUIRED = ("format", "format_version", "builder", "edits", "files")
_SPEC_KEYS = {"kind", "shape", "dtype", "requires_grad", "persistent", "none"}
_NAME = re.compile(r"[^.\s]+")  # one module or tensor name: no dots, not empty
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(manifest: JSON, dtypes: frozenset[str]) -> None:
    """Raise ArtifactError unless `manifest` has the artifact layout (types, keys, tags).

    Example:
        >>> check_manifest({"format": "netchisel-artifact", "format_version": 2}, frozenset())
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ArtifactError: manifest.json lacks 'builder'
    """
    _need(isinstance(manifest, dict), "manifest.json", "a JSON object")
    for key in _REQUIRED:
        if key not in manifest:
            raise ArtifactError(f"manifest.json lacks {key!r}")
    for key, value in manifest.items():
        _need(key in _TOP, key, f"a known key ({', '.join(_TOP)})")
        _need(isinstance(value, _TOP[key]) and not isinstance(value, bool), key, "its JSON type")
    _check_files(manifest["files"])
    if manifest["builder"] is not None:
        _check_builder(manifest["builder"])
    for i, edit in enumerate(manifest["edits"]):
        _check_edit(edit, f"edits[{i}]", dtypes)
    for name, info in manifest.get("tensors", {}).items():
        _check_codec_entry(info, f"tensors.{name}")
    for name, target in manifest.get("aliases", {}).items():
        _need(isinstance(target, str) and target != name, f"aliases.{name}", "another tensor name")


def _check_files(files: JSON) -> None:
    _need("model.safetensors" in files, "files", "an entry for model.safetensors")
    for name, info in files.items():
        _need(name in FILES, f"files.{name}", f"one of {', '.join(sorted(FILES))}")
        _need(
            isinstance(info, dict) and set(info) == {"bytes", "sha256"},
            f"files.{name}",
            "bytes and sha256",
        )
        _need(_count(info["bytes"]), f"files.{name}.bytes", "a byte count")
        _need(
            isinstance(info["sha256"], str) and _SHA256.fullmatch(info["sha256"]) is not None,
            f"files.{name}.sha256",
            "64 hex digits",
        )


def _check_builder(builder: JSON) -> None:
    _need(set(builder) == {"ref", "kwargs"}, "builder", "exactly 'ref' and 'kwargs'")
    _need(isinstance(builder["ref"], str), "builder.ref", "a 'module:function' string")
    _need(isinstance(builder["kwargs"], dict), "builder.kwargs", "an object of keyword arguments")


def _check_edit(edit: JSON, where: str, dtypes: frozenset[str]) -> None:
    _need(isinstance(edit, dict), where, "an object")
    _need(edit.get("op") in OPS, f"{where}.op", f"one of {', '.join(sorted(OPS))}")
    _need(isinstance(edit.get("path"), str), f"{where}.path", "a dotted module path")
    path = edit["path"]
    _need(
        path == "" or all(_NAME.fullmatch(p) for p in path.split(".")),
        f"{where}.path",
        "a dotted module path",
    )
    op = edit["op"]
    allowed = {"replace": {"module"}, "remove": set(), "order": {"order"}}.get(
        op, {"attrs", "tensors", "drop"}
    )
    extra = set(edit) - {"op", "path"} - allowed
    _need(not extra, f"{where}.{sorted(extra)[0] if extra else ''}", f"no such key for {op}")
    if op == "replace":
        _need("module" in edit, f"{where}.module", "a module description or null")
        if edit["module"] is not None:
            _check_module(edit["module"], f"{where}.module", dtypes)
        _need(path != "" or edit["module"] is not None, f"{where}.module", "a root module")
    elif op == "order":
        order = edit.get("order")
        _need(
            isinstance(order, list) and all(isinstance(n, str) for n in order),
            f"{where}.order",
            "a list of names",
        )
        _need(len(set(order)) == len(order), f"{where}.order", "names without repeats")
    elif op == "patch":
        _check_attrs(edit.get("attrs", {}), f"{where}.attrs")
        _check_specs(edit.get("tensors", {}), f"{where}.tensors", dtypes)
        drop = edit.get("drop", [])
        _need(
            isinstance(drop, list) and all(isinstance(n, str) for n in drop),
            f"{where}.drop",
            "a list of names",
        )


def _check_module(module: JSON, where: str, dtypes: frozenset[str], depth: int = 0) -> None:
    _need(depth < 64, where, "at most 64 levels of nested modules")
    _need(isinstance(module, dict), where, "a module description")
    extra = set(module) - {"class", "attrs", "tensors", "children"}
    _need(not extra, f"{where}.{sorted(extra)[0] if extra else ''}", "no such key")
    _need(isinstance(module.get("class"), str), f"{where}.class", "a 'module:Class' string")
    _check_attrs(module.get("attrs", {}), f"{where}.attrs")
    _check_specs(module.get("tensors", {}), f"{where}.tensors", dtypes)
    children = module.get("children", {})
    _need(isinstance(children, dict), f"{where}.children", "an object")
    for name, child in children.items():
        _need(_NAME.fullmatch(name) is not None, f"{where}.children", "names without dots")
        if child is not None:
            _check_module(child, f"{where}.children.{name}", dtypes, depth + 1)


def _check_attrs(attrs: JSON, where: str) -> None:
    _need(isinstance(attrs, dict), where, "an object")
    for key, value in attrs.items():
        _need(key.isidentifier(), f"{where}.{key}", "an attribute name")
        _check_value(value, f"{where}.{key}")


def _check_value(value: JSON, where: str, depth: int = 0) -> None:
    _need(depth < 32, where, "at most 32 levels of nesting")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
        return
    if not isinstance(value, dict):
        return
    _need(
        len(value) == 1 and next(iter(value)) in TAGS,
        where,
        f"a value tag ({', '.join(sorted(TAGS))})",
    )
    ((tag, inner),) = value.items()
    if tag in ("__tuple__", "__set__"):
        _need(isinstance(inner, list), where, "a list")
        for i, v in enumerate(inner):
            _check_value(v, f"{where}[{i}]", depth + 1)
    elif tag == "__dict__":
        _need(isinstance(inner, dict), where, "an object")
        for k, v in inner.items():
            _check_value(v, f"{where}.{k}", depth + 1)
    elif tag == "__float__":
        _need(inner in ("nan", "inf", "-inf"), where, "nan, inf or -inf")
    elif tag == "__partial__":
        _need(
            isinstance(inner, dict) and set(inner) == {"func", "args", "keywords"},
            where,
            "an object with func, args and keywords",
        )
        _need(isinstance(inner["args"], list), f"{where}.args", "a list")
        _need(isinstance(inner["keywords"], dict), f"{where}.keywords", "an object")
        _check_value(inner["func"], f"{where}.func", depth + 1)
        _check_value(inner["args"], f"{where}.args", depth + 1)
        for k, v in inner["keywords"].items():
            _need(k.isidentifier(), f"{where}.keywords.{k}", "an argument name")
            _check_value(v, f"{where}.keywords.{k}", depth + 1)
    elif tag == "__config__":
        _need(
            isinstance(inner, dict)
            and set(inner) == {"class", "json"}
            and all(isinstance(v, str) for v in inner.values()),
            where,
            "an object with a class and a json string",
        )
    else:  # __dtype__ names are checked against torch's dtypes; __callable__ by trust.py
        _need(isinstance(inner, str), where, "a string")


def _check_specs(specs: JSON, where: str, dtypes: frozenset[str]) -> None:
    _need(isinstance(specs, dict), where, "an object")
    for name, spec in specs.items():
        at = f"{where}.{name}"
        _need(_NAME.fullmatch(name) is not None, at, "a tensor name without dots")
        _need(
            isinstance(spec, dict) and set(spec) <= _SPEC_KEYS,
            at,
            f"keys among {', '.join(sorted(_SPEC_KEYS))}",
        )
        _need(spec.get("kind") in ("param", "buffer"), f"{at}.kind", "param or buffer")
        if "shape" in spec:
            shape = spec["shape"]
            _need(
                isinstance(shape, list) and all(_count(s) for s in shape),
                f"{at}.shape",
                "a list of sizes",
            )
        if "dtype" in spec:
            _need(spec["dtype"] in dtypes, f"{at}.dtype", "a torch dtype name")
        for flag in ("requires_grad", "persistent", "none"):
            if flag in spec:
                _need(isinstance(spec[flag], bool), f"{at}.{flag}", "true or false")


def _check_codec_entry(info: JSON, where: str) -> None:
    _need(
        isinstance(info, dict) and isinstance(info.get("codec"), str),
        where,
        "an object with 'codec'",
    )
    _need(set(info) <= {"codec", "meta", "parts"}, where, "keys among codec, meta, parts")
    _need(isinstance(info.get("meta", {}), dict), f"{where}.meta", "an object")
    parts = info.get("parts", [""])
    _need(
        isinstance(parts, list) and all(isinstance(p, str) for p in parts),
        f"{where}.parts",
        "a list of names",
    )


def _count(value: JSON) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _need(ok: bool, where: str, expected: str) -> None:
    if not ok:
        raise ArtifactError(f"manifest.json field {where}: expected {expected}")
