"""Parameter counts and bytes: in memory by dtype, and on disk as the saved artifact."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from netchisel.core.errors import ModelError, first_line
from netchisel.core.modules import prepare_kernels


@dataclass(frozen=True)
class SizeStats:
    """Counts of one model. `bytes_on_disk` is the real size of its saved artifact."""

    params: int
    params_nonzero: int
    params_by_module: dict[str, int]
    bytes_in_memory: int
    bytes_by_dtype: dict[str, int]
    bytes_on_disk: int | None


def count_params(model: nn.Module) -> tuple[int, int, dict[str, int]]:
    """(total, nonzero, inclusive per-module totals); tied parameters count once.

    Quantized layers hold their weights as integer buffers, not parameters; a module with a
    `dequantized_weight()` method counts those weight values too, so a quantized model has
    the parameter count of the model it came from.

    Example:
        >>> count_params(nn.Linear(3, 2))[0]
        8
    """
    quantized = {
        id(m): m.dequantized_weight()  # type: ignore[operator]
        for m in model.modules()
        if callable(getattr(m, "dequantized_weight", None))
    }

    def weights(m: nn.Module) -> list[torch.Tensor]:
        params = {id(p): p.detach() for p in m.parameters()}
        return [*params.values(), *(quantized[id(s)] for s in m.modules() if id(s) in quantized)]

    everything = weights(model)
    total = sum(w.numel() for w in everything)
    nonzero = sum(int(torch.count_nonzero(w)) for w in everything)
    by_module = {name: sum(w.numel() for w in weights(m)) for name, m in model.named_modules()}
    return total, nonzero, by_module


def memory_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held in memory, by dtype: parameters, buffers and the kernel caches of netchisel's
    layers (a quantized layer's repacked weight, a clustered layer's gathered float weight),
    built first if missing. Shared storage counts once. Opaque kernel layouts (fbgemm's and
    oneDNN's packed weights) have no storage torch can measure and are not counted.

    Example:
        >>> memory_bytes(nn.Linear(3, 2))
        {'float32': 32}
    """
    prepare_kernels(model)
    caches = [
        leaf
        for module in model.modules()
        for key, value in vars(module).items()
        if key.startswith("_netchisel_") and key.endswith("_cache")
        for leaf in tree_flatten(value)[0]
        if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided
    ]
    seen: set[int] = set()
    out: dict[str, int] = {}
    for t in [*model.parameters(), *model.buffers(), *caches]:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        dtype = str(t.dtype).removeprefix("torch.")
        out[dtype] = out.get(dtype, 0) + storage.nbytes()
    return out


def disk_bytes(model: nn.Module) -> int | None:
    """Save the model as an artifact in a temp dir and return the bytes `load` would read;
    None, with a warning saying why, for a model an artifact cannot hold (a class defined in
    `__main__`, say): the other measurements still stand, and no size is made up.

    Example:
        >>> disk_bytes(nn.Linear(3, 2)) > 32
        True
    """
    from netchisel.artifact.store import artifact_bytes, save

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return artifact_bytes(save(model, f"{tmp}/model"))
        except ModelError as e:
            warnings.warn(f"bytes_on_disk not measured: {first_line(e)}", stacklevel=3)
            return None


def size_stats(model: nn.Module, on_disk: bool = True) -> SizeStats:
    """All size numbers of `model`.

    Example:
        >>> size_stats(nn.Linear(3, 2), on_disk=False).bytes_in_memory
        32
    """
    total, nonzero, by_module = count_params(model)
    by_dtype = memory_bytes(model)
    return SizeStats(
        params=total,
        params_nonzero=nonzero,
        params_by_module=by_module,
        bytes_in_memory=sum(by_dtype.values()),
        bytes_by_dtype=by_dtype,
        bytes_on_disk=disk_bytes(model) if on_disk else None,
    )
