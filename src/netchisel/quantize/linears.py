"""Which Linear layers a weight-quantization stage changes, and the build-then-swap that changes
them: every replacement is built before any is swapped in, so a failure while building leaves
the model as it was, and the report says which layers run integer kernels.

Hugging Face's Conv1D (GPT-2's projections) counts as a Linear (`core.conv1d`): chosen by the
same `layers`/`exclude` patterns, swapped for its equal `nn.Linear` only once chosen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar, Protocol

from torch import nn

from netchisel.core.context import Context
from netchisel.core.conv1d import (
    FROM_CONV1D,
    conv1d_types,
    is_conv1d,
    linear_from_conv1d,
    with_conv1d_as_linear_,
)
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

    A chosen Hugging Face Conv1D is replaced in `model` by its equal `nn.Linear`
    (`core.conv1d`), which is returned; a stage run on such a model runs inside a rollback
    guard (`core.registry.Stage`), so a stage that fails puts the Conv1D back.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(chosen_linears(net, None, ("2",), "demo"))
        ['0']
    """
    chosen = chosen_layers(model, layers, exclude, stage, embeddings, stacklevel=4)
    return with_conv1d_as_linear_(model, chosen)  # type: ignore[return-value]


def chosen_layers(
    model: nn.Module,
    layers: tuple[str, ...] | None,
    exclude: tuple[str, ...],
    stage: str,
    embeddings: bool = False,
    stacklevel: int = 3,
) -> dict[str, nn.Module]:
    """`chosen_linears` without the swap: the chosen Linear and Conv1D layers as they are.

    The warning about skipped layers points `stacklevel` frames up (the stage's caller).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(chosen_layers(net, ("2",), (), "demo"))
        ['2']
    """
    chosen = select_modules(model, (nn.Linear, *conv1d_types(model)), layers, exclude)
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
            stacklevel=stacklevel,
        )
    return chosen


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
    chosen = chosen_layers(model, config.layers, config.exclude, stage, config.embeddings)
    # A Conv1D is built from its equal Linear, made here and dropped: nothing in the model
    # changes before every replacement is built.
    new = {name: make(name, _as_linear(layer)) for name, layer in chosen.items()}
    for name, layer in chosen.items():  # what the export reads: this layer's weight was (in, out)
        if is_conv1d(layer) or getattr(layer, FROM_CONV1D, False):
            for module in new[name].modules():  # an input-scale wrapper and the layer inside it
                setattr(module, FROM_CONV1D, True)
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


def _as_linear(layer: nn.Module) -> nn.Linear:
    return linear_from_conv1d(layer) if is_conv1d(layer) else layer  # type: ignore[return-value]


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
