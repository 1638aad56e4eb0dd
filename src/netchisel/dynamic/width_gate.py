"""The gate that picks a width per input: its shape, its training targets, its calibration.

The gate is a tiny net on the input (conv input: one strided 3-wide conv, ReLU, adaptive
average pooling to `pool` positions per axis, Linear to one logit per width; flat input: two
Linears). Its MACs are counted and paid by every sample (about 0.2% of the zoo cnn's).

Targets: for each training sample, the width with the least risk
`(1 - p_k(label)) + cost_weight * macs_k / macs_full`, with p_k the softmax of the slimmable
net at width k (eval mode): the narrowest width that is still sure of the right answer, unless
a wider one is surer by more than its extra cost. The gate learns them by cross-entropy
(through `fit`, the one training loop). We chose a learned gate over a confidence cascade
(run the narrowest width, widen when unsure) because the gate's cost is fixed and tiny and a
sample runs exactly one width; a cascade pays for every width it tries.

Calibration: the gate's logits get `bias * k` added (k = width index; > 0 leans wider). As the
bias grows each sample's width can only grow, so the accuracy on the validation split moves
with it; the bias kept is the one with the least expected MACs that keeps the budget
(`thresholds.Budget`: `max_drop` points below the reference, the static model), found exactly
over every bias at which some sample changes width. With the "agreement" rule (the default) a
sample sent to a narrower width whose answer differs from the widest's counts as lost, and the
Clopper-Pearson upper bound of their rate must stay within the budget, as for early exits; with
"accuracy" the split's accuracy as measured must.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.thresholds import Budget

# At most this many candidate biases are scored (quantiles of every sample's switch points).
CANDIDATES = 2048


def make_gate(
    example: Tensor, widths: int, channels: int = 8, pool: int = 4, vocab: int | None = None
) -> nn.Module:
    """A gate for inputs shaped like `example`: one logit per width. Token ids (integers)
    get the mean of a `vocab`-row embedding of `channels`, then a Linear.

    Example:
        >>> make_gate(torch.zeros(1, 1, 32, 32), 4)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 4])
        >>> make_gate(torch.zeros(1, 64), 3)(torch.zeros(2, 64)).shape
        torch.Size([2, 3])
        >>> make_gate(torch.zeros(1, 5, dtype=torch.long), 2, vocab=30)(
        ...     torch.zeros(3, 5, dtype=torch.long)).shape
        torch.Size([3, 2])
    """
    if not example.is_floating_point():
        if vocab is None:
            raise ConfigError(
                "dynamic.width: the inputs are token ids but the model has no nn.Embedding to "
                "size the gate's vocabulary"
            )
        return nn.Sequential(
            nn.EmbeddingBag(vocab, channels, mode="mean"), nn.ReLU(), nn.Linear(channels, widths)
        )
    if example.dim() in (3, 4):
        conv = nn.Conv1d if example.dim() == 3 else nn.Conv2d
        avg = nn.AdaptiveAvgPool1d if example.dim() == 3 else nn.AdaptiveAvgPool2d
        positions = pool ** (example.dim() - 2)
        return nn.Sequential(
            conv(example.shape[1], channels, 3, stride=2, padding=1),
            nn.ReLU(),
            avg(pool),
            nn.Flatten(),
            nn.Linear(channels * positions, widths),
        )
    features = math.prod(example.shape[1:])
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, channels), nn.ReLU(), nn.Linear(channels, widths)
    )


def gate_targets(probs: Tensor, labels: Tensor, costs: list[int], cost_weight: float) -> Tensor:
    """Each sample's target width: the least `(1 - p_k(label)) + cost_weight * costs_k /
    costs[-1]`; `probs` is (widths, N, classes). Ties go to the narrower width.

    Example:
        >>> p = torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[1.0, 0.0], [0.0, 1.0]]])
        >>> gate_targets(p, torch.tensor([0, 1]), [10, 100], 0.2).tolist()
        [0, 1]
    """
    right = probs.gather(2, labels.view(1, -1, 1).expand(probs.shape[0], -1, 1))[..., 0]
    share = torch.tensor([c / costs[-1] for c in costs], dtype=right.dtype, device=right.device)
    risk = (1.0 - right) + cost_weight * share[:, None]
    return risk.argmin(0)


@dataclass(frozen=True)
class GateOutcome:
    """What a gate bias does on a split: accuracy (percent), share of samples per width and
    the mean MACs per sample (gate included)."""

    bias: float
    accuracy: float
    fractions: list[float]
    expected_macs: float


def choices(logits: Tensor, bias: float) -> Tensor:
    """The width index of each sample under `bias` (logits (N, widths)).

    Example:
        >>> choices(torch.tensor([[1.0, 0.0], [0.0, 0.5]]), 0.0).tolist()
        [0, 1]
    """
    lean = bias * torch.arange(logits.shape[-1], dtype=logits.dtype)
    picked: Tensor = (logits + lean).argmax(-1)
    return picked


def outcome(
    logits: Tensor, correct: Tensor, costs: list[int], gate_macs: int, bias: float
) -> GateOutcome:
    """Accuracy, width shares and mean MACs of `bias` (`correct` is (widths, N) bool).

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
        >>> ok = torch.tensor([[True, False], [True, True]])
        >>> outcome(z, ok, [10, 100], 1, 0.0)
        GateOutcome(bias=0.0, accuracy=100.0, fractions=[0.5, 0.5], expected_macs=56.0)
    """
    pick = choices(logits, bias)
    k = logits.shape[-1]
    fractions = (torch.bincount(pick, minlength=k).double() / len(pick)).tolist()
    accuracy = 100.0 * float(correct.gather(0, pick[None])[0].double().mean())
    mean = gate_macs + sum(c * f for c, f in zip(costs, fractions, strict=True))
    return GateOutcome(float(bias), accuracy, fractions, mean)


def switch_points(logits: Tensor) -> Tensor:
    """Every bias at which some sample's chosen width changes (sorted, unique).

    Example:
        >>> switch_points(torch.tensor([[1.0, 0.0]])).tolist()
        [1.0]
    """
    k = logits.shape[-1]
    points = [(logits[:, i] - logits[:, j]) / (j - i) for i in range(k) for j in range(i + 1, k)]
    unique: Tensor = torch.unique(torch.cat(points).double())
    return unique


def calibrate_bias(
    logits: Tensor,
    correct: Tensor,
    costs: list[int],
    gate_macs: int,
    budget: Budget,
    differs: Tensor | None = None,
) -> GateOutcome | None:
    """The bias with the least mean MACs that keeps `budget` (ties: the more accurate), or
    None when even the widest choice of every sample misses it. `differs` (widths, N) marks
    the answers that differ from the widest width's; the "agreement" rule needs it.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
        >>> ok = torch.tensor([[True, False], [True, True]])
        >>> calibrate_bias(z, ok, [10, 100], 1, Budget(100.0, 0.0, "accuracy")).fractions
        [0.5, 0.5]
    """
    agreement = budget.rule == "agreement"
    if agreement and differs is None:
        raise ValueError("calibrate_bias: the agreement rule needs `differs`")
    widest = 100.0 * float(correct[-1].double().mean())
    if agreement and widest < budget.floor():
        return None
    allowed = budget.misses_allowed(correct.shape[1], widest)
    points = switch_points(logits.float())
    if len(points) > CANDIDATES:
        points = torch.quantile(points, torch.linspace(0, 1, CANDIDATES, dtype=points.dtype))
    # A bias between two switch points, and beyond both ends (all narrowest / all widest).
    mids = (points[1:] + points[:-1]) / 2 if len(points) > 1 else points[:0]
    span = float(points.abs().max()) + 1.0 if len(points) else 1.0
    candidates = [-span, *mids.tolist(), *points.tolist(), span]
    best: GateOutcome | None = None
    for bias in candidates:
        found = outcome(logits.float(), correct, costs, gate_macs, bias)
        if agreement and differs is not None:
            pick = choices(logits.float(), bias)
            misses = int(differs.gather(0, pick[None]).sum())
            if misses > allowed and found.fractions[-1] < 1.0:
                continue  # all at the widest keeps any budget the widest itself keeps
        elif found.accuracy < budget.floor():
            continue
        if (
            best is None
            or found.expected_macs < best.expected_macs
            or (found.expected_macs == best.expected_macs and found.accuracy > best.accuracy)
        ):
            best = found
    return best
