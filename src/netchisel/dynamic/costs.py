"""What an early-exit model costs: exact MACs per sample at each exit, and their expectation.

A sample that leaves at exit k has run the backbone's steps up to that exit and the heads of
exits 0..k (each earlier head ran and said "not sure"); a sample that reaches the end has run
every step and every head. The counts come from `netchisel.measure.count_flops` on one forward
that runs everything (`all_outputs`), read per module, so they are the same exact counts as
every other profile. With criterion "learned" an exit's cost includes its decider (which runs
on every sample that reaches the exit, right after the head). The head of an exit whose
threshold never fires does not run and costs nothing. The expected MACs weight them by the
fraction of the calibration split that left at each exit (`exit_fractions`, set when the
thresholds were calibrated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from netchisel.dynamic.chain import GLUE
from netchisel.dynamic.confidence import fires, score
from netchisel.measure.flops import count_flops


class ExitModel(Protocol):
    """What the cost functions read from an early-exit model."""

    steps: list[str]
    exit_after: list[int]
    heads: nn.ModuleList
    thresholds: list[float]
    exit_fractions: list[float]
    criterion: str
    deciders: nn.ModuleList

    def all_outputs(self, x: Tensor) -> list[Tensor]: ...


class _Everything(nn.Module):
    """Runs every step, every head and every decider once, so one count prices them all."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        outs: list[Tensor] = self.model.all_outputs(x)  # type: ignore[operator]
        deciders: nn.ModuleList = self.model.deciders  # type: ignore[assignment]
        for decider, logits in zip(deciders, outs, strict=False):
            score(logits, "learned", decider)
        return outs


@dataclass(frozen=True)
class ExitCosts:
    """MACs per sample of each backbone step and of each head, and where the exits sit."""

    steps: list[int]
    heads: list[int]
    exit_after: list[int]

    @property
    def static(self) -> int:
        """The backbone alone: the model without exits."""
        return sum(self.steps)

    def per_exit(self, live: Sequence[bool] | None = None) -> list[int]:
        """MACs per sample of a sample leaving at each exit, then of one reaching the end.

        A sample pays for the steps it ran and for every live head it passed; a head whose
        threshold never fires (`live[k]` false) does not run, so it costs nothing.

        Example:
            >>> costs = ExitCosts([10, 20, 30], [1, 2], [0, 1])
            >>> costs.per_exit(), costs.per_exit([False, True])
            ([11, 33, 63], [10, 32, 62])
        """
        live = [True] * len(self.heads) if live is None else list(live)
        paid = [h if on else 0 for h, on in zip(self.heads, live, strict=True)]
        costs = [
            sum(self.steps[: stop + 1]) + sum(paid[: k + 1])
            for k, stop in enumerate(self.exit_after)
        ]
        return [*costs, self.static + sum(paid)]


def exit_macs(model: ExitModel, x: Tensor) -> ExitCosts:
    """The exact MACs per sample of each step and head (count_flops on the first sample of `x`).

    Example:
        >>> import torch
        >>> from netchisel.dynamic.exits import EarlyExitModel
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
        >>> m = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [])
        >>> exit_macs(m, torch.zeros(2, 4))
        ExitCosts(steps=[32, 24], heads=[24], exit_after=[0])
    """
    count = count_flops(_Everything(model), x[:1])  # type: ignore[arg-type]
    by_module = count.macs_by_module
    segments = getattr(model, "segment_macs", None)  # a layer-exit model: no chain steps
    steps = (
        segments(x[:1])
        if callable(segments)
        else [0 if s in GLUE else by_module[f"model.backbone.{s}"] for s in model.steps]
    )
    deciders = len(model.deciders)
    heads = [
        by_module[f"model.heads.{k}"] + (by_module[f"model.deciders.{k}"] if deciders else 0)
        for k in range(len(model.heads))
    ]
    return ExitCosts(steps, heads, list(model.exit_after))


def expected_macs(costs: list[int], fractions: list[float]) -> float:
    """The mean MACs per sample when `fractions` of the samples leave at each exit.

    Example:
        >>> expected_macs([10, 30, 100], [0.5, 0.25, 0.25])
        37.5
    """
    return sum(c * f for c, f in zip(costs, fractions, strict=True))


def exit_costs(model: ExitModel, x: Tensor) -> dict[str, Any]:
    """Per exit: where it sits, its threshold, its MACs per sample and the fraction of the
    calibration split that leaves there; then the expected and the static MACs per sample."""
    macs = exit_macs(model, x)
    live = [fires(model.criterion, t) for t in model.thresholds]
    costs = macs.per_exit(live)
    backbone = macs.static
    fractions = list(model.exit_fractions)
    names = [model.steps[i] for i in model.exit_after]
    rows = [
        {
            "after": name,
            "threshold": model.thresholds[k],
            "head_runs": live[k],
            "macs": costs[k],
            "fraction": fractions[k] if fractions else None,
        }
        for k, name in enumerate(names)
    ]
    end = fractions[-1] if fractions else None
    rows.append({"after": "end", "threshold": None, "macs": costs[-1], "fraction": end})
    expected = expected_macs(costs, fractions) if fractions else None
    return {
        "criterion": model.criterion,
        "exits": rows,
        "static_macs": backbone,
        "expected_macs": expected,
        "mac_reduction": None if expected is None else 1.0 - expected / backbone,
        "never_fire": [n for n, f in zip(names, fractions, strict=False) if f == 0.0],
    }
