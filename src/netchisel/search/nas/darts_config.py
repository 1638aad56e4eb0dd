"""What a DARTS search is given (`DartsConfig`) and what it returns (`DartsResult`).

Kept apart from the search loop so a recipe or the CLI can build, validate and print a config,
and rebuild a derived model from a result, without importing the training code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.search.nas.cell_ops import CELL_OPS, check_dims
from netchisel.search.nas.cells import cell_net

Mitigation = Literal["none", "early_stop", "skip_limit", "both"]
MITIGATIONS = ("none", "early_stop", "skip_limit", "both")


@dataclass(frozen=True)
class DartsConfig:
    """A DARTS search: network, schedule, optimisers, collapse mitigation and cost penalty.

    - `epochs` x `steps_per_epoch` steps (None: one pass over the weights' half of train);
      each step is one architecture step then one weight step, on `batch_size` samples.
    - `order` 1 (first order: alpha follows the validation gradient at the current weights)
      or 2 (the unrolled gradient with the finite-difference Hessian-vector product).
    - Network: `nodes`, `width`, `cells_per_stage`, `reductions` as for `cell_net`; `ops` the
      cell space's ops (`none` is added); `dims` 1 or 2, None to read it from the data.
    - Weights: SGD (`w_lr` cosine to `w_lr_min`, momentum 0.9, `w_weight_decay`, grad norm
      clipped at 5). Alphas: Adam(`alpha_lr`, betas (0.5, 0.999), `alpha_weight_decay`), the
      settings of Liu et al. 2019.
    - `mitigation`: "early_stop" (DARTS-ES: stop when the mean dominant eigenvalue of the last
      `es_window` epochs exceeds `es_factor` times that of the `es_window` epochs before, and
      return the cell of `es_window` epochs earlier), "skip_limit" (P-DARTS: at most
      `max_skips` of the `limited_ops` in the derived normal cell; ("skip",) is P-DARTS,
      ("skip", "max3", "avg3") caps every parameter-free op), "both" or "none".
    - Cost: `cost_lambda` * max(0, expected cost - `macs_budget`) / cost at uniform alphas,
      `cost` "macs" (exact) or "latency" (measured); 0 turns it off.
    - `eigen_iterations`: power iterations per epoch for the eigenvalue (0: not tracked).

    Example:
        >>> DartsConfig(epochs=2, order=2, width=4, nodes=2).with_changes(seed=1).seed
        1
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    order: Literal[1, 2] = 1
    nodes: int = 3
    width: int = 8
    cells_per_stage: int = 1
    reductions: int = 2
    ops: tuple[str, ...] = CELL_OPS
    dims: int | None = None
    batch_size: int = 64
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    alpha_lr: float = 3e-4
    alpha_weight_decay: float = 1e-3
    mitigation: Mitigation = "none"
    max_skips: int = 2
    limited_ops: tuple[str, ...] = ("skip",)
    es_window: int = 5
    es_factor: float = 1.3
    eigen_iterations: int = 10
    cost: Literal["macs", "latency"] = "macs"
    cost_lambda: float = 0.0
    macs_budget: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "ops", tuple(self.ops))  # a YAML list reads as a list
        object.__setattr__(self, "limited_ops", tuple(self.limited_ops))
        counts = {"epochs": self.epochs, "nodes": self.nodes, "width": self.width}
        counts |= {"cells_per_stage": self.cells_per_stage, "batch_size": self.batch_size}
        counts |= {"es_window": self.es_window}
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"DartsConfig {name} must be an integer >= 1, got {value!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(
                f"DartsConfig steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}"
            )
        if self.order not in (1, 2):
            raise ConfigError(f"DartsConfig order must be 1 or 2, got {self.order!r}")
        if self.mitigation not in MITIGATIONS:
            raise ConfigError(
                f"DartsConfig mitigation must be one of {', '.join(MITIGATIONS)}, "
                f"got {self.mitigation!r}"
            )
        if self.cost not in ("macs", "latency"):
            raise ConfigError(f"DartsConfig cost must be 'macs' or 'latency', got {self.cost!r}")
        for name in ("w_lr", "alpha_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"DartsConfig {name} must be > 0, got {getattr(self, name)}")
        if self.cost_lambda < 0 or self.max_skips < 0 or self.reductions < 0:
            raise ConfigError(
                "DartsConfig cost_lambda, max_skips and reductions must be >= 0, got "
                f"{self.cost_lambda}, {self.max_skips}, {self.reductions}"
            )
        if self.es_factor <= 1 or self.eigen_iterations < 0:
            raise ConfigError(
                "DartsConfig needs es_factor > 1 and eigen_iterations >= 0, got "
                f"{self.es_factor}, {self.eigen_iterations}"
            )
        if self.dims is not None:
            check_dims(self.dims, "DartsConfig")
        if not self.limited_ops or any(op not in CELL_OPS for op in self.limited_ops):
            raise ConfigError(
                f"DartsConfig limited_ops must name cell ops ({', '.join(CELL_OPS)}), "
                f"got {list(self.limited_ops)}"
            )
        if self.mitigation in ("early_stop", "both") and self.eigen_iterations == 0:
            raise ConfigError("DartsConfig mitigation 'early_stop' needs eigen_iterations >= 1")
        if self.early_stop and self.epochs < 2 * self.es_window:
            raise ConfigError(
                f"DartsConfig mitigation {self.mitigation!r}: DARTS-ES compares two windows of "
                f"es_window={self.es_window} epochs, so it needs epochs >= {2 * self.es_window} "
                f"(got {self.epochs}): lower es_window, or use mitigation 'skip_limit'"
            )

    def with_changes(self, **changes: Any) -> DartsConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def early_stop(self) -> bool:
        """Whether the eigenvalue early stop (DARTS-ES) is on."""
        return self.mitigation in ("early_stop", "both")

    @property
    def skip_limit(self) -> int | None:
        """The most skips the derived normal cell may have (None: no limit)."""
        return self.max_skips if self.mitigation in ("skip_limit", "both") else None


_INTS: tuple[str, ...] = ("epochs", "order", "nodes", "width", "cells_per_stage")
_INTS += ("reductions", "batch_size", "max_skips", "es_window", "eigen_iterations", "seed")
_FLOATS: tuple[str, ...] = ("w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "alpha_lr")
_FLOATS += ("alpha_weight_decay", "es_factor", "cost_lambda")


def _check_types(config: DartsConfig) -> None:
    """One line naming the field for a value of the wrong type (YAML gives strings, bools)."""

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name in (*_INTS, "steps_per_epoch", "dims"):
        value = getattr(config, name)
        if not integer(value) and not (value is None and name in ("steps_per_epoch", "dims")):
            raise ConfigError(f"DartsConfig {name} must be an integer, got {value!r}")
    for name in (*_FLOATS, "macs_budget"):
        value = getattr(config, name)
        if not number(value) and not (value is None and name == "macs_budget"):
            raise ConfigError(f"DartsConfig {name} must be a number, got {value!r}")
    for name in ("ops", "limited_ops"):
        value = getattr(config, name)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"DartsConfig {name} must be a list of op names, got {value!r}")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a search: losses, the cell derived now, its skips, the Hessian eigenvalue."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    skips: int
    eigenvalue: float | None
    expected_macs: float
    candidate: dict[str, Any]


@dataclass(frozen=True)
class DartsResult:
    """The derived candidate, the fixed `cell_net` kwargs, and the search's history.

    `alpha_history[e]` holds the softmax weights after epoch e: {"normal": rows, "reduce":
    rows}, one row per edge (`darts_ops.edge_inputs`), one column per op of `ops`.
    `stopped_at` is the epoch DARTS-ES stopped at (the candidate is then from `es_window`
    epochs earlier), None if the search ran to the end.
    """

    candidate: dict[str, Any]
    net_kwargs: dict[str, Any]
    ops: tuple[str, ...]
    trace: tuple[EpochRecord, ...]
    alpha_history: tuple[dict[str, list[list[float]]], ...]
    stopped_at: int | None
    seconds: float
    config: DartsConfig = field(default_factory=DartsConfig)

    def model(self, **overrides: Any) -> nn.Module:
        """The derived network: `cell_net(**candidate, **net_kwargs)`; any of them can be
        overridden (the usual: a larger `width` and more `cells_per_stage` for the final
        model; a cell dimension such as `normal1_op1` too)."""
        return cell_net(**(self.candidate | self.net_kwargs | overrides))
