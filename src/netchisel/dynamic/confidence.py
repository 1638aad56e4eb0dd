"""How sure an exit is, and the soft-target loss that teaches exits: pure functions on tensors.

- `max_softmax`: the largest class probability (BranchyNet, Teerapittayanon et al. 2016, used
  the entropy; Shallow-Deep Networks, Kaya et al. 2019, the max probability). A sample exits
  when it is above the threshold, in [0, 1]; 1 never fires.
- `entropy`: the softmax entropy in nats; a sample exits when it is below the threshold, in
  [0, ln C]; 0 never fires.
- `learned`: a small decider per exit (`netchisel.dynamic.deciders`) scores how likely the
  exit's answer is the final head's, in [0, 1]; a sample exits when it is above the threshold
  (1 never fires).
- `soft_kl`: T^2 KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al. 2015): exits
  learn the final head's distribution. A few lines, so written here rather than shared with the
  distill family, a sibling this family does not import.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.deciders import decide

CRITERIA = ("max_softmax", "entropy", "learned")
# Criteria whose score is a probability-like number in [0, 1], higher = surer.
_UNIT = ("max_softmax", "learned")


def never(criterion: str) -> float:
    """The threshold at which `criterion` never lets a sample exit.

    Example:
        >>> never("max_softmax"), never("entropy")
        (1.0, 0.0)
    """
    return 1.0 if criterion in _UNIT else 0.0


def fires(criterion: str, threshold: float) -> bool:
    """Whether an exit with this threshold can let a sample out (else its head need not run).

    Example:
        >>> fires("max_softmax", 0.9), fires("max_softmax", 1.0), fires("entropy", 0.0)
        (True, False, False)
    """
    return threshold != never(criterion)


def threshold_range(criterion: str, num_classes: int) -> tuple[float, float]:
    """The thresholds that mean something for `criterion` with `num_classes` classes.

    Example:
        >>> round(threshold_range("entropy", 10)[1], 4)
        2.3026
    """
    return (0.0, 1.0) if criterion in _UNIT else (0.0, math.log(num_classes))


def check_threshold(criterion: str, value: float, num_classes: int, where: str) -> None:
    """A one-line ConfigError naming `value` unless it lies in `criterion`'s range.

    Example:
        >>> check_threshold("max_softmax", 1.5, 10, "thresholds[0]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: ...: thresholds[0] = 1.5 is outside [0, 1] for ...
    """
    low, high = threshold_range(criterion, num_classes)
    if not (low <= value <= high):
        off = "1 never fires" if criterion in _UNIT else "0 never fires"
        raise ConfigError(
            f"dynamic.early_exit: {where} = {value} is outside [{low:g}, {high:.4g}] for "
            f"{criterion} ({off})"
        )


def score(logits: Tensor, criterion: str, decider: nn.Module | None = None) -> Tensor:
    """One number per row, higher = surer: max probability, minus the entropy, or the
    `decider`'s score (criterion "learned", which needs one).

    Example:
        >>> import torch
        >>> score(torch.zeros(1, 4), "max_softmax").tolist()
        [0.25]
        >>> round(float(score(torch.zeros(1, 4), "entropy")), 4)  # -ln 4
        -1.3863
    """
    if criterion == "learned":
        if decider is None:
            raise ConfigError("dynamic.early_exit: criterion 'learned' needs a decider per exit")
        return decide(decider, logits)
    log_p = nn.functional.log_softmax(logits.float(), dim=-1)
    if criterion == "max_softmax":
        return log_p.amax(dim=-1).exp()
    return (log_p.exp() * log_p).sum(dim=-1)


def score_threshold(criterion: str, threshold: float) -> float:
    """The threshold in `score`'s units: samples exit where score > this.

    Example:
        >>> score_threshold("entropy", 0.5)
        -0.5
    """
    return threshold if criterion in _UNIT else -threshold


def exits_now(
    logits: Tensor, criterion: str, threshold: float, decider: nn.Module | None = None
) -> Tensor:
    """Which rows are sure enough to stop here (a bool per row).

    Example:
        >>> import torch
        >>> exits_now(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), "max_softmax", 0.9).tolist()
        [True, False]
    """
    return score(logits, criterion, decider) > score_threshold(criterion, threshold)


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over rows.

    Example:
        >>> import torch
        >>> s = torch.zeros(1, 2)
        >>> t = torch.tensor([[math.log(3.0), 0.0]])
        >>> round(float(soft_kl(s, t)), 6)  # 0.75 ln 1.5 + 0.25 ln 0.5
        0.130812
    """
    s = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    rows = (t.exp() * (t - s)).sum(dim=-1)
    return temperature**2 * rows.mean()
