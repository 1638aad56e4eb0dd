"""Rank selection and the swap every factorization stage shares (pure functions first).

- `rank_for_energy`: the smallest rank whose singular values keep a fraction of the squared
  spectrum (the Frobenius energy: the relative squared error of the truncation is 1 - kept);
- `rank_for_budget`: the largest rank within a parameter budget, for replacements whose size
  is linear in the rank (SVD, CP);
- `swap_all`: put every replacement into the model only after all were built, so a failure
  while building leaves the model untouched (the swap runs under `restored_on_error`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import replace_module

# Cumulative sums of squares in float64 can land a few ulps below a fraction the user wrote
# (0.7 as 0.7 - 1e-16); a tolerance this small never changes a rank that is not on the edge.
_ENERGY_TOLERANCE = 1e-12


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """The smallest r with sum(s[:r]^2) >= energy * sum(s^2) (s sorted, largest first).

    Example:
        >>> rank_for_energy(torch.tensor([2.0, 1.0, 1.0, 0.0]), 0.6)  # 4 of 6
        1
        >>> rank_for_energy(torch.tensor([2.0, 1.0, 1.0, 0.0]), 0.9)  # 4 + 1 + 1 of 6
        3
    """
    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"energy {energy} is not in (0, 1]")
    squares = singular_values.detach().double().pow(2)
    total = float(squares.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(squares, 0) / total
    hits = (kept >= energy - _ENERGY_TOLERANCE).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(squares)


def rank_for_budget(params: int, ratio: float, fixed: int, per_rank: int) -> int:
    """The largest r with fixed + r * per_rank <= floor(ratio * params); 0 if none fits.

    For replacements whose parameter count is linear in the rank (SVD, CP). Integer
    arithmetic on the floored budget, so the kept fraction never exceeds `ratio`.

    Example:
        >>> rank_for_budget(512 * 128 + 128, 0.5, 128, 512 + 128)  # an SVD'd Linear(512, 128)
        51
    """
    return max(0, (int(ratio * params) - fixed) // per_rank)


def energy_kept(singular_values: Tensor, rank: int) -> float:
    """Fraction of sum(s^2) in the first `rank` singular values.

    Example:
        >>> energy_kept(torch.tensor([2.0, 1.0, 1.0, 0.0]), 2)
        0.8333333333333334
    """
    squares = singular_values.detach().double().pow(2)
    total = float(squares.sum())
    return float(squares[:rank].sum()) / total if total else 1.0


def check_ratio(stage: str, field: str, value: float | None) -> None:
    """A fraction field must be in (0, 1]; name the stage and the field otherwise."""
    if value is not None and not 0.0 < value <= 1.0:
        raise ConfigError(f"{stage}: {field} {value} is not in (0, 1]")


def check_one_criterion(stage: str, **given: object) -> None:
    """At most one of the rank criteria may be set (none means the stage's default)."""
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{stage}: give one of {', '.join(given)}, not {' and '.join(chosen)}")


def check_recalibration(stage: str, samples: int) -> None:
    """`recalibrate_bn` is a sample count: 0 (off) or more."""
    if samples < 0:
        raise ConfigError(f"{stage}: recalibrate_bn must be >= 0 samples, got {samples}")


def swap_all(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Replace every named module; called only once all replacements exist.

    Each replacement takes the device, dtype and train/eval mode of the module it replaces.
    """
    for name, new in replacements.items():
        old = model.get_submodule(name)
        reference = next(old.parameters(), None)
        if reference is not None:
            new.to(device=reference.device, dtype=reference.dtype)
        new.train(old.training)
        replace_module(model, name, new)
