"""What an early-exit model costs: exact MACs per sample at each exit, and their expectation.

A sample that leaves at exit k has run the backbone's steps up to that exit and the heads of
exits 0..k (each earlier head ran and said "not sure"); a sample that reaches the end has run
every step and every head. The counts come from `netchisel.measure.count_flops` on one forward
that runs everything (`all_outputs`), read per module, so they are the same exact counts as
every other profile. The expected MACs weight them by the fraction of the calibration split
that left at each exit (`exit_fractions`, set when the thresholds were calibrated).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from netchisel.measure.flops import count_flops


class ExitModel(Protocol):
    """What the cost functions read from an early-exit model."""

    steps: list[str]
    exit_after: list[int]
    heads: nn.ModuleList
    thresholds: list[float]
    exit_fractions: list[float]
    criterion: str

    def all_outputs(self, x: Tensor) -> list[Tensor]: ...


class _Everything(nn.Module):
    """Runs every step and every head once, so one count prices them all."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.all_outputs(x)  # type: ignore[operator,no-any-return]


def step_and_head_macs(model: ExitModel, x: Tensor) -> tuple[list[int], list[int]]:
    """MACs per sample of each backbone step and of each head (first sample of `x`)."""
    count = count_flops(_Everything(model), x[:1])  # type: ignore[arg-type]
    by_module = count.macs_by_module
    steps = [by_module[f"model.backbone.{s}"] for s in model.steps]
    heads = [by_module[f"model.heads.{k}"] for k in range(len(model.heads))]
    return steps, heads


def macs_per_exit(step_macs: list[int], head_macs: list[int], exit_after: list[int]) -> list[int]:
    """MACs per sample of a sample leaving at each exit, then of one reaching the end.

    Example:
        >>> macs_per_exit([10, 20, 30], [1, 2], [0, 1])
        [11, 33, 63]
    """
    costs = [
        sum(step_macs[: stop + 1]) + sum(head_macs[: k + 1]) for k, stop in enumerate(exit_after)
    ]
    return [*costs, sum(step_macs) + sum(head_macs)]


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
    step_macs, head_macs = step_and_head_macs(model, x)
    costs = macs_per_exit(step_macs, head_macs, model.exit_after)
    backbone = sum(step_macs)
    fractions = list(model.exit_fractions)
    names = [model.steps[i] for i in model.exit_after]
    rows = [
        {
            "after": name,
            "threshold": model.thresholds[k],
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
