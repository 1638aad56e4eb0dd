"""Per-exit thresholds calibrated on the validation split to meet an accuracy budget.

Given every exit's logits and the final logits on the validation split (one pass that runs
everything), the exit each sample would take under any thresholds, and so the accuracy and the
expected MACs, is a few tensor operations. The search:

- candidates per exit: 64 quantiles of that exit's confidence on the split, plus "never";
- two starts: every exit off, and one shared confidence level for all exits (the cheapest
  that meets the budget);
- the cost of each exit counts only the heads that can fire (one set to "never" does not run);
- from each, coordinate descent: each exit in turn moves to its cheapest candidate that keeps
  the accuracy within budget with the others fixed, until nothing moves (each move lowers the
  expected MACs, so it ends);
- the cheaper of the two results wins.

The budget is `reference - max_drop` points of accuracy, the reference being the model without
exits. If even "every exit off" misses it (joint training moved the final head), no threshold
can meet it, and the caller is told so. Exits left at "never" are reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from netchisel.dynamic.confidence import never, score, score_threshold, threshold_range
from netchisel.dynamic.costs import ExitCosts, expected_macs

QUANTILES = 64


@dataclass(frozen=True)
class Outcome:
    """What thresholds do on a split: accuracy (percent), exit fractions, mean MACs."""

    thresholds: list[float]
    accuracy: float
    fractions: list[float]
    expected_macs: float


def simulate(
    scores: Tensor, correct: Tensor, taus: list[float], costs: list[int]
) -> tuple[float, list[float], float]:
    """Accuracy, exit fractions and mean MACs when samples leave where score > tau.

    `scores` is (exits, N), `correct` (exits + 1, N) bool, `costs` one per exit and the end.

    Example:
        >>> s = torch.tensor([[0.9, 0.2, 0.6]])
        >>> c = torch.tensor([[True, False, False], [True, True, True]])
        >>> accuracy, fractions, mean = simulate(s, c, [0.5], [10, 100])
        >>> round(accuracy, 2), [round(f, 3) for f in fractions], round(mean, 6)
        (66.67, [0.667, 0.333], 40.0)
    """
    k, n = scores.shape
    taken = torch.full((n,), k, dtype=torch.long)
    free = torch.ones(n, dtype=torch.bool)
    for i in range(k):
        fire = free & (scores[i] > taus[i])
        taken[fire] = i
        free &= ~fire
    right = correct.gather(0, taken.unsqueeze(0))[0]
    fractions = (torch.bincount(taken, minlength=k + 1).double() / n).tolist()
    accuracy = 100.0 * float(right.double().mean())
    return accuracy, fractions, expected_macs(costs, fractions)


class _Problem:
    """One split's scores and correctness, the costs, and "never" in score units."""

    def __init__(self, logits: list[Tensor], labels: Tensor, criterion: str, costs: ExitCosts):
        self.scores = torch.stack([score(z, criterion) for z in logits[:-1]])
        self.correct = torch.stack([z.argmax(-1) == labels for z in logits])
        self.costs = costs
        self.off = score_threshold(criterion, never(criterion))

    def run(self, taus: list[float]) -> tuple[float, list[float], float]:
        """Accuracy, fractions and mean MACs; a head set to "never" does not run (free)."""
        costs = self.costs.per_exit([t != self.off for t in taus])
        return simulate(self.scores, self.correct, taus, costs)


def outcome_of(
    logits: list[Tensor],
    labels: Tensor,
    criterion: str,
    costs: ExitCosts,
    thresholds: list[float],
) -> Outcome:
    """What given thresholds do on a split's logits (each exit's, then the final ones).

    Example:
        >>> z = [torch.tensor([[0.0, 9.0]]), torch.tensor([[9.0, 0.0]])]
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> outcome_of(z, torch.tensor([1]), "max_softmax", costs, [0.5]).fractions
        [1.0, 0.0]
    """
    problem = _Problem(logits, labels, criterion, costs)
    accuracy, fractions, mean = problem.run([score_threshold(criterion, t) for t in thresholds])
    return Outcome(list(thresholds), accuracy, fractions, mean)


def _candidates(scores: Tensor, off: float) -> list[Tensor]:
    # float32 like the scores at inference, so a threshold means the same there as here.
    levels = torch.linspace(0, 1, QUANTILES + 1)
    out = []
    for row in scores:
        values = torch.quantile(row, levels, interpolation="lower")
        # Just below each quantile, so that quantile's own samples exit too.
        values = torch.nextafter(values, torch.full_like(values, -torch.inf))
        out.append(torch.unique(torch.cat([values, torch.tensor([off])])))
    return out


def _descend(
    problem: _Problem, taus: list[float], target: float, candidates: list[Tensor]
) -> list[float]:
    best = problem.run(taus)[2]
    moved = True
    while moved:
        moved = False
        for i, options in enumerate(candidates):
            for value in options.tolist():
                trial = [*taus[:i], value, *taus[i + 1 :]]
                accuracy, _, cost = problem.run(trial)
                if accuracy >= target and cost < best - 1e-9:
                    taus, best, moved = trial, cost, True
    return taus


def calibrate(
    logits: list[Tensor],
    labels: Tensor,
    criterion: str,
    costs: ExitCosts,
    target: float,
) -> Outcome | None:
    """Thresholds (in `criterion`'s units) with the least mean MACs whose accuracy on these
    logits is >= `target` percent; None when even no exit at all misses the target.

    `logits` holds each exit's (N, C) logits, then the final ones.

    Example:
        >>> final = torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]])
        >>> early = torch.tensor([[0.0, 9.0], [9.0, 0.0], [9.0, 0.0]])  # wrong on the third
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> out = calibrate([early, final], torch.tensor([1, 0, 1]), "max_softmax", costs, 100.0)
        >>> out.fractions, out.accuracy
        ([0.0, 1.0], 100.0)
    """
    problem = _Problem(logits, labels, criterion, costs)
    exits = problem.scores.shape[0]
    taus_off = [problem.off] * exits
    if problem.run(taus_off)[0] < target:
        return None
    candidates = _candidates(problem.scores, problem.off)
    shared = _candidates(problem.scores.reshape(1, -1), problem.off)[0]
    starts = [taus_off]
    for value in shared.tolist():
        if problem.run([value] * exits)[0] >= target:
            starts.append([value] * exits)
            break
    results = [_descend(problem, s, target, candidates) for s in starts]
    taus = min(results, key=lambda t: problem.run(t)[2])
    accuracy, fractions, mean = problem.run(taus)
    thresholds = [score_threshold(criterion, t) for t in taus]
    low, high = threshold_range(criterion, logits[0].shape[-1])
    # A threshold just past the range's end (below a probability of 0, above the entropy of
    # the uniform distribution) fires exactly as the end does.
    clean = [min(max(t, low), high) for t in thresholds]
    return Outcome(clean, accuracy, fractions, mean)


# Accuracy budgets (points below the model without exits) of the trade-off curve a report plots.
BUDGETS = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


def trade_off(
    logits: list[Tensor],
    labels: Tensor,
    criterion: str,
    costs: ExitCosts,
    reference: float,
    budgets: tuple[float, ...] = BUDGETS,
) -> list[tuple[float, Outcome]]:
    """The calibrated thresholds at each accuracy budget (`reference - budget` percent) on
    one split's logits: accuracy against mean MACs over the sweep, as a report plots it.
    Budgets no thresholds can meet are left out.

    Example:
        >>> final = torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]])
        >>> early = torch.tensor([[0.0, 9.0], [9.0, 0.0], [9.0, 0.0]])  # wrong on the third
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> curve = trade_off([early, final], torch.tensor([1, 0, 1]), "max_softmax", costs,
        ...     100.0, (0.0, 50.0))
        >>> [(b, round(o.accuracy, 1), o.expected_macs) for b, o in curve]
        [(0.0, 100.0, 10.0), (50.0, 66.7, 1.0)]
    """
    out = []
    for budget in budgets:
        found = calibrate(logits, labels, criterion, costs, reference - budget)
        if found is not None:
            out.append((budget, found))
    return out
