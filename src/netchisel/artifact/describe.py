"""Describe a module's structure as JSON and rebuild it, with no pickle.

A module is its class (named "module:qualname"; `load` finds it only in the allow-lists of
`trust.py`), its plain attributes (numbers, strings, tuples, dtypes, allowed functions), the
shapes and dtypes of its own parameters and buffers, and its children. That is enough to
rebuild every torch.nn layer and most user modules after pruning changed their widths or a
rewrite changed their type, without calling their constructors. Values come from the state
dict afterwards.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.artifact.codecs import DTYPES
from netchisel.artifact.trust import Allowed, ref_of, torch_classes
from netchisel.artifact.values import JSON, PRIMITIVES, decode_value, encode_value, import_ref
from netchisel.core.errors import ArtifactError, ModelError

# Attributes every nn.Module has; they are rebuilt by nn.Module.__init__, not stored.
# The train/eval flag is not structure either: `load` returns the model in eval mode.
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_OURS = "_netchisel_"  # netchisel's own markers (builder, masks, codecs): not module state

# A tensor the weights file does not hold (a non-persistent buffer) is allocated from the
# manifest's shape alone; this caps what a hostile manifest can make `load` allocate (1 GiB f32).
MAX_DECLARED_NUMEL = 1 << 28


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
    if import_ref(ref) is not cls:
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
        if name in values and isinstance(values[name], (*PRIMITIVES, tuple, list)):
            kwargs[name] = values[name]
        elif param.default is param.empty:
            return None  # a required argument it does not keep: nothing to compare with
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except Exception:  # a layer whose constructor wants more than its attributes say
        return None
