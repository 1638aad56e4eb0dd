"""Describe a module's structure as JSON and rebuild it, with no pickle.

A module is its class (named "module:qualname"; `load` finds it only in the allow-lists of
`trust.py`), its plain attributes (numbers, strings, tuples, dtypes, allowed functions), the
shapes and dtypes of its own parameters and buffers, and its children. That is enough to
rebuild every torch.nn layer and most user modules after pruning changed their widths or a
rewrite changed their type, without calling their constructors. Values come from the state
dict afterwards.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import json
import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.artifact.codecs import DTYPES
from netchisel.artifact.trust import Allowed, is_hf_config_class, ref_of, torch_classes
from netchisel.core.errors import ArtifactError, ModelError, first_line

# Attributes every nn.Module has; they are rebuilt by nn.Module.__init__, not stored.
# The train/eval flag is not structure either: `load` returns the model in eval mode.
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_PRIMITIVES = (bool, int, float, str, type(None))
_OURS = "_netchisel_"  # netchisel's own markers (builder, masks, codecs): not module state

JSON = Any
_CODE_TAGS = frozenset({"__callable__", "__partial__", "__config__"})
# A tensor the weights file does not hold (a non-persistent buffer) is allocated from the
# manifest's shape alone; this caps what a hostile manifest can make `load` allocate (1 GiB f32).
MAX_DECLARED_NUMEL = 1 << 28


def encode_value(value: Any) -> JSON:
    """A JSON form of an attribute value; raises TypeError when there is none."""
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"__float__": str(value)}
    if isinstance(value, _PRIMITIVES):
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
        if _import_ref(ref) is not type(value):
            raise TypeError(f"config class {ref} cannot be imported by name")
        data = json.loads(value.to_json_string(use_diff=False))
        # The attention and experts implementations the model was built with are private
        # fields that to_json_string leaves out; from_dict takes them back as these keys.
        for key in ("attn_implementation", "experts_implementation"):
            internal = getattr(value, f"_{key}_internal", None)
            if internal is not None:
                data[key] = internal
        return {"__config__": {"class": ref, "json": json.dumps(data, sort_keys=True)}}
    if callable(value) and _import_ref(ref_of(value)) is value:
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


def set_attributes(module: nn.Module, attrs: dict[str, JSON], allowed: Allowed, path: str) -> None:
    """Set a rebuilt module's plain attributes, refusing names that would shadow its code.

    A manifest that sets `train` or `_init_flat_weights` to a function of its choosing would
    have it called during loading; dunder names and the class's methods are never attributes.
    """
    cls = type(module)
    for key, value in attrs.items():
        shadows = callable(getattr(cls, key, None)) or isinstance(getattr(cls, key, None), property)
        if key.startswith(("__", _OURS)) or key in _MODULE_INTERNALS or shadows:
            raise ArtifactError(
                f"manifest sets attribute {key!r} of {path or '<root>'} ({cls.__name__}), "
                "which names the module's own code or internals: refused"
            )
        object.__setattr__(module, key, decode_value(value, allowed))


def _import_ref(ref: str) -> Any:
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


def attributes(module: nn.Module) -> dict[str, Any]:
    """The module's own attributes: not parameters, buffers, children, caches or our markers.

    Tensors and weak references held as plain attributes are caches of the parameters (an
    RNN's flat weights); they are rebuilt from the parameters, not stored.
    """
    found = {}
    for k, v in vars(module).items():
        if k in _MODULE_INTERNALS or k.startswith(_OURS) or _is_cache(v):
            continue
        # A dict of tensors named as a cache (timm LeViT's attention_bias_cache, filled by
        # eval forwards from the parameters) is stored empty: the module fills it again.
        found[k] = {} if _is_dict_cache(k, v) else v
    return found


def _is_dict_cache(name: str, value: Any) -> bool:
    return (
        "cache" in name.lower()
        and isinstance(value, dict)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def refresh_caches(module: nn.Module) -> None:
    """Rebuild what `attributes` left out (today: RNN flat weights) after tensors changed."""
    init = getattr(type(module), "_init_flat_weights", None)  # the class's, never an attribute
    if callable(init):
        init(module)


def _is_cache(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_cache(v) for v in value)
    return isinstance(value, (torch.Tensor, weakref.ref))


def tensor_specs(module: nn.Module) -> dict[str, JSON]:
    """Shape, dtype and kind of the module's own (non-recursive) parameters and buffers."""
    specs: dict[str, JSON] = {}
    for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
        for name, t in table.items():
            if t is None:
                specs[name] = {"kind": kind, "none": True}
                continue
            # Defaults are left out of the manifest: float32, requires_grad true.
            spec: dict[str, Any] = {"kind": kind, "shape": list(t.shape)}
            if t.dtype != torch.float32:
                spec["dtype"] = str(t.dtype).removeprefix("torch.")
            if kind == "param" and not t.requires_grad:
                spec["requires_grad"] = False
            if kind == "buffer" and name in module._non_persistent_buffers_set:
                spec["persistent"] = False
            specs[name] = spec
    return specs


def describe(module: nn.Module, path: str = "") -> JSON:
    """The whole JSON description of a module and its children.

    Example:
        >>> d = describe(nn.Linear(3, 2))
        >>> d["class"], d["tensors"]["weight"]["shape"]
        ('torch.nn.modules.linear:Linear', [2, 3])
    """
    cls = type(module)
    ref = ref_of(cls)
    if cls.__module__ == "__main__":
        raise ModelError(
            f"module {path or '<root>'} is a {cls.__name__} defined in __main__, which another "
            "process cannot import: move it to a module (then load with trust=[its class]) or "
            "save a model made by a @netchisel.builder function"
        )
    if _import_ref(ref) is not cls:
        raise ModelError(
            f"module {path or '<root>'} is a {cls.__name__} that cannot be imported by name "
            f"({ref}); define it in an importable module (not __main__ or a function body) "
            "or remove its parametrizations before saving"
        )
    attrs = {}
    for key, value in attributes(module).items():
        try:
            attrs[key] = encode_value(value)
        except TypeError as e:
            raise ModelError(
                f"module {path or '<root>'} ({cls.__name__}) has attribute {key!r} that cannot "
                f"be saved: {e}"
            ) from None
    children = {
        name: (describe(child, _join(path, name)) if child is not None else None)
        for name, child in module._modules.items()
    }
    full = {"class": ref, "attrs": attrs, "tensors": tensor_specs(module), "children": children}
    return {key: value for key, value in full.items() if value or key == "class"}


def rebuild(
    data: JSON,
    state: Mapping[str, Tensor] | None = None,
    path: str = "",
    allowed: Allowed | None = None,
    dtype_from_file: bool = False,
) -> nn.Module:
    """Make a module from `describe`'s output; tensors are allocated, not filled.

    Classes and functions come only from `allowed` (torch's and netchisel's by default). A
    tensor spec without a shape takes its shape from `state[path.name]`.

    Example:
        >>> rebuild(describe(nn.Linear(3, 2))).weight.shape
        torch.Size([2, 3])
    """
    allowed = allowed or Allowed()
    cls: type[nn.Module] = allowed.resolve(data["class"], "class")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    set_attributes(module, data.get("attrs", {}), allowed, path)
    apply_tensor_specs(module, data.get("tensors", {}), state, path, dtype_from_file)
    for name, child in data.get("children", {}).items():
        module._modules[name] = (
            rebuild(child, state, _join(path, name), allowed, dtype_from_file)
            if child is not None
            else None
        )
    refresh_caches(module)
    return module


def apply_tensor_specs(
    module: nn.Module,
    specs: dict[str, JSON],
    state: Mapping[str, Tensor] | None = None,
    path: str = "",
    dtype_from_file: bool = False,
) -> None:
    """Give the module empty parameters/buffers of the described shapes and dtypes.

    A spec without a shape (the manifest leaves out what the weights file says) takes the shape
    of the state-dict tensor `path.name`. Its dtype is the declared one (float32 when absent),
    so a stored tensor of another dtype is caught by the caller; format-2 manifests left the
    dtype out too (`dtype_from_file`).
    """
    for name, spec in specs.items():
        # Replace in place where the name exists, so parameter order (and state-dict order,
        # which optimizers and users see) stays the builder's.
        (module._buffers if spec["kind"] == "param" else module._parameters).pop(name, None)
        if spec.get("none"):
            table = module._parameters if spec["kind"] == "param" else module._buffers
            table[name] = None
            continue
        key = _join(path, name)
        stored = state.get(key) if state is not None else None
        dtype = DTYPES[spec.get("dtype", "float32")]
        if "shape" in spec:
            shape = list(spec["shape"])
            if stored is not None and list(stored.shape) != shape:
                raise ArtifactError(
                    f"tensor {key!r} is stored with shape {list(stored.shape)}, the manifest "
                    f"declares {shape}: the file is corrupt"
                )
            if math.prod(shape) > MAX_DECLARED_NUMEL:
                raise ArtifactError(
                    f"the manifest declares tensor {key!r} of {math.prod(shape):,} elements, "
                    f"which the weights do not hold (at most {MAX_DECLARED_NUMEL:,}): refused"
                )
        elif stored is None:
            raise ArtifactError(f"the manifest gives no shape for {key!r} and the weights lack it")
        else:
            shape = list(stored.shape)
            dtype = stored.dtype if dtype_from_file and "dtype" not in spec else dtype
        # A non-persistent buffer is filled from the weights file when `save` stored it (see
        # store.py); zeros, not whatever memory held, where an old or hand-made file did not.
        t = (
            torch.zeros(shape, dtype=dtype)
            if spec.get("persistent") is False
            else torch.empty(shape, dtype=dtype)
        )
        if spec["kind"] == "param":
            module._parameters[name] = nn.Parameter(
                t, requires_grad=spec.get("requires_grad", True)
            )
        else:
            module._buffers[name] = t
            if spec.get("persistent") is False:
                module._non_persistent_buffers_set.add(name)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def declared_bytes(manifest: JSON) -> int:
    """Bytes of every tensor the manifest gives a shape for: what `load` allocates from the
    manifest alone, before the weights fill it (bounded by the caller).

    Example:
        >>> declared_bytes({"edits": [{"op": "patch", "path": "", "tensors": {
        ...     "w": {"kind": "buffer", "shape": [2, 3], "dtype": "float16"}}}]})
        12
    """
    total = 0

    def specs(table: JSON) -> None:
        nonlocal total
        for spec in table.values():
            if "shape" in spec:
                size = torch.empty(0, dtype=DTYPES[spec.get("dtype", "float32")]).element_size()
                total += math.prod(spec["shape"]) * size

    def walk(module: JSON | None) -> None:
        if module is not None:
            specs(module.get("tensors", {}))
            for child in module.get("children", {}).values():
                walk(child)

    for edit in manifest.get("edits", []):
        specs(edit.get("tensors", {}))
        walk(edit.get("module"))
    return total


def check_layer_shapes(model: nn.Module) -> None:
    """Refuse a torch layer whose tensors disagree with its own attributes.

    A described `nn.Linear(4, 8)` takes its bias from the weights file; a file with a
    one-element bias would load and broadcast silently. Each torch layer is built again on the
    meta device from its recorded constructor arguments, and its tensor shapes compared.

    Example:
        >>> layer = nn.Linear(4, 8)
        >>> layer.bias = nn.Parameter(torch.zeros(1))
        >>> check_layer_shapes(nn.Sequential(layer))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ArtifactError: tensor '0.bias' has shape [1], but Linear ... [8]
    """
    layers = set(torch_classes().values())
    for path, module in model.named_modules():
        if type(module) not in layers:
            continue
        reference = _rebuilt_on_meta(module)
        if reference is None:
            continue
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            expected = getattr(reference, name, None)
            if tensor is None or not isinstance(expected, Tensor):
                continue
            if tensor.shape != expected.shape:
                raise ArtifactError(
                    f"tensor {_join(path, name)!r} has shape {list(tensor.shape)}, but "
                    f"{type(module).__name__} with its attributes has {list(expected.shape)}"
                )


def _rebuilt_on_meta(module: nn.Module) -> nn.Module | None:
    cls = type(module)
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    values = vars(module)
    kwargs: dict[str, Any] = {}
    for name, param in list(params.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in values and isinstance(values[name], (*_PRIMITIVES, tuple, list)):
            kwargs[name] = values[name]
        elif param.default is param.empty:
            return None  # a required argument it does not keep: nothing to compare with
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except Exception:  # a layer whose constructor wants more than its attributes say
        return None
