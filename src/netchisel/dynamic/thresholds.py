"""Per-exit thresholds calibrated on the validation split to meet an accuracy budget.

Given every exit's logits and the final logits on the validation split (one pass that runs
everything), the exit each sample would take under any thresholds, and so the accuracy and the
expected MACs, is a few tensor operations. The search:

- candidates per exit: 64 quantiles of that exit's confidence on the split, plus "never";
- two starts: every exit off, and one shared confidence level for all exits (the cheapest
  that meets the budget);
- the cost of each exit counts only the heads that can fire (one set to "never" does not run);
- from each, coordinate descent: each exit in turn moves to its cheapest candidate that keeps
  the budget with the others fixed, until nothing moves (each move lowers the expected MACs,
  so it ends);
- the cheaper of the two results wins.

What "keeps the budget" means is the `rule` (`Budget`):

- "agreement" (the default): the samples that leave early and whose answer differs from the
  final head's are counted as lost, every one of them (a change of answer is what can cost
  accuracy; a sample it happens to fix on this split is not counted as a gain, since that
  gain is as much chance as skill on a few hundred samples), and the one-sided
  Clopper-Pearson upper bound of their rate, at `confidence`, must stay within `max_drop`
  minus what the final head has already lost against the reference (joint training). So
  the split must show evidence, not only a point estimate: on 270 samples at confidence 0.5
  a 0.5-point budget allows no disagreement at all, on 500 samples one (`allowed_misses`).
  Consistency with the full model is how CALM (Schuster et al. 2022) states the risk of
  early exit; the bound is not a guarantee (the search tries many thresholds on one split),
  it makes the evidence needed grow as the split shrinks.
- "accuracy": the split's accuracy >= reference - max_drop, gains included (a point estimate:
  on a small or saturated split it lets through thresholds that lose more on new data).

The budget is against the reference, the model without exits. If even "every exit off" misses
it (joint training moved the final head), no threshold can meet it, and the caller is told so.
Exits left at "never" are reported as such.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.dynamic.confidence import never, score, score_threshold, threshold_range
from netchisel.dynamic.costs import ExitCosts, expected_macs

QUANTILES = 64
RULES = ("agreement", "accuracy")


def allowed_misses(samples: int, max_drop: float, confidence: float) -> int:
    """The most misses (of `samples`) whose one-sided Clopper-Pearson upper bound on the miss
    rate, at `confidence`, is still <= `max_drop` points; -1 when not even zero misses is.

    The bound for k misses is <= b exactly when P(Binomial(samples, b) <= k) <= 1 -
    confidence, so the answer is the last k whose binomial tail stays there.

    Example:
        >>> allowed_misses(270, 0.5, 0.5), allowed_misses(500, 0.5, 0.5)
        (0, 1)
        >>> allowed_misses(270, 0.5, 0.9), allowed_misses(1000, 2.0, 0.9)
        (-1, 13)
    """
    rate = max_drop / 100.0
    if rate <= 0.0:
        return -1
    if rate >= 1.0:
        return samples
    log_p, log_q = math.log(rate), math.log1p(-rate)
    total, k = 0.0, -1
    while k < samples:
        i = k + 1
        log_pmf = (
            math.lgamma(samples + 1)
            - math.lgamma(i + 1)
            - math.lgamma(samples - i + 1)
            + i * log_p
            + (samples - i) * log_q
        )
        total += math.exp(log_pmf)
        if total > 1.0 - confidence:
            break
        k = i
    return k


@dataclass(frozen=True)
class Budget:
    """What thresholds must keep on the split: `max_drop` points below `reference` percent,
    judged by `rule` ("agreement" with a bound at `confidence`, or "accuracy"); see the
    module's docstring.

    Example:
        >>> Budget(90.0, 0.5).misses_allowed(500, final_accuracy=90.0)
        1
    """

    reference: float
    max_drop: float
    rule: str = "agreement"
    confidence: float = 0.5

    def misses_allowed(self, samples: int, final_accuracy: float) -> int:
        """How many early answers that differ from the final head's the split may show."""
        spent = max(0.0, self.reference - final_accuracy)
        return allowed_misses(samples, self.max_drop - spent, self.confidence)

    def floor(self) -> float:
        """The lowest split accuracy the "accuracy" rule accepts."""
        return self.reference - self.max_drop


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
    taken = taken_exits(scores, taus)
    right = correct.gather(0, taken.unsqueeze(0))[0]
    fractions = (torch.bincount(taken, minlength=k + 1).double() / n).tolist()
    accuracy = 100.0 * float(right.double().mean())
    return accuracy, fractions, expected_macs(costs, fractions)


def taken_exits(scores: Tensor, taus: list[float]) -> Tensor:
    """The exit each sample takes (the first whose score > its tau; len(taus) = the end).

    Example:
        >>> taken_exits(torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.1]]), [0.7, 0.5]).tolist()
        [0, 1, 2]
    """
    k, n = scores.shape
    taken = torch.full((n,), k, dtype=torch.long)
    free = torch.ones(n, dtype=torch.bool)
    for i in range(k):
        fire = free & (scores[i] > taus[i])
        taken[fire] = i
        free &= ~fire
    return taken


class _Problem:
    """One split's scores and correctness, the costs, and "never" in score units."""

    def __init__(
        self,
        logits: list[Tensor],
        labels: Tensor,
        criterion: str,
        costs: ExitCosts,
        deciders: Sequence[nn.Module] | None = None,
    ):
        with torch.no_grad():
            self.scores = torch.stack(
                [
                    score(z, criterion, deciders[k] if deciders else None)
                    for k, z in enumerate(logits[:-1])
                ]
            )
        self.correct = torch.stack([z.argmax(-1) == labels for z in logits])
        final = logits[-1].argmax(-1)
        self.differs = torch.stack([z.argmax(-1) != final for z in logits])
        self.costs = costs
        self.off = score_threshold(criterion, never(criterion))

    def run(self, taus: list[float]) -> tuple[float, list[float], float]:
        """Accuracy, fractions and mean MACs; a head set to "never" does not run (free)."""
        costs = self.costs.per_exit([t != self.off for t in taus])
        return simulate(self.scores, self.correct, taus, costs)

    def misses(self, taus: list[float]) -> int:
        """How many samples leave early with an answer other than the final head's."""
        taken = taken_exits(self.scores, taus)
        return int(self.differs.gather(0, taken.unsqueeze(0)).sum())

    def keeps(self, taus: list[float], budget: Budget) -> bool:
        """Whether `taus` keep `budget` on this split (see the module's docstring)."""
        if budget.rule == "accuracy":
            return self.run(taus)[0] >= budget.floor()
        if all(t == self.off for t in taus):
            return self.run(taus)[0] >= budget.floor()  # no exit: the final head as it is
        final = 100.0 * float(self.correct[-1].double().mean())
        return self.misses(taus) <= budget.misses_allowed(self.scores.shape[1], final)


def outcome_of(
    logits: list[Tensor],
    labels: Tensor,
    criterion: str,
    costs: ExitCosts,
    thresholds: list[float],
    deciders: Sequence[nn.Module] | None = None,
) -> Outcome:
    """What given thresholds do on a split's logits (each exit's, then the final ones).

    Example:
        >>> z = [torch.tensor([[0.0, 9.0]]), torch.tensor([[9.0, 0.0]])]
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> outcome_of(z, torch.tensor([1]), "max_softmax", costs, [0.5]).fractions
        [1.0, 0.0]
    """
    problem = _Problem(logits, labels, criterion, costs, deciders)
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
    problem: _Problem, taus: list[float], budget: Budget, candidates: list[Tensor]
) -> list[float]:
    best = problem.run(taus)[2]
    moved = True
    while moved:
        moved = False
        for i, options in enumerate(candidates):
            for value in options.tolist():
                trial = [*taus[:i], value, *taus[i + 1 :]]
                cost = problem.run(trial)[2]
                if cost < best - 1e-9 and problem.keeps(trial, budget):
                    taus, best, moved = trial, cost, True
    return taus


def calibrate(
    logits: list[Tensor],
    labels: Tensor,
    criterion: str,
    costs: ExitCosts,
    budget: Budget,
    deciders: Sequence[nn.Module] | None = None,
) -> Outcome | None:
    """Thresholds (in `criterion`'s units) with the least mean MACs that keep `budget` on
    these logits; None when even no exit at all misses it.

    `logits` holds each exit's (N, C) logits, then the final ones; `deciders`, one per exit,
    score them for criterion "learned".

    Example:
        >>> final = torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]])
        >>> early = torch.tensor([[0.0, 9.0], [9.0, 0.0], [9.0, 0.0]])  # wrong on the third
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> out = calibrate([early, final], torch.tensor([1, 0, 1]), "max_softmax", costs,
        ...     Budget(100.0, 0.0, "accuracy"))
        >>> out.fractions, out.accuracy
        ([0.0, 1.0], 100.0)
    """
    problem = _Problem(logits, labels, criterion, costs, deciders)
    exits = problem.scores.shape[0]
    taus_off = [problem.off] * exits
    if not problem.keeps(taus_off, budget):
        return None
    candidates = _candidates(problem.scores, problem.off)
    shared = _candidates(problem.scores.reshape(1, -1), problem.off)[0]
    starts = [taus_off]
    for value in shared.tolist():
        if problem.keeps([value] * exits, budget):
            starts.append([value] * exits)
            break
    results = [_descend(problem, s, budget, candidates) for s in starts]
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
    budget: Budget,
    budgets: tuple[float, ...] = BUDGETS,
    deciders: Sequence[nn.Module] | None = None,
) -> list[tuple[float, Outcome]]:
    """The calibrated thresholds at each of `budgets` (points of `max_drop`, with `budget`'s
    reference, rule and confidence) on one split's logits: accuracy against mean MACs over
    the sweep, as a report plots it. Budgets no thresholds can meet are left out.

    Example:
        >>> final = torch.tensor([[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]])
        >>> early = torch.tensor([[0.0, 9.0], [9.0, 0.0], [9.0, 0.0]])  # wrong on the third
        >>> costs = ExitCosts([1, 9], [0], [0])
        >>> curve = trade_off([early, final], torch.tensor([1, 0, 1]), "max_softmax", costs,
        ...     Budget(100.0, 0.0, "accuracy"), (0.0, 50.0))
        >>> [(b, round(o.accuracy, 1), o.expected_macs) for b, o in curve]
        [(0.0, 100.0, 10.0), (50.0, 66.7, 1.0)]
    """
    out = []
    for points in budgets:
        found = calibrate(
            logits,
            labels,
            criterion,
            costs,
            dataclasses.replace(budget, max_drop=points),
            deciders,
        )
        if found is not None:
            out.append((points, found))
    return out
