"""Which Linear layers a weight-quantization stage changes, and the build-then-swap that changes
them: every replacement is built before any is swapped in, so a failure while building leaves
the model as it was, and the report says which layers run integer kernels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar, Protocol

from torch import nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import forget_masks
from netchisel.core.modules import replace_module, select_modules
from netchisel.quantize.formats.int8 import Int8Embedding

# Layers that hold weights but have no weight-only kernel here; they are reported, not touched.
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ChoosesLinears(Protocol):
    """The fields of a config that says which Linear layers (and embeddings) it quantizes."""

    NAME: ClassVar[str]

    @property
    def layers(self) -> tuple[str, ...] | None: ...

    @property
    def exclude(self) -> tuple[str, ...]: ...

    @property
    def embeddings(self) -> bool: ...


def chosen_linears(
    model: nn.Module,
    layers: tuple[str, ...] | None,
    exclude: tuple[str, ...],
    stage: str,
    embeddings: bool = False,
) -> dict[str, nn.Linear]:
    """The Linear layers a quantization stage works on; warns once about layers it skips.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(chosen_linears(net, None, ("2",), "demo"))
        ['0']
    """
    chosen = select_modules(model, (nn.Linear,), layers, exclude)
    if not chosen:
        raise ConfigError(f"{stage}: the model has no Linear layer to quantize")
    skip_types = CONVOLUTIONS if embeddings else (*CONVOLUTIONS, nn.Embedding)
    skipped = [
        f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, skip_types)
    ]
    if skipped:
        shown = ", ".join(skipped[:6]) + (
            f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        )
        warnings.warn(
            f"{stage}: no kernel for these layers, they stay in float: {shown} "
            "(quantize.static_int8 covers convolutions; embeddings: true stores tables as int8)",
            stacklevel=3,
        )
    return {n: m for n, m in chosen.items() if isinstance(m, nn.Linear)}


def swap_linears(
    model: nn.Module,
    config: ChoosesLinears,
    ctx: Context,
    make: Callable[[str, nn.Linear], nn.Module],
) -> dict[str, nn.Module]:
    """Build every replacement first, then swap them in and record what changed.

    The new modules take the model's train/eval mode.
    """
    stage = config.NAME
    linears = chosen_linears(model, config.layers, config.exclude, stage, config.embeddings)
    new = {name: make(name, linear) for name, linear in linears.items()}
    if config.embeddings:
        tables = select_modules(model, (nn.Embedding,), None, ())
        new.update({n: Int8Embedding.from_float(m) for n, m in tables.items()})  # type: ignore[arg-type]
    for name, module in new.items():
        replace_module(model, name, module.train(model.training))
    # A pruned layer's zeros are now in its integers; its mask names a weight that is gone.
    forget_masks(model, set(new))
    simulated = sorted(n for n, m in new.items() if getattr(m, "simulated", False))
    read = read_as_weights(model, new)
    notes = [
        f"{len(simulated)} layers have no integer kernel at their bit width: stored packed, "
        "computed in float, no speed-up"
        if simulated
        else "all quantized layers run integer kernels",
    ]
    if read:
        notes.append(
            f"{len(read)} nn.MultiheadAttention out_proj layers are stored quantized but computed "
            f"in float (the attention reads out_proj.weight): {', '.join(read[:4])}"
        )
    ctx.record(
        quantized_layers=len(new),
        layer_bits={n: int(getattr(m, "bits", 8)) for n, m in new.items()},
        note="; ".join(notes),
    )
    return new


def read_as_weights(model: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """The layers `nn.MultiheadAttention` never calls: it passes `out_proj.weight` to its fused
    function, so a quantized out_proj computes in float from its dequantized weight
    (`formats/weight_view.py`).

    Example:
        >>> mha = nn.Sequential(nn.MultiheadAttention(8, 2))
        >>> read_as_weights(mha, {"0.out_proj": nn.Linear(8, 8)})
        ['0.out_proj']
    """
    return sorted(
        name
        for name in layers
        if "." in name
        and isinstance(model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention)
    )
