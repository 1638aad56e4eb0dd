"""Masks: which entries of a parameter are held fixed (pruned to zero, or frozen at a value).

Masks live on the model (not in its state dict), so every training loop re-applies them after
each optimizer step (`fit` does) and later stages keep what earlier ones pruned. Artifacts do
not store masks: a pruned weight's zeros are stored by a sparse codec and the mask is rebuilt
from it on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.core.bits import pack_flags, unpack_flags

_MASKS_ATTR = "_netchisel_masks"


@dataclass(frozen=True)
class Mask:
    """`keep` is True where the parameter is free; elsewhere it is held at `fill` (zero if None).

    `keep` is stored packed, one bit per entry (`packed`, ceil(n / 8) bytes, `core.bits`
    order), because a pruned model holds a mask for every pruned weight: as bools they would
    add a byte per weight, a quarter of a float32 model. Reading `keep` unpacks a fresh bool
    tensor (one byte per entry, freed with it); nothing keeps an unpacked copy.

    Example:
        >>> mask = Mask.of(torch.tensor([[True, False, True]]))
        >>> mask.packed.tolist(), mask.keep.tolist()
        ([5], [[True, False, True]])
    """

    packed: Tensor
    shape: tuple[int, ...]
    fill: Tensor | None = None

    @classmethod
    def of(cls, keep: Tensor, fill: Tensor | None = None) -> Mask:
        """The mask that keeps the True entries of `keep` (packed on `keep`'s device)."""
        return cls(pack_flags(keep.to(torch.bool)), tuple(keep.shape), fill)

    @property
    def keep(self) -> Tensor:
        """True where the parameter is free, as a bool tensor of `shape` (unpacked now)."""
        return unpack_flags(self.packed, math.prod(self.shape)).view(self.shape)


def set_mask(model: nn.Module, name: str, keep: Tensor, fill: Tensor | None = None) -> None:
    """Hold parameter `name` of `model` at zero (or `fill`) where `keep` is False, from now on.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> set_mask(net, "weight", torch.tensor([[True, False], [False, True]]))
        >>> int((net.weight == 0).sum())
        2
    """
    param = model.get_parameter(name)
    if keep.shape != param.shape:
        raise ValueError(f"mask for {name} has shape {tuple(keep.shape)}, not {tuple(param.shape)}")
    masks = dict(masks_of(model))
    masks[name] = Mask.of(keep.to(device=param.device), fill)
    object.__setattr__(model, _MASKS_ATTR, masks)
    apply_masks_(model)


def masks_of(model: nn.Module) -> dict[str, Mask]:
    """The masks set on `model`, by parameter name."""
    found: dict[str, Mask] = getattr(model, _MASKS_ATTR, {})
    return found


def clear_masks(model: nn.Module) -> None:
    """Forget every mask (the parameters keep their current values)."""
    object.__setattr__(model, _MASKS_ATTR, {})


def forget_masks(model: nn.Module, modules: set[str]) -> None:
    """Forget the masks of the parameters of the named modules (after they were replaced)."""
    kept = {n: m for n, m in masks_of(model).items() if n.rpartition(".")[0] not in modules}
    object.__setattr__(model, _MASKS_ATTR, kept)


@torch.no_grad()
def apply_masks_(model: nn.Module) -> None:
    """Put every masked entry back to its held value (after an optimizer step)."""
    for name, mask in masks_of(model).items():
        param = model.get_parameter(name)
        keep = mask.keep  # unpacked for this multiply only
        if mask.fill is None:
            param.mul_(keep)
        else:
            param.copy_(torch.where(keep, param, mask.fill))


def sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """Fraction of exactly-zero entries over the named parameters (default: all).

    Example:
        >>> net = nn.Linear(2, 2, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> sparsity(net)
        1.0
    """
    params = dict(model.named_parameters())
    chosen = [params[n] for n in (names if names is not None else list(params))]
    total = sum(p.numel() for p in chosen)
    zeros = sum(int((p == 0).sum()) for p in chosen)
    return zeros / total if total else 0.0
