"""Turning a dense feed-forward block into experts: MoEfication's split, upcycling, scratch.

- `coactivation_groups` (MoEfication, Zhang et al. 2022): each hidden unit is described by
  its activation pattern over calibration tokens (the positive part of `act(fc_in(x))`,
  scaled to unit length, so the dot product of two units is how much they fire together),
  and the units are clustered into E groups of equal size by balanced k-means: spherical
  k-means whose assignment step fills the clusters greedily, most similar (unit, centroid)
  pair first, each up to its size. The paper builds a co-activation graph and partitions it
  with METIS; balanced k-means on the same patterns is the dependency-free stand-in (the
  groups are what matters: units that fire together land in the same expert).
- `sliced_experts`: expert e is the rows `groups[e]` of `fc_in` (and its bias) and the same
  columns of `fc_out`, so the experts' outputs add up to the dense block's exactly; the
  dense output bias becomes the layer's shared bias.
- `upcycled_experts` (Komatsuzaki et al. 2022): every expert a copy of the whole dense block.
- `scratch_experts`: fresh experts of a given width, drawn from a normal with the standard
  deviation of the dense block's weights (its init scale when the model is untrained), so a
  MoE trained from scratch starts at the scale of the dense model it is compared with.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from netchisel.core.state import seeded
from netchisel.dynamic.moe_blocks import FeedForward
from netchisel.dynamic.moe_layer import make_expert


def balanced_kmeans(features: Tensor, groups: int, iterations: int = 20) -> list[list[int]]:
    """Rows of `features` clustered into `groups` of sizes differing by at most 1 (spherical
    k-means from a farthest-point start, greedy balanced assignment), each group sorted; seed
    the caller's generator.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
        >>> sorted(balanced_kmeans(f, 2))
        [[0, 2], [1, 3]]
    """
    n = features.shape[0]
    # Row-major: a transposed input (units x tokens) makes every step below ~20x slower.
    unit = nn.functional.normalize(features.double().contiguous(), dim=1)
    sizes = [n // groups + (1 if g < n % groups else 0) for g in range(groups)]
    # Farthest-point start (k-means++ without the sampling): a random first row, then each
    # time the row least similar to every centroid so far; balanced greedy assignment from
    # a start with two centroids in one cluster can settle in a bad split.
    picks = [int(torch.randint(n, ()))]
    for _ in range(groups - 1):
        closest = (unit @ unit[picks].T).max(dim=1).values
        closest[picks] = float("inf")
        picks.append(int(closest.argmin()))
    centroids = unit[picks].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        similarity = unit @ centroids.T
        order = similarity.flatten().argsort(descending=True).tolist()
        room = list(sizes)
        new = [-1] * n
        left = n
        for flat in order:
            row, group = divmod(flat, groups)
            if new[row] < 0 and room[group] > 0:
                new[row] = group
                room[group] -= 1
                left -= 1
                if left == 0:
                    break
        new_assign = torch.tensor(new)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        for g in range(groups):
            members = unit[assign == g]
            centroids[g] = nn.functional.normalize(members.sum(0), dim=0)
    return [sorted((assign == g).nonzero().squeeze(1).tolist()) for g in range(groups)]


def linears(expert: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """An expert's first and last Linear."""
    found = [m for m in expert.modules() if isinstance(m, nn.Linear)]
    return found[0], found[-1]


def hidden_activations(ffn: FeedForward, inputs: Tensor) -> Tensor:
    """act(fc_in(x)) of the block on `inputs` (tokens, d), without grad."""
    with torch.no_grad():
        return ffn.act(ffn.fc_in(inputs))  # type: ignore[no-any-return]


def coactivation_groups(
    ffn: FeedForward, inputs: Tensor, experts: int, seed: int
) -> list[list[int]]:
    """The block's hidden units in `experts` equal groups of units that fire together.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        >>> ffn = FeedForward("", block[0], block[1], block[2], 0.0)
        >>> [len(g) for g in coactivation_groups(ffn, torch.randn(64, 4), 4, seed=0)]
        [2, 2, 2, 2]
    """
    hidden = hidden_activations(ffn, inputs).float().clamp_min(0.0)
    with seeded(seed):
        return balanced_kmeans(hidden.T, experts)


def sliced_experts(ffn: FeedForward, groups: list[list[int]]) -> list[nn.Sequential]:
    """Expert e: rows `groups[e]` of fc_in (weight and bias) and those columns of fc_out.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
        >>> ffn = FeedForward("", block[0], block[1], block[2], 0.0)
        >>> [e[0].out_features for e in sliced_experts(ffn, [[0, 1], [2, 3, 4, 5]])]
        [2, 4]
    """
    w_in, w_out = ffn.fc_in.weight.detach(), ffn.fc_out.weight.detach()
    b_in = ffn.fc_in.bias.detach() if ffn.fc_in.bias is not None else None
    out = []
    for units in groups:
        index = torch.tensor(units, dtype=torch.long, device=w_in.device)
        expert = make_expert(
            ffn.fc_in.in_features, len(units), ffn.fc_out.out_features, copy.deepcopy(ffn.act)
        ).to(w_in.device, w_in.dtype)
        first, last = linears(expert)
        with torch.no_grad():
            first.weight.copy_(w_in.index_select(0, index))
            if b_in is not None:
                first.bias.copy_(b_in.index_select(0, index))
            else:
                first.bias.zero_()
            last.weight.copy_(w_out.index_select(1, index))
        out.append(expert)
    return out


def upcycled_experts(ffn: FeedForward, experts: int) -> list[nn.Sequential]:
    """`experts` copies of the whole dense block (its output bias goes to the layer)."""
    return sliced_experts(ffn, [list(range(ffn.hidden))] * experts)


def scratch_experts(ffn: FeedForward, experts: int, hidden: int, seed: int) -> list[nn.Sequential]:
    """`experts` fresh experts of width `hidden`, at the dense block's weight scale.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
        >>> ffn = FeedForward("", block[0], block[1], block[2], 0.0)
        >>> [tuple(e[2].weight.shape) for e in scratch_experts(ffn, 2, 3, seed=0)]
        [(4, 3), (4, 3)]
    """
    w_in, w_out = ffn.fc_in.weight.detach(), ffn.fc_out.weight.detach()
    std_in, std_out = float(w_in.float().std()), float(w_out.float().std())
    out = []
    with seeded(seed):
        for _ in range(experts):
            expert = make_expert(
                ffn.fc_in.in_features, hidden, ffn.fc_out.out_features, copy.deepcopy(ffn.act)
            ).to(w_in.device, w_in.dtype)
            first, last = linears(expert)
            with torch.no_grad():
                nn.init.normal_(first.weight, 0.0, std_in)
                nn.init.zeros_(first.bias)
                nn.init.normal_(last.weight, 0.0, std_out)
            out.append(expert)
    return out


def fresh_router(d: int, experts: int, like: Tensor, seed: int) -> nn.Linear:
    """A Linear(d, experts) router: weights N(0, 0.02) (small logits: near-uniform routing at
    first, as Switch's scaled-down initialisation), bias 0."""
    router = nn.Linear(d, experts).to(like.device, like.dtype)
    with seeded(seed), torch.no_grad():
        nn.init.normal_(router.weight, 0.0, 0.02)
        nn.init.zeros_(router.bias)
    return router
