"""What an artifact's manifest may name, looked up in exact allow-lists; nothing else is imported.

A manifest is data written by whoever sent the file. It names module classes, builders and
functions as "module:qualname" strings; `load` turns each into an object only through a table:

- the torch.nn, torch.ao.nn (quantized) classes and the torch.nn.functional / torch tensor-op
  functions, listed once from torch's own namespaces by their exact name;
- netchisel's own `nn.Module` classes and `@netchisel.builder` functions (only a module whose
  name starts with "netchisel." is ever imported, and the object must be defined there);
- what the caller trusts: `load(path, trust=[MyNet, make_net])`, or `@netchisel.builder` on a
  class or function of code the caller has imported. Trusting a model class of a library of
  layers also trusts the layers it is built from (`library_modules`): for a Hugging Face
  `transformers` class, its modelling file, its configuration file (the config object is
  stored as data) and transformers' activations and pytorch_utils, never remote code
  (`transformers_modules`); for a `torchvision.models` class, its file and `torchvision.ops`
  (Conv2dNormActivation, StochasticDepth ...); for a `timm.models` class, its file and
  `timm.layers`. Only the modules of those packages that exist on disk are named, and one is
  imported only when a manifest names a class or function defined in it.

The names are compared as strings: no attribute walk through modules (which once let
"torch:os.environ.clear" reach `os`), no import of a module the manifest names.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch
from torch import nn

from netchisel.core.errors import ArtifactError, ConfigError
from netchisel.core.modules import is_trusted_builder, registered_builders

Kind = Literal["class", "builder", "function", "config"]
Trusted = object  # a class, a function, or "package.module:name"

# Packages of layers (their own modules, walked once); not torch.nn.utils or anything that
# reaches beyond layers.
_TORCH_CLASS_PACKAGES = ("torch.nn.modules", "torch.ao.nn")
_TORCH_FUNCTION_PREFIXES = ("torch.nn.functional:", "torch._C._nn:", "torch:")
_REMOTE = "transformers_modules"  # where trust_remote_code puts downloaded model code
_HF_SHARED = (
    "transformers.activations",
    "transformers.pytorch_utils",
    "transformers.generation.configuration_utils",  # a generative model's generation_config
)
_HF_CONFIG_BASES = {
    ("transformers.configuration_utils", "PreTrainedConfig"),
    ("transformers.configuration_utils", "PretrainedConfig"),
    ("transformers.generation.configuration_utils", "GenerationConfig"),
}
# The layer packages of libraries whose model classes are built from them: trusting
# `torchvision.models.resnet:ResNet` is trusting torchvision's own layers as well (ResNet is
# built from them); the user's trust in a library's model is trust in that library's code.
_LAYER_PACKAGES = {"torchvision.models.": "torchvision.ops", "timm.models.": "timm.layers"}
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
    library_modules: set[str] = field(default_factory=set)
    configs: dict[tuple[str, str], Any] = field(default_factory=dict)  # decoded, shared

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
            if isinstance(obj, type):
                allowed.library_modules.update(library_modules_of(obj))
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
        module_name, _, qualname = ref.partition(":")
        if kind in ("function", "config"):
            # Attribute values: torch's functions and layer classes (a `norm_layer` kept to
            # build layers with), the caller's, and those of trusted library layer modules.
            found = torch_functions().get(ref) or torch_classes().get(ref)
            if found is None and module_name in self.library_modules:
                # Only classes: a library's functions include downloaders (timm.models._hub),
                # which an attribute the model calls must never become.
                found = _defined_in(module_name, qualname)
                found = found if isinstance(found, type) else None
            return found
        registered = registered_builders()
        if ref in registered:
            return registered[ref]
        found = torch_classes().get(ref) or torch_functions().get(ref)
        if found is not None:
            return found
        if _OUR_MODULE.fullmatch(module_name) or module_name in self.library_modules:
            return _defined_in(module_name, qualname)
        return None


def library_modules_of(cls: type) -> set[str]:
    """The modules whose layers a trusted library model class is built from (see the module
    docstring); none for a class of any other package.

    Example:
        >>> library_modules_of(nn.Linear)
        set()
    """
    module = cls.__module__
    if module.startswith(_REMOTE):
        return set()
    if module.startswith("transformers."):
        config = getattr(getattr(cls, "config_class", None), "__module__", None)
        configs = (
            {config} if isinstance(config, str) and config.startswith("transformers.") else set()
        )
        return {module, *configs, *_HF_SHARED}
    for prefix, package in _LAYER_PACKAGES.items():
        if module.startswith(prefix):
            # timm's private model helpers (timm.models._efficientnet_blocks) are layers too.
            helpers = {m for m in _package_modules("timm.models") if m.startswith("timm.models._")}
            return {
                module,
                *_package_modules(package),
                *(helpers if package == "timm.layers" else ()),
            }
    return set()


def _package_modules(package: str) -> set[str]:
    """The names of an imported package and of the modules directly in it, read from its
    directory (nothing is imported: a package not yet imported contributes nothing)."""
    root = sys.modules.get(package)
    path = getattr(root, "__path__", None)
    if path is None:
        return set()
    return {package} | {info.name for info in pkgutil.iter_modules(path, f"{package}.")}


def _fits(obj: Any, kind: Kind) -> bool:
    is_module_class = isinstance(obj, type) and issubclass(obj, nn.Module)
    if kind == "class":
        return is_module_class
    if kind == "builder":
        return is_module_class or is_trusted_builder(obj)
    if kind == "config":
        return isinstance(obj, type) and is_hf_config_class(obj)
    return callable(obj) and (not isinstance(obj, type) or is_module_class)


def is_hf_config_class(cls: type) -> bool:
    """A Hugging Face configuration class (a subclass of transformers' PreTrainedConfig or
    GenerationConfig), recognised without importing transformers.

    Example:
        >>> is_hf_config_class(dict)
        False
    """
    return any((base.__module__, base.__name__) in _HF_CONFIG_BASES for base in cls.__mro__)


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
    what = {
        "class": "module class",
        "builder": "builder",
        "function": "function",
        "config": "configuration class",
    }[kind]
    name = ref.rpartition(":")[2].rpartition(".")[2]
    return (
        f"manifest names {what} {ref!r}, which is not trusted: if you trust this file, pass "
        f"netchisel.load(path, trust=[{name}]) (CLI: --trust {ref}) or mark it with "
        "@netchisel.builder"
    )
