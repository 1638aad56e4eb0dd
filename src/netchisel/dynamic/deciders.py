"""Learned exit decisions: a tiny model per exit that scores "this exit answers as the end does".

The max softmax ranks samples by how peaked the exit's distribution is; `criterion: learned`
replaces it by a small classifier (a logistic regression, or one hidden layer) trained on the
train split to predict whether the exit's answer equals the final head's (the event the
"agreement" calibration rule counts, `netchisel.dynamic.thresholds`). Its input is computed
from the exit's logits alone, each feature in [0, 1]:

- the softmax sorted in decreasing order (C values: how peaked, at every rank);
- the entropy divided by ln C, and the margin between the two largest probabilities;
- the softmax in class order (C values: some classes are easier to answer early than others).

So `2 C + 2` inputs; the decider is a plain `nn.Sequential` of Linear (and ReLU) layers, which
saves, loads and counts (`count_flops`) like any layer. Its output is one logit per row; the
score is its sigmoid, in [0, 1], and a sample exits where the score is above the threshold (1
never fires), as with the max softmax. Learned exit policies of this kind: Scardapane et al.
2020 ("Why should we add early exits to neural networks?") survey them; CALM (Schuster et al.
2022) trains such an early-exit classifier on the consistency with the full model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError


def input_size(num_classes: int) -> int:
    """How many numbers a decider reads for `num_classes` classes.

    Example:
        >>> input_size(10)
        22
    """
    return 2 * num_classes + 2


def decider_inputs(logits: Tensor) -> Tensor:
    """The features a decider reads from an exit's (N, C) logits: (N, 2 C + 2), each in [0, 1].

    Example:
        >>> x = decider_inputs(torch.tensor([[0.0, 0.0]]))
        >>> [round(v, 4) for v in x[0].tolist()]  # sorted p, entropy / ln 2, margin, p
        [0.5, 0.5, 1.0, 0.0, 0.5, 0.5]
    """
    log_p = nn.functional.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    ranked = p.sort(dim=-1, descending=True).values
    classes = logits.shape[-1]
    entropy = -(p * log_p).sum(dim=-1, keepdim=True) / math.log(max(classes, 2))
    margin = ranked[:, :1] - ranked[:, 1:2] if classes > 1 else ranked[:, :1]
    return torch.cat([ranked, entropy, margin, p], dim=-1)


def make_decider(num_classes: int, hidden: int) -> nn.Sequential:
    """A decider for `num_classes` logits: Linear -> 1 (hidden 0), else Linear, ReLU, Linear.

    Example:
        >>> d = make_decider(10, 16)
        >>> d(torch.zeros(3, 22)).shape, sum(p.numel() for p in d.parameters())
        (torch.Size([3, 1]), 385)
    """
    if hidden < 0:
        raise ConfigError(f"dynamic.early_exit: decider_hidden must be >= 0, got {hidden}")
    size = input_size(num_classes)
    if hidden == 0:
        return nn.Sequential(nn.Linear(size, 1))
    return nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def decide(decider: nn.Module, logits: Tensor) -> Tensor:
    """The learned score per row, in [0, 1]: the decider's belief that the exit agrees.

    Example:
        >>> d = make_decider(2, 0)
        >>> _ = [nn.init.zeros_(p) for p in d.parameters()]
        >>> decide(d, torch.zeros(2, 2)).tolist()
        [0.5, 0.5]
    """
    param = next(decider.parameters(), None)
    inputs = decider_inputs(logits)
    if param is not None:  # calibration scores CPU logits with deciders that may live elsewhere
        inputs = inputs.to(param.device, param.dtype)
    out: Tensor = decider(inputs)
    return torch.sigmoid(out.float()).squeeze(-1).to(logits.device)


def agreement_loss(decider: nn.Module, logits: Tensor, final: Tensor) -> Tensor:
    """Binary cross-entropy of the decider against "this exit's argmax is the final one's".

    Example:
        >>> d = make_decider(2, 0)
        >>> _ = [nn.init.zeros_(p) for p in d.parameters()]
        >>> round(agreement_loss(d, torch.zeros(2, 2), torch.zeros(2, 2)).item(), 4)  # ln 2
        0.6931
    """
    target = (logits.argmax(-1) == final.argmax(-1)).float()
    raw = decider(decider_inputs(logits.detach())).squeeze(-1)
    return nn.functional.binary_cross_entropy_with_logits(raw.float(), target)


def check_decider(decider: nn.Module, num_classes: int, where: str) -> None:
    """A one-line ConfigError unless `decider` maps (1, 2 C + 2) to (1, 1) (a loaded model).

    Example:
        >>> check_decider(nn.Linear(3, 1), 10, "deciders[0]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: ...deciders[0] does not map 22 inputs to 1 score...
    """
    try:
        with torch.no_grad():
            param = next(decider.parameters(), None)
            probe = torch.zeros(1, input_size(num_classes))
            if param is not None:
                probe = probe.to(param.device, param.dtype)
            shape = tuple(decider(probe).shape)
    except (RuntimeError, TypeError, ValueError) as err:
        shape = (str(err).splitlines()[0],)
    if shape != (1, 1):
        raise ConfigError(
            f"dynamic.early_exit: {where} does not map {input_size(num_classes)} inputs to 1 "
            f"score (got {shape}); the artifact's deciders do not fit its {num_classes} classes"
        )
