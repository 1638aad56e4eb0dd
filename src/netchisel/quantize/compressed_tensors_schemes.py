"""A compressed-tensors `quantization_config`, read as hostile data: the schemes netchisel
has a module for, which Linear each applies to, and one `ArtifactError` line for the rest.

- int 4 bits, `group` 32-256, symmetric or not, `pack-quantized`: `Int4WeightOnlyLinear`;
- int 8 bits, `channel`, symmetric, `pack-quantized`: `Int8WeightOnlyLinear`;
- any other int 4 or 8 bits `tensor` / `channel` / `group` (any size), symmetric or not,
  `pack-quantized`: `PackedLinear` (no kernel: unpacked to float once, as exported);
- int 8 `channel`/`tensor` weights with dynamic int 8 `token`/`tensor` input activations,
  `int-quantized` (W8A8): `DynamicInt8Linear`.

Targets and `ignore` entries are matched as the package matches them: a class name of the
module (or one of its bases), `re:` and a regular expression matched at the start of the
module's name, or the exact name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from netchisel.core.errors import ArtifactError
from netchisel.quantize.compressed_tensors_sparse import FORMATS as SPARSE_FORMATS
from netchisel.quantize.formats.kernels import INT4_GROUP_SIZES

_MAX_PATTERN = 512  # characters: a target is a layer name or a short regex, never a program


@dataclass(frozen=True)
class Scheme:
    """One config group: its format, weight bits/strategy, and dynamic input activations
    (`per_token` / `per_tensor`, or None for weight-only).

    Example:
        >>> Scheme("g", ("Linear",), "pack-quantized", 4, True, "group", 32, None).module
        'int4'
    """

    name: str
    targets: tuple[str, ...]
    format: str
    bits: int
    symmetric: bool
    strategy: str
    group_size: int | None
    activations: str | None

    @property
    def module(self) -> str:
        """Which netchisel module holds a layer of this scheme: int4 or int8 (torch's
        kernels), dynamic_int8, or packed (every other weight-only scheme)."""
        if self.activations is not None:
            return "dynamic_int8"
        if self.bits == 4 and self.strategy == "group" and self.group_size in INT4_GROUP_SIZES:
            return "int4"
        if self.bits == 8 and self.strategy == "channel" and self.symmetric:
            return "int8"
        return "packed"


def read_quantization_config(meta: dict[str, Any]) -> tuple[list[Scheme], tuple[str, ...]]:
    """The schemes (in config order) and `ignore` entries of a checkpoint's config.json.

    Example:
        >>> schemes, ignore = read_quantization_config({"quantization_config": {
        ...     "quant_method": "compressed-tensors", "format": "pack-quantized",
        ...     "quantization_status": "compressed", "ignore": ["lm_head"],
        ...     "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
        ...         "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
        ...         "group_size": 128}}}}})
        >>> schemes[0].module, ignore
        ('int4', ('lm_head',))
    """
    qc = meta.get("quantization_config")
    if not isinstance(qc, dict):
        raise ArtifactError(
            "config.json has no quantization_config object: not a quantized checkpoint"
        )
    if qc.get("quant_method") != "compressed-tensors":
        raise ArtifactError(
            f"quantization_config.quant_method is {qc.get('quant_method')!r}, not "
            "'compressed-tensors'"
        )
    if qc.get("quantization_status", "compressed") != "compressed":
        raise ArtifactError(
            f"quantization_status {qc.get('quantization_status')!r}: only 'compressed' "
            "checkpoints hold integers (load the others with transformers)"
        )
    for key in ("transform_config", "kv_cache_scheme"):
        if qc.get(key):
            raise ArtifactError(f"quantization_config.{key} is set; netchisel reads no {key}")
    top_format = qc.get("format")
    groups = qc.get("config_groups")
    if groups is None and qc.get("sparsity_config"):
        return [], ()  # sparse only: `read_sparsity_config` reads it
    if not isinstance(groups, dict) or not groups:
        raise ArtifactError("quantization_config.config_groups must be a non-empty object")
    schemes = [_scheme(str(name), group, top_format) for name, group in groups.items()]
    return schemes, _patterns(qc.get("ignore") or [], "quantization_config.ignore")


def read_sparsity_config(meta: dict[str, Any]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The `sparsity_config` of a checkpoint's config.json: format, targets and ignore; the
    format is "" when there is none.

    Example:
        >>> read_sparsity_config({"quantization_config": {"sparsity_config": {
        ...     "format": "sparse-24-bitmask", "targets": ["Linear"], "ignore": ["lm_head"]}}})
        ('sparse-24-bitmask', ('Linear',), ('lm_head',))
    """
    qc = meta.get("quantization_config")
    sc = qc.get("sparsity_config") if isinstance(qc, dict) else None
    if not sc:
        return "", (), ()
    if not isinstance(sc, dict):
        raise ArtifactError("quantization_config.sparsity_config must be an object")
    fmt = sc.get("format")
    if fmt == "dense":
        return "", (), ()
    if fmt not in SPARSE_FORMATS:
        raise ArtifactError(
            f"sparsity_config.format {fmt!r} is not read (read: {', '.join(SPARSE_FORMATS)})"
        )
    targets = _patterns(sc.get("targets") or ["Linear"], "sparsity_config.targets")
    return str(fmt), targets, _patterns(sc.get("ignore") or [], "sparsity_config.ignore")


def scheme_of(
    name: str, module: nn.Module, schemes: list[Scheme], ignore: tuple[str, ...]
) -> Scheme | None:
    """The scheme that applies to the Linear `name`, or None when it is ignored or no
    group targets it.

    Example:
        >>> s = Scheme("g", ("re:.*proj$",), "pack-quantized", 4, True, "group", 32, None)
        >>> scheme_of("layers.0.q_proj", nn.Linear(2, 2), [s], ("lm_head",)).name
        'g'
    """
    if matches(name, module, ignore):
        return None
    return next((s for s in schemes if matches(name, module, s.targets)), None)


def matches(name: str, module: nn.Module, targets: tuple[str, ...]) -> bool:
    """Whether one of `targets` (class names, `re:` patterns, exact names) names `module`."""
    classes = {cls.__name__ for cls in type(module).__mro__}
    for target in targets:
        if target.startswith("re:"):
            if re.match(target[3:], name):
                return True
        elif target == name or target in classes:
            return True
    return False


def _scheme(name: str, group: Any, top_format: Any) -> Scheme:
    where = f"config_groups.{name}"
    if not isinstance(group, dict):
        raise ArtifactError(f"{where} must be an object")
    targets = _patterns(group.get("targets"), f"{where}.targets")
    if not targets:
        raise ArtifactError(f"{where}.targets must list at least one target")
    fmt = group.get("format") or top_format
    weights = group.get("weights")
    if not isinstance(weights, dict):
        raise ArtifactError(f"{where}.weights must be an object (netchisel reads weight schemes)")
    bits = _int(weights.get("num_bits"), f"{where}.weights.num_bits")
    symmetric = weights.get("symmetric", True)
    strategy = weights.get("strategy")
    group_size = weights.get("group_size")
    if weights.get("type", "int") != "int" or weights.get("dynamic", False) is not False:
        raise ArtifactError(f"{where}.weights must be static int (type int, dynamic false)")
    if weights.get("actorder") == "group" or weights.get("block_structure") is not None:
        raise ArtifactError(
            f"{where}.weights: actorder 'group' (g_idx) and block strategies are not read"
        )
    if group.get("output_activations") is not None:
        raise ArtifactError(f"{where}.output_activations is set; netchisel reads none")
    activations = _activations(group.get("input_activations"), where)
    if not isinstance(symmetric, bool):
        raise ArtifactError(f"{where}.weights.symmetric must be true or false")
    if fmt == "pack-quantized" and activations is None and bits in (4, 8):
        if strategy not in ("tensor", "channel", "group"):
            raise ArtifactError(
                f"{where}.weights.strategy {strategy!r}: netchisel reads tensor, channel or group"
            )
        size = _int(group_size, f"{where}.weights.group_size") if strategy == "group" else None
        if size is not None and size < 1:
            raise ArtifactError(f"{where}.weights.group_size must be >= 1, got {size}")
        return Scheme(name, targets, fmt, bits, symmetric, str(strategy), size, None)
    if fmt == "int-quantized" and activations is not None and bits == 8:
        if not symmetric or strategy not in ("channel", "tensor"):
            raise ArtifactError(
                f"{where}: W8A8 weights must be symmetric, strategy channel or tensor"
            )
        return Scheme(name, targets, fmt, 8, True, str(strategy), None, activations)
    raise ArtifactError(
        f"{where}: format {fmt!r} with {bits}-bit {strategy!r} weights"
        f"{' and input activations' if activations else ''} has no netchisel module (read: "
        "pack-quantized int 4 or 8 bits, int-quantized W8A8)"
    )


def _activations(args: Any, where: str) -> str | None:
    if args is None:
        return None
    ok = (
        isinstance(args, dict)
        and args.get("num_bits") == 8
        and args.get("type", "int") == "int"
        and args.get("symmetric", True) is True
        and args.get("dynamic") is True
        and args.get("strategy") in ("token", "tensor")
    )
    if not ok:
        raise ArtifactError(
            f"{where}.input_activations: netchisel runs dynamic symmetric int8 per token or "
            "per tensor only"
        )
    return "per_token" if args["strategy"] == "token" else "per_tensor"


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"{where} must be an integer, got {value!r}")
    return value


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArtifactError(f"{where} must be a list of strings")
    for pattern in value:
        if len(pattern) > _MAX_PATTERN:
            raise ArtifactError(
                f"{where}: an entry is {len(pattern)} characters (max {_MAX_PATTERN})"
            )
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise ArtifactError(
                    f"{where}: {pattern!r} is not a regular expression ({e})"
                ) from None
    return tuple(value)
