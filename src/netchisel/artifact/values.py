"""Attribute values of a described module as JSON, and back: numbers, strings, containers,
dtypes, named callables from the allow-lists, layer factories (`functools.partial` of an
allowed callable with plain-data arguments) and Hugging Face configs (their own JSON). A
manifest's value is hostile data: `decode_value` resolves every name through `trust.Allowed`.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import json
from typing import Any

import torch

from netchisel.artifact.codecs import DTYPES
from netchisel.artifact.trust import Allowed, is_hf_config_class, ref_of
from netchisel.core.errors import ArtifactError, first_line

PRIMITIVES = (bool, int, float, str, type(None))
JSON = Any
_CODE_TAGS = frozenset({"__callable__", "__partial__", "__config__"})


def encode_value(value: Any) -> JSON:
    """A JSON form of an attribute value; raises TypeError when there is none."""
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"__float__": str(value)}
    if isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: encode_value(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(encode_value(v) for v in value)}
    if type(value) is functools.partial:
        # A layer factory such as partial(nn.LayerNorm, eps=1e-6) (torchvision's ViT): the
        # callable by name, its arguments as plain data (nothing callable inside).
        return {
            "__partial__": {
                "func": encode_value(value.func),
                "args": [_encode_plain(v) for v in value.args],
                "keywords": {k: _encode_plain(v) for k, v in value.keywords.items()},
            }
        }
    if is_hf_config_class(type(value)):
        # A Hugging Face model's config, as the JSON its own `save_pretrained` writes.
        ref = ref_of(type(value))
        if import_ref(ref) is not type(value):
            raise TypeError(f"config class {ref} cannot be imported by name")
        data = json.loads(value.to_json_string(use_diff=False))
        # The attention and experts implementations the model was built with are private
        # fields that to_json_string leaves out; from_dict takes them back as these keys.
        for key in ("attn_implementation", "experts_implementation"):
            internal = getattr(value, f"_{key}_internal", None)
            if internal is not None:
                data[key] = internal
        return {"__config__": {"class": ref, "json": json.dumps(data, sort_keys=True)}}
    if callable(value) and import_ref(ref_of(value)) is value:
        if getattr(value, "__module__", None) == "__main__":
            raise TypeError(f"function {value.__qualname__} is defined in __main__")
        return {"__callable__": ref_of(value)}
    raise TypeError(f"{type(value).__name__} value cannot be stored")


def _encode_plain(value: Any) -> JSON:
    """`encode_value` of data only: no callable, partial or config (a partial's arguments)."""
    encoded = encode_value(value)
    if _holds_code(encoded):
        raise TypeError(f"a partial's argument {value!r} is not plain data")
    return encoded


def _holds_code(data: JSON) -> bool:
    if isinstance(data, list):
        return any(_holds_code(v) for v in data)
    if not isinstance(data, dict):
        return False
    if len(data) != 1:  # not a tagged value: the schema refuses it; never call it plain data
        return True
    ((tag, inner),) = data.items()
    if tag in _CODE_TAGS:
        return True
    if tag in ("__tuple__", "__set__"):
        return any(_holds_code(v) for v in inner)
    return tag == "__dict__" and any(_holds_code(v) for v in inner.values())


def decode_value(data: JSON, allowed: Allowed | None = None) -> Any:
    """The value `encode_value` stored; functions only from the allow-list (see trust.py).

    Example:
        >>> decode_value({"__tuple__": [1, {"__dtype__": "int8"}]})
        (1, torch.int8)
    """
    allowed = allowed or Allowed()
    if isinstance(data, list):
        return [decode_value(v, allowed) for v in data]
    if not isinstance(data, dict):
        return data
    (tag, inner), *_ = data.items()
    if tag == "__tuple__":
        return tuple(decode_value(v, allowed) for v in inner)
    if tag == "__dict__":
        return {k: decode_value(v, allowed) for k, v in inner.items()}
    if tag == "__dtype__":
        if inner not in DTYPES:
            raise ArtifactError(f"manifest names dtype {inner!r}, which torch does not have")
        return DTYPES[inner]
    if tag == "__set__":
        items = [decode_value(v, allowed) for v in inner]
        if not all(isinstance(v, collections.abc.Hashable) for v in items):
            raise ArtifactError("manifest has a __set__ of unhashable values")
        return set(items)
    if tag == "__float__":
        return float(inner)
    if tag == "__callable__":
        return allowed.resolve(inner, "function")
    if tag == "__partial__":
        return _decode_partial(inner, allowed)
    if tag == "__config__":
        return _decode_config(inner, allowed)
    raise ArtifactError(f"manifest has an unknown value tag {tag!r}")


def _decode_partial(inner: JSON, allowed: Allowed) -> functools.partial[Any]:
    """A partial of an allowed callable with plain-data arguments, nothing else."""
    func, args, keywords = inner["func"], inner["args"], inner["keywords"]
    if not (isinstance(func, dict) and set(func) == {"__callable__"}):
        raise ArtifactError("manifest has a __partial__ whose func is not a named callable")
    if _holds_code(args) or _holds_code(list(keywords.values())):
        raise ArtifactError("manifest has a __partial__ with a callable argument: refused")
    return functools.partial(
        decode_value(func, allowed),
        *[decode_value(v, allowed) for v in args],
        **{k: decode_value(v, allowed) for k, v in keywords.items()},
    )


# The Hugging Face attention and mixture-of-experts implementations a stored config may
# select: the built-in ones. Any other name (a kernel on the Hub) would make transformers
# fetch and run code.
HF_IMPLEMENTATIONS = {
    "attn_implementation": frozenset({None, "eager", "sdpa"}),
    "experts_implementation": frozenset({None, "eager", "batched_mm", "grouped_mm"}),
}


def _decode_config(inner: JSON, allowed: Allowed) -> Any:
    """A Hugging Face config of an allowed class, from its JSON; one object per distinct
    (class, JSON) in a load, so modules that shared a config share it again."""
    key = (inner["class"], inner["json"])
    if key in allowed.configs:
        return allowed.configs[key]
    cls = allowed.resolve(inner["class"], "config")
    try:
        data = json.loads(inner["json"])
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"manifest has a __config__ that is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError("manifest has a __config__ that is not a JSON object")
    for field_name, known in HF_IMPLEMENTATIONS.items():
        for name in (field_name, f"_{field_name}", f"_{field_name}_internal"):
            if name in data and data[name] not in known:
                names = ", ".join(sorted(str(k) for k in known if k))
                raise ArtifactError(
                    f"manifest config sets {name} to {data[name]!r}; only {names} can be loaded "
                    "(another name may fetch code from the Hub): refused"
                )
    if "auto_map" in data or data.get("trust_remote_code"):
        raise ArtifactError("manifest config names remote code (auto_map): refused")
    try:
        config = cls.from_dict(data)
    except Exception as e:  # whatever the library says of a malformed config, in one line
        raise ArtifactError(f"manifest config {inner['class']}: {first_line(e)}") from None
    allowed.configs[key] = config
    return config


def import_ref(ref: str) -> Any:
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj
