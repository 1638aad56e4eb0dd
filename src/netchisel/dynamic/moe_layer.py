"""The mixture-of-experts feed-forward layer: a router, top-k routing with a capacity, and
experts that run only on the tokens sent to them.

Routing, per token (the input's last axis is the feature axis; every other axis is tokens):

1. `router` (a Linear, features -> E) gives logits; their softmax over all E experts is `p`.
2. The top-k experts by `p` are chosen by k rounds of `max` (not `torch.topk`, whose cost the
   FLOP counter has no formula for: this way every op of the layer is priced exactly).
3. Gates: `gating="softmax"` multiplies an expert's output by its probability `p_e` (Switch
   Transformer, Fedus et al. 2021); `"renorm"` by `p_e` renormalised over the k chosen
   (GShard / upcycling, Komatsuzaki et al. 2022: with identical experts the layer is then the
   dense block); `"unit"` adds the chosen experts' outputs unweighted (MoEfication, Zhang et
   al. 2022: experts are slices of one FFN, so with k = E they add up to it exactly).
4. Capacity: an expert takes at most `ceil(capacity_factor * k * T / E)` of the T tokens of a
   forward; assignments are served first choices first, then in token order (GShard's
   priority), and those over capacity are dropped: that expert contributes nothing for them
   (the residual connection around the block carries the token on). `capacity_factor=None`
   drops nothing.

Compute is really sparse: each expert gathers its tokens (`index_select`), runs on them
alone and adds its output back (`index_add_`); an expert with no token does not run. No dense
product with a mask is ever formed, so `netchisel.measure.count_flops` counts the router plus
exactly the MACs of the tokens each expert served.

Experts are `Linear(d, h_e) - activation - Linear(h_e, d, bias=False)`; the output bias is one
shared `bias` added once per token (an FFN sliced into experts keeps its own bias exactly).

In training mode the layer keeps the Switch load-balancing loss of its last forward
(`balance_loss()`: E * sum_i f_i * P_i, with f_i the fraction of the T*k assignments routed
to expert i before capacity and P_i the mean router probability of expert i; for k = 1 this
is Switch's definition) and the router z-loss (`z_loss()`: the mean over tokens of
logsumexp(logits)^2, ST-MoE, Zoph et al. 2022, which keeps the router's logits small). With
`jitter` = eps > 0, a training forward multiplies the router's input by noise drawn from
U(1 - eps, 1 + eps) (Switch's jitter; the experts see the input unchanged, eval forwards
never jitter). Every forward records its routing in `stats` (plain data):
per-expert assignments (`load`) and served tokens (`kept`), `dropped` assignments, `tokens`,
and, when `track_entropy` is set, the sum over tokens of the router's entropy (nats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError

GATINGS = ("softmax", "renorm", "unit")


def check_routing(experts: int, top_k: int, capacity_factor: float | None, where: str) -> None:
    """The checks on a routing: 1 <= k <= E and a capacity factor > 0 (None: no capacity).

    Example:
        >>> check_routing(8, 9, 1.0, "dynamic.moe")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: dynamic.moe: top_k = 9 is more than experts = 8; ...
    """
    if experts < 1:
        raise ConfigError(f"{where}: experts must be >= 1, got {experts}")
    if top_k < 1:
        raise ConfigError(f"{where}: top_k must be >= 1, got {top_k}")
    if top_k > experts:
        raise ConfigError(
            f"{where}: top_k = {top_k} is more than experts = {experts}; choose top_k <= experts"
        )
    if capacity_factor is not None and not (capacity_factor > 0 and math.isfinite(capacity_factor)):
        raise ConfigError(
            f"{where}: capacity_factor must be > 0 (or null for no capacity), got {capacity_factor}"
        )


def capacity(tokens: int, experts: int, top_k: int, capacity_factor: float | None) -> int:
    """Tokens one expert may take out of `tokens`: ceil(factor * k * T / E) (None: all T).

    Example:
        >>> capacity(10, 4, 1, 1.0), capacity(10, 4, 2, 1.25), capacity(10, 4, 2, None)
        (3, 7, 10)
    """
    if capacity_factor is None:
        return tokens
    return min(tokens, math.ceil(capacity_factor * top_k * tokens / experts))


def check_jitter(jitter: float, where: str) -> None:
    """Jitter is a fraction: 0 <= jitter < 1 (0: none).

    Example:
        >>> check_jitter(1.5, "dynamic.moe")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: dynamic.moe: jitter must be in [0, 1), got 1.5; ...
    """
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise ConfigError(
            f"{where}: jitter must be in [0, 1), got {jitter!r}; Switch uses 0.01, 0 turns it off"
        )


def make_expert(d_in: int, hidden: int, d_out: int, act: nn.Module) -> nn.Sequential:
    """One expert: Linear(d_in, hidden) - act - Linear(hidden, d_out, bias=False).

    Example:
        >>> make_expert(4, 2, 4, nn.GELU())[2].bias is None
        True
    """
    return nn.Sequential(nn.Linear(d_in, hidden), act, nn.Linear(hidden, d_out, bias=False))


class MoEFeedForward(nn.Module):
    """A feed-forward layer of `experts` (each `make_expert`-shaped) behind a Linear router.

    Example:
        >>> d = 4
        >>> experts = [make_expert(d, 3, d, nn.GELU()) for _ in range(4)]
        >>> moe = MoEFeedForward(nn.Linear(d, 4), experts, torch.zeros(d), top_k=2)
        >>> moe(torch.randn(2, 5, d)).shape, moe.stats["tokens"], sum(moe.stats["load"])
        (torch.Size([2, 5, 4]), 10, 20)
    """

    def __init__(
        self,
        router: nn.Linear,
        experts: Sequence[nn.Module],
        bias: Tensor | None,
        *,
        top_k: int = 1,
        capacity_factor: float | None = None,
        gating: str = "softmax",
        dropout: float = 0.0,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        check_routing(len(experts), top_k, capacity_factor, "MoEFeedForward")
        check_jitter(jitter, "MoEFeedForward")
        if gating not in GATINGS:
            raise ConfigError(f"MoEFeedForward: gating {gating!r} is not one of {GATINGS}")
        if router.out_features != len(experts):
            raise ConfigError(
                f"MoEFeedForward: the router has {router.out_features} outputs for "
                f"{len(experts)} experts"
            )
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.gating = gating
        self.dropout = dropout
        self.jitter = float(jitter)
        self.track_entropy = False
        self.stats: dict[str, Any] = {}

    @property
    def num_experts(self) -> int:
        """E, the number of experts."""
        return len(self.experts)

    def check_loaded(self) -> None:
        """What `__init__` checks, for a layer a manifest rebuilt (its attributes are data)."""
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ConfigError(f"MoEFeedForward: top_k must be an integer, got {self.top_k!r}")
        cf = self.capacity_factor
        if cf is not None and not (isinstance(cf, (int, float)) and math.isfinite(cf)):
            raise ConfigError(f"MoEFeedForward: capacity_factor must be a number, got {cf!r}")
        check_routing(self.num_experts, self.top_k, cf, "MoEFeedForward")
        check_jitter(getattr(self, "jitter", 0.0), "MoEFeedForward")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"MoEFeedForward: dropout must be in [0, 1), got {p!r}")
        if not isinstance(self.track_entropy, bool):
            raise ConfigError(
                f"MoEFeedForward: track_entropy must be a bool, got {self.track_entropy!r}"
            )
        if self.gating not in GATINGS:
            raise ConfigError(f"MoEFeedForward: gating {self.gating!r} is not one of {GATINGS}")
        if self.router.out_features != self.num_experts:
            raise ConfigError(
                f"MoEFeedForward: the router has {self.router.out_features} outputs for "
                f"{self.num_experts} experts"
            )

    def balance_loss(self) -> Tensor:
        """The Switch load-balancing loss of the last training forward (0 before any).

        Example:
            >>> router = nn.Linear(2, 2)
            >>> _ = nn.init.zeros_(router.weight), nn.init.constant_(router.bias, 0.0)
            >>> moe = MoEFeedForward(router, [make_expert(2, 2, 2, nn.ReLU())] * 2, None)
            >>> _ = moe.train()(torch.randn(6, 2))  # P = (0.5, 0.5), ties go to expert 0
            >>> float(moe.balance_loss())  # 2 * (1 * 0.5 + 0 * 0.5)
            1.0
        """
        loss = self.__dict__.get("_balance")
        return loss if isinstance(loss, Tensor) else torch.zeros(())

    def z_loss(self) -> Tensor:
        """The router z-loss of the last training forward (0 before any): the mean over
        tokens of logsumexp(router logits)^2 (ST-MoE, Zoph et al. 2022).

        Example:
            >>> router = nn.Linear(1, 2)
            >>> _ = nn.init.zeros_(router.weight), nn.init.zeros_(router.bias)
            >>> moe = MoEFeedForward(router, [make_expert(1, 2, 1, nn.ReLU())] * 2, None)
            >>> _ = moe.train()(torch.randn(4, 1))  # logits (0, 0): logsumexp = ln 2
            >>> round(float(moe.z_loss()), 6) == round(math.log(2) ** 2, 6)
            True
        """
        loss = self.__dict__.get("_z")
        return loss if isinstance(loss, Tensor) else torch.zeros(())

    def _choose(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """The k chosen experts per token, (k, T) long, and their gates, (k, T)."""
        left = probs
        chosen, picked = [], []
        for _ in range(self.top_k):
            value, index = left.max(dim=-1)
            chosen.append(index)
            picked.append(value)
            if len(chosen) < self.top_k:
                left = left.scatter(-1, index.unsqueeze(-1), -1.0)  # probabilities are >= 0
        experts, gates = torch.stack(chosen), torch.stack(picked)
        if self.gating == "renorm":
            gates = gates / gates.sum(0, keepdim=True)
        return experts, gates

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        tokens = flat.shape[0]
        n = self.num_experts
        routed = flat
        if self.training and getattr(self, "jitter", 0.0) > 0:
            noise = torch.empty_like(flat).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            routed = flat * noise
        logits = self.router(routed).float()
        probs = logits.softmax(dim=-1)
        chosen, gates = self._choose(probs)
        # One row per (choice, token), first choices first: the order capacity serves them in.
        hit = chosen.reshape(-1, 1) == torch.arange(n, device=x.device)
        limit = capacity(tokens, n, self.top_k, self.capacity_factor)
        kept = hit & (hit.cumsum(0) <= limit)
        load, served = torch.stack([hit.sum(0), kept.sum(0)]).tolist()
        if self.training:
            fraction = hit.float().mean(0)  # f_i over the k*T assignments (no gradient)
            self._balance = n * (fraction * probs.mean(0)).sum()
            self._z = logits.logsumexp(dim=-1).square().mean()
        row_token = torch.arange(tokens, device=x.device).repeat(self.top_k)
        flat_gates = gates.reshape(-1).to(x.dtype)
        out: Tensor | None = None
        for e, expert in enumerate(self.experts):
            if served[e] == 0:
                continue  # an expert without a token does not run
            rows = kept[:, e].nonzero().squeeze(1)
            index = row_token.index_select(0, rows)
            y = expert(flat.index_select(0, index))
            if self.gating != "unit":
                y = y * flat_gates.index_select(0, rows).unsqueeze(1)
            if out is None:
                out = flat.new_zeros((tokens, y.shape[1]))
            out.index_add_(0, index, y)
        if out is None:  # every token dropped: only the bias is left
            width = self.bias.shape[0] if self.bias is not None else shape[-1]
            out = flat.new_zeros((tokens, width))
        if self.bias is not None:
            out = out + self.bias
        if self.training and self.dropout > 0:
            out = nn.functional.dropout(out, self.dropout)
        self.stats = {
            "tokens": tokens,
            "load": load,
            "kept": served,
            "dropped": sum(load) - sum(served),
        }
        if self.track_entropy:
            with torch.no_grad():
                entropy = -(probs * probs.clamp_min(1e-30).log()).sum()
            self.stats["entropy_sum"] = float(entropy)
        return out.reshape(*shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, gating={self.gating!r}, "
            f"jitter={getattr(self, 'jitter', 0.0)}"
        )
