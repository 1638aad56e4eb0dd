"""Turn scores into keep-masks: per layer, per output row, N of every M, or one global threshold.

Pure functions on tensors; ties are broken by position so results repeat exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from netchisel.core.errors import ConfigError


def keep_lowest_pruned(scores: Tensor, sparsity: float) -> Tensor:
    """Keep all but the `round(sparsity * n)` lowest-scoring entries.

    Example:
        >>> keep_lowest_pruned(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.5).tolist()
        [True, False, False, True]
    """
    flat = scores.reshape(-1)
    drop = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        keep[torch.argsort(flat, stable=True)[:drop]] = False
    return keep.reshape(scores.shape)


def keep_per_row(scores: Tensor, sparsity: float) -> Tensor:
    """The same fraction pruned in every output row (dim 0), as Wanda compares weights.

    Example:
        >>> keep_per_row(torch.tensor([[1.0, 2.0], [4.0, 3.0]]), 0.5).tolist()
        [[False, True], [True, False]]
    """
    rows = scores.reshape(scores.shape[0], -1)
    drop = round(sparsity * rows.shape[1])
    keep = torch.ones_like(rows, dtype=torch.bool)
    if drop:
        order = torch.argsort(rows, dim=1, stable=True)[:, :drop]
        keep.scatter_(1, order, False)
    return keep.reshape(scores.shape)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """ "unstructured" -> None; "2:4" -> (2, 4) (keep 2 of every 4); else a ConfigError."""
    if pattern == "unstructured":
        return None
    n, sep, m = pattern.partition(":")
    if not sep or not n.isdigit() or not m.isdigit():
        raise ConfigError(f"pattern {pattern!r}: use 'unstructured' or 'N:M' such as '2:4'")
    if not 0 < int(n) < int(m):
        raise ConfigError(f"pattern {pattern!r}: N:M needs 0 < N < M (keep N of every M)")
    return int(n), int(m)


def keep_n_of_m(scores: Tensor, n: int, m: int, layer: str = "") -> Tensor:
    """Keep the `n` highest of every `m` consecutive inputs of each output (dim 1 onward).

    Example:
        >>> keep_n_of_m(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4).tolist()
        [[True, False, True, False]]
    """
    rows = scores.reshape(scores.shape[0], -1)
    if rows.shape[1] % m:
        raise ConfigError(
            f"layer {layer or '?'} has {rows.shape[1]} inputs per output, not a multiple of {m}: "
            "exclude it or choose another N:M"
        )
    groups = rows.reshape(rows.shape[0], -1, m)
    order = torch.argsort(groups, dim=2, stable=True, descending=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., :n], True)
    return keep.reshape(scores.shape)


def checked_pattern(stage: str, pattern: str, sparsity: float) -> tuple[int, int] | None:
    """`parse_pattern` for a stage's config, which also refuses a `sparsity` the N:M pattern
    contradicts. The default 0.5 counts as unset; 1 - N/M is compared to three decimals.

    Example:
        >>> checked_pattern("s", "1:3", 0.667)
        (1, 3)
    """
    try:
        nm = parse_pattern(pattern)
    except ConfigError as e:
        raise ConfigError(f"{stage}.pattern: {e}") from None
    if nm is not None and sparsity != 0.5:
        n, m = nm
        if not math.isclose(sparsity, 1 - n / m, abs_tol=5e-4):
            raise ConfigError(
                f"{stage}: pattern {pattern!r} prunes {m - n} of every {m}, not sparsity "
                f"{sparsity}: drop sparsity"
            )
    return nm


def check_n_of_m(inputs: dict[str, int], m: int, stage: str) -> None:
    """One ConfigError naming every layer whose inputs per output are not a multiple of `m`.

    Example:
        >>> check_n_of_m({"fc1": 8, "fc2": 4}, 4, "s")
    """
    bad = [f"{name} ({n})" for name, n in inputs.items() if n % m]
    if bad:
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        raise ConfigError(
            f"{stage}: N:M with M={m} needs inputs per output in multiples of {m}; "
            f"{len(bad)} layers are not: {', '.join(bad[:6])}{more}: exclude them or choose "
            "another N:M"
        )


def keep_global(scores: dict[str, Tensor], sparsity: float, min_keep: float) -> dict[str, Tensor]:
    """One threshold over all layers, but every layer keeps at least `min_keep` of its entries.

    The `min_keep` floor is met first; the rest of the budget goes to the globally highest
    scores, so the total pruned is exactly `round(sparsity * total)`.

    Example:
        >>> scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([9.0, 8.0])}
        >>> masks = keep_global(scores, 0.5, 0.5)
        >>> masks["a"].tolist(), masks["b"].tolist()
        ([False, True], [True, False])
    """
    total = sum(s.numel() for s in scores.values())
    keep_total = total - round(sparsity * total)
    flat = {name: s.reshape(-1) for name, s in scores.items()}
    keep = {name: torch.zeros_like(s, dtype=torch.bool) for name, s in flat.items()}
    for name, s in flat.items():
        floor = min(s.numel(), math.ceil(min_keep * s.numel()))
        keep[name][torch.argsort(s, descending=True, stable=True)[:floor]] = True
    kept = sum(int(k.sum()) for k in keep.values())
    if kept > keep_total:
        raise ConfigError(
            f"sparsity {sparsity} with min_keep {min_keep} is impossible: the per-layer floor "
            "already keeps more; lower min_keep"
        )
    names = list(flat)
    candidates = torch.cat([flat[n].masked_fill(keep[n], -math.inf) for n in names])
    extra = keep_total - kept
    if extra:
        chosen = torch.argsort(candidates, descending=True, stable=True)[:extra]
        all_keep = torch.cat([keep[n] for n in names])
        all_keep[chosen] = True
        sizes = [flat[n].numel() for n in names]
        for name, part in zip(names, torch.split(all_keep, sizes), strict=True):
            keep[name] = part
    return {name: keep[name].reshape(scores[name].shape) for name in names}
