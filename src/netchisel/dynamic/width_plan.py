"""Which layers the widths cut: every hidden conv/linear layer where that is proved exact,
else as many as can be added one at a time.

A CNN slims whole: every hidden layer keeps a prefix of its outputs, residual adds included
(`width_slim.plan_width`), and `width_masking.check_prefixes` proves it. A transformer does
not: its query/key/value projections feed a reshape into heads, and its attention output and
FFN output projections feed the residual stream and LayerNorm, which all need every channel.
But its FFN's first Linear (the hidden units) can be cut, the second reading a prefix, which
is DynaBERT's width on the FFN (Hou et al. 2020); and an attention's query, key and value cut
together drop whole heads where the cut is a multiple of the head size. So where cutting every
layer fails, the layers are tried in the order they run: the children of one module together
first (all of them, then all but the last: a ViT's attention holds its output projection
beside its query, key and value), then one at a time, each added to the cut set only if the
whole set is still proved exact; the error of the full cut is raised when none can be cut.
"""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import Tensor, nn

from netchisel.core.errors import ModelError
from netchisel.dynamic.width_masking import check_prefixes
from netchisel.dynamic.width_model import WidthModel
from netchisel.dynamic.width_slim import SlimPlan, cuttable, plan_width


def plan_slimmable(model: nn.Module, widths: list[float], example: Tensor) -> SlimPlan:
    """The proved plan that cuts the most hidden conv/linear layers this search finds: all of
    them if that is exact, else one at a time (see the module docstring).

    Example:
        >>> import torch
        >>> class Block(nn.Module):  # the last Linear adds to its input: it stays whole
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)
        ...         self.head = nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.head(x + self.down(self.up(x).relu()))
        >>> plan = plan_slimmable(Block(), [0.5, 1.0], torch.randn(2, 4))
        >>> plan.steps, plan.channels_out[0], plan.channels_in[1]
        (['up', 'down'], [4, 8], [4, 8])
    """
    try:
        return _proved(model, widths, example, frozenset())
    except ModelError as error:
        failure = error
    candidates = cuttable(model, example)
    groups: dict[str, list[str]] = {}  # siblings first: an attention's query, key and value
    for name in candidates:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    cut: list[str] = []
    found: SlimPlan | None = None
    for group in groups.values():
        # The whole group, then all but its last (an attention's output projection, which
        # writes the residual stream, next to its query, key and value), then one at a time.
        trials = [group, group[:-1]] if len(group) > 2 else [group]
        for trial in [*trials, *([n] for n in group)] if len(group) > 1 else [group]:
            keep = frozenset(candidates) - {*cut, *trial}
            try:
                found = _proved(model, widths, example, keep)
            except ModelError:
                continue
            cut.extend(trial)
            if len(trial) > 1:
                break
    if found is None:
        raise failure
    return found


def _proved(
    model: nn.Module, widths: list[float], example: Tensor, keep: frozenset[str]
) -> SlimPlan:
    plan = plan_width(model, widths, example, keep)
    if not any(c != row[-1] for row in plan.channels_out for c in row):
        raise ModelError("dynamic.width: no layer is cut")
    check_prefixes(WidthModel(model, plan, widths, nn.Identity()), example)
    check_prefixes(WidthModel(scrambled(model), plan, widths, nn.Identity()), example)
    return plan


def scrambled(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with random, well-scaled weights (the original untouched).

    The proof is a property of the structure, so it must hold for any weights; on the model's
    own weights a near-degenerate part (an untrained attention whose scores are all about 0,
    so every head averages alike) can hide a cut that is not exact. Random weights of unit
    scale do not: matrices N(0, 1/fan_in), scales 1 + N(0, 0.25), shifts and BatchNorm means
    N(0, 0.25), BatchNorm variances U(0.5, 2).

    Example:
        >>> net = nn.Linear(4, 2)
        >>> torch.equal(scrambled(net).weight, net.weight)
        False
    """
    copy = deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in copy.named_parameters():
            noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(noise * 0.5 + (1.0 if name.endswith("weight") else 0.0))
        for name, b in copy.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g).to(b) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g).to(b) * 0.5)
    return copy
