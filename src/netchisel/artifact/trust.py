"""What an artifact's manifest may name, looked up in exact allow-lists; nothing else is imported.

A manifest is data written by whoever sent the file. It names module classes, builders and
functions as "module:qualname" strings; `load` turns each into an object only through a table:

- the torch.nn, torch.ao.nn (quantized) classes and the torch.nn.functional / torch tensor-op
  functions, listed once from torch's own namespaces by their exact name;
- netchisel's own `nn.Module` classes and `@netchisel.builder` functions (only a module whose
  name starts with "netchisel." is ever imported, and the object must be defined there);
- what the caller trusts: `load(path, trust=[MyNet, make_net])`, or `@netchisel.builder` on a
  class or function of code the caller has imported. Trusting a Hugging Face `transformers`
  model class also trusts the module classes of its modelling file (and transformers'
  activations and pytorch_utils), never remote code (`transformers_modules`).

The names are compared as strings: no attribute walk through modules (which once let
"torch:os.environ.clear" reach `os`), no import of a module the manifest names.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from netchisel.core.errors import ArtifactError, ConfigError
from netchisel.core.modules import is_trusted_builder, registered_builders

Kind = Literal["class", "builder", "function"]
Trusted = object  # a class, a function, or "package.module:name"

# Packages of layers (their own modules, walked once); not torch.nn.utils or anything that
# reaches beyond layers.
_TORCH_CLASS_PACKAGES = ("torch.nn.modules", "torch.ao.nn")
_TORCH_FUNCTION_PREFIXES = ("torch.nn.functional:", "torch._C._nn:", "torch:")
_REMOTE = "transformers_modules"  # where trust_remote_code puts downloaded model code
_HF_SHARED = ("transformers.activations", "transformers.pytorch_utils")
_OUR_MODULE = re.compile(r"netchisel(\.[A-Za-z_][A-Za-z0-9_]*)+")
# Classes that moved since a release saved artifacts naming them: old ref -> new ref. Strings
# only (this floor never imports a family); `Allowed._lookup` reads a manifest's ref through it.
RENAMED: dict[str, str] = {
    "netchisel.zoo.models:BasicBlock": "netchisel.zoo.models.vision:BasicBlock",
    "netchisel.zoo.models:ResNet": "netchisel.zoo.models.vision:ResNet",
    "netchisel.zoo.models:InvertedResidual": "netchisel.zoo.models.vision:InvertedResidual",
    "netchisel.zoo.models:CausalSelfAttention": "netchisel.zoo.models.text:CausalSelfAttention",
    "netchisel.zoo.models:MLP": "netchisel.zoo.models.text:MLP",
    "netchisel.zoo.models:Block": "netchisel.zoo.models.text:Block",
    "netchisel.zoo.models:GPT": "netchisel.zoo.models.text:GPT",
    "netchisel.zoo.models:SentenceEmbedder": "netchisel.zoo.models.text:SentenceEmbedder",
    "netchisel.quantize.modules:Int8WeightOnlyLinear": (
        "netchisel.quantize.formats.int8:Int8WeightOnlyLinear"
    ),
    "netchisel.quantize.modules:Int8Embedding": "netchisel.quantize.formats.int8:Int8Embedding",
    "netchisel.quantize.modules:Int4WeightOnlyLinear": (
        "netchisel.quantize.formats.int4:Int4WeightOnlyLinear"
    ),
    "netchisel.quantize.modules:DynamicInt8Linear": (
        "netchisel.quantize.formats.dynamic_int8:DynamicInt8Linear"
    ),
    "netchisel.quantize.modules:PackedLinear": "netchisel.quantize.formats.packed:PackedLinear",
    "netchisel.quantize.packed_conv:PackedConv2d": "netchisel.quantize.formats.packed:PackedConv2d",
    "netchisel.quantize.cluster:ClusteredLinear": (
        "netchisel.quantize.formats.clustered:ClusteredLinear"
    ),
    "netchisel.quantize.cluster:ClusteredConv": (
        "netchisel.quantize.formats.clustered:ClusteredConv"
    ),
    "netchisel.quantize.static:StaticInt8Linear": (
        "netchisel.quantize.formats.static_int8:StaticInt8Linear"
    ),
    "netchisel.quantize.static:StaticInt8Conv2d": (
        "netchisel.quantize.formats.static_int8:StaticInt8Conv2d"
    ),
}
_QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def ref_of(obj: Any) -> str:
    """The "module:qualname" a manifest uses for a class or function.

    Example:
        >>> ref_of(nn.Linear)
        'torch.nn.modules.linear:Linear'
    """
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


@cache
def torch_classes() -> dict[str, type[nn.Module]]:
    """Every nn.Module class defined in torch's layer packages, by exact ref."""
    found: dict[str, type[nn.Module]] = {}
    for package in _TORCH_CLASS_PACKAGES:
        root = importlib.import_module(package)
        # The prefix makes walk_packages import "torch.ao.nn.quantized", never a bare
        # "quantized" that the current directory could supply; it also walks nested packages.
        names = [package] + [
            info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.")
        ]
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, nn.Module):
                    found[ref_of(value)] = value
    return found


@cache
def torch_functions() -> dict[str, Any]:
    """torch.nn.functional's functions and torch's tensor ops (torch.tanh ...), by exact ref."""
    found: dict[str, Any] = {}
    functional = vars(torch.nn.functional)
    ops = (getattr(torch, n, None) for n in dir(torch._C._VariableFunctions))
    for value in [*functional.values(), *ops]:
        function = isinstance(value, (types.FunctionType, types.BuiltinFunctionType))
        if function and ref_of(value).startswith(_TORCH_FUNCTION_PREFIXES):
            found[ref_of(value)] = value
    return found


@dataclass
class Allowed:
    """The allow-list for one `load`: torch's tables, netchisel's own, and the caller's."""

    extra: dict[str, Any] = field(default_factory=dict)
    hf_modules: set[str] = field(default_factory=set)

    @classmethod
    def with_trust(cls, trust: Iterable[Trusted] = ()) -> Allowed:
        """The allow-list with the caller's `trust` entries (objects or "module:name" strings).

        Example:
            >>> Allowed.with_trust([nn.Linear]).resolve("torch.nn.modules.linear:Linear", "class")
            <class 'torch.nn.modules.linear.Linear'>
        """
        allowed = cls()
        for item in trust:
            if isinstance(item, str) and item.startswith(_REMOTE):
                raise ConfigError(f"trust: {item} is remote code (trust_remote_code): refused")
            obj = _import_trusted(item) if isinstance(item, str) else item
            ref = ref_of(obj)
            if not callable(obj) or ":" not in ref or ref.startswith(":"):
                raise ConfigError(f"trust: {item!r} is not a class or function")
            if ref.startswith(_REMOTE):
                raise ConfigError(f"trust: {ref} is remote code (trust_remote_code): refused")
            allowed.extra[ref] = obj
            if ref.startswith("transformers.") and isinstance(obj, type):
                allowed.hf_modules.update({obj.__module__, *_HF_SHARED})
        return allowed

    def resolve(self, ref: Any, kind: Kind) -> Any:
        """The object `ref` names if an allow-list holds it for `kind`; else ArtifactError."""
        if not isinstance(ref, str) or not _well_formed(ref):
            raise ArtifactError(f"manifest names {ref!r}, which is not a 'module:name' reference")
        obj = self._lookup(ref, kind)
        if obj is None or not _fits(obj, kind):
            raise ArtifactError(_refusal(ref, kind))
        return obj

    def _lookup(self, ref: str, kind: Kind) -> Any:
        if ref in self.extra:
            return self.extra[ref]
        ref = RENAMED.get(ref, ref)
        if kind == "function":  # attribute values: torch's functions only, or the caller's
            return torch_functions().get(ref)
        registered = registered_builders()
        if ref in registered:
            return registered[ref]
        found = torch_classes().get(ref) or torch_functions().get(ref)
        if found is not None:
            return found
        module_name = ref.partition(":")[0]
        if _OUR_MODULE.fullmatch(module_name) or module_name in self.hf_modules:
            return _defined_in(module_name, ref.partition(":")[2])
        return None


def _fits(obj: Any, kind: Kind) -> bool:
    is_module_class = isinstance(obj, type) and issubclass(obj, nn.Module)
    if kind == "class":
        return is_module_class
    if kind == "builder":
        return is_module_class or is_trusted_builder(obj)
    return callable(obj) and not isinstance(obj, type)


def _defined_in(module_name: str, qualname: str) -> Any:
    """The object `qualname` of an allowed module, looked up in namespaces only (no getattr),
    and only if it was defined there, or in netchisel when `module_name` is netchisel's (a
    package re-exports its builders); an imported `os` or `importlib` is never returned."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    first, *rest = qualname.split(".")
    obj: Any = vars(module).get(first)
    for part in rest:  # nested classes only: never into a module the first name imported
        obj = vars(obj).get(part) if isinstance(obj, type) else None
    home = getattr(obj, "__module__", None)
    ours = module_name.startswith("netchisel.") and _OUR_MODULE.fullmatch(str(home))
    if home != module_name and not ours:
        return None
    return obj if isinstance(obj, type) or inspect.isfunction(obj) else None


def _well_formed(ref: str) -> bool:
    module_name, sep, qualname = ref.partition(":")
    dotted = all(p.isidentifier() for p in module_name.split("."))
    return bool(sep) and dotted and _QUALNAME.fullmatch(qualname) is not None


def _import_trusted(ref: str) -> Any:
    """A "module:name" the caller wrote (in code or on the command line): imported as asked."""
    module_name, sep, qualname = ref.partition(":")
    if not sep or not _well_formed(ref):
        raise ConfigError(f"trust: {ref!r} must look like 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"trust: cannot import {module_name!r} ({e})") from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise ConfigError(f"trust: {module_name!r} has no {qualname!r}")
    return obj


def _refusal(ref: str, kind: Kind) -> str:
    what = {"class": "module class", "builder": "builder", "function": "function"}[kind]
    name = ref.rpartition(":")[2].rpartition(".")[2]
    return (
        f"manifest names {what} {ref!r}, which is not trusted: if you trust this file, pass "
        f"netchisel.load(path, trust=[{name}]) (CLI: --trust {ref}) or mark it with "
        "@netchisel.builder"
    )
