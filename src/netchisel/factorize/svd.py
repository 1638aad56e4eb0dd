"""`factorize.svd`: a Linear becomes two Linears, W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T).

The truncated SVD is the best rank-r approximation of W in Frobenius and spectral norm
(Eckart & Young 1936); splitting sqrt(S) between the two factors keeps their scales alike,
which helps the recovery training afterwards (Denton et al. 2014 factor conv/fc layers the
same way). The replacement is `nn.Sequential(Linear(in, r, bias=False), Linear(r, out))`:
plain torch modules, so artifacts, FLOPs and latency need nothing new. It has r * (in + out)
weights instead of in * out, fewer only when r < in * out / (in + out); layers where the
chosen rank would not save parameters are left as they are and the record says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.modules import select_modules
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.factorize.rank import (
    check_one_criterion,
    check_ratio,
    energy_kept,
    rank_for_budget,
    rank_for_energy,
    swap_all,
)

DEFAULT_PARAM_RATIO = 0.5


@dataclass(frozen=True)
class SVDConfig(StageConfig):
    """Replace Linear layers by two thinner Linears (truncated SVD).

    The rank of each layer comes from one of (at most one may be set; none means
    `param_ratio=0.5`):

    - `rank`: the same rank for every chosen layer; larger than min(in, out) is an error;
    - `energy`: the smallest rank keeping this fraction of sum(s^2) of the layer's weight;
    - `param_ratio`: the largest rank whose two Linears (weights and bias) have at most this
      fraction of the layer's parameters.

    `layers` / `exclude`: regexes over module names (full match), as everywhere.

    Example:
        >>> SVDConfig(param_ratio=0.25).rank_for(torch.ones(4), 64, 64, True)
        7
    """

    NAME: ClassVar[str] = "factorize.svd"

    rank: int | None = None
    energy: float | None = None
    param_ratio: float | None = None
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        check_one_criterion(STAGE, rank=self.rank, energy=self.energy, param_ratio=self.param_ratio)
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"{STAGE}: rank must be >= 1, got {self.rank}")
        check_ratio(STAGE, "energy", self.energy)
        check_ratio(STAGE, "param_ratio", self.param_ratio)

    def rank_for(
        self, singular_values: Tensor, in_features: int, out_features: int, bias: bool
    ) -> int:
        """The rank this config chooses for a layer with these sizes and singular values."""
        if self.rank is not None:
            return self.rank
        if self.energy is not None:
            return rank_for_energy(singular_values, self.energy)
        ratio = self.param_ratio if self.param_ratio is not None else DEFAULT_PARAM_RATIO
        return rank_for_params(in_features, out_features, bias, ratio)


STAGE = SVDConfig.NAME


def rank_for_params(in_features: int, out_features: int, bias: bool, ratio: float) -> int:
    """Largest r with r * (in + out) + bias <= ratio * (in * out + bias); 0 if none fits.

    The kept fraction is <= `ratio` exactly (`rank_for_budget`).

    Example:
        >>> rank_for_params(512, 128, True, 0.5)
        51
    """
    b = out_features if bias else 0
    return rank_for_budget(in_features * out_features + b, ratio, b, in_features + out_features)


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """(first, second, s): first (rank, in) and second (out, rank) with second @ first ~ W.

    Computed in float64 and returned in W's dtype; `s` holds all singular values.

    Example:
        >>> w = torch.randn(6, 4)
        >>> a, b, s = svd_factors(w, 4)
        >>> bool(torch.allclose(b @ a, w, atol=1e-5))
        True
    """
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    second = u[:, :rank] * root[None, :]
    return first.to(weight.dtype), second.to(weight.dtype), s


def factorized_linear(layer: nn.Linear, first: Tensor, second: Tensor) -> nn.Sequential:
    """`Sequential(Linear(in, r, bias=False), Linear(r, out))` holding the two factors."""
    rank = first.shape[0]
    down = nn.Linear(layer.in_features, rank, bias=False)
    up = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        down.weight.copy_(first)
        up.weight.copy_(second)
        if layer.bias is not None:
            up.bias.copy_(layer.bias)
    return nn.Sequential(down, up)


def linear_params(layer: nn.Linear) -> int:
    return sum(p.numel() for p in layer.parameters())


@register(SVDConfig)
def factorize_svd(model: nn.Module, config: SVDConfig, ctx: Context) -> nn.Module:
    """Replace each chosen Linear by two Linears from its truncated SVD.

    Every replacement is built before any is swapped in, so an error (a rank larger than a
    layer) leaves the model unchanged. Records each layer's rank, kept energy and
    parameters, the layers skipped and why, and the totals.
    """
    chosen = select_modules(model, (nn.Linear,), config.layers, config.exclude)
    if not chosen:
        raise ConfigError(f"{STAGE}: the model has no nn.Linear layer to factorize")
    replacements: dict[str, nn.Module] = {}
    done: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, layer in chosen.items():
        assert isinstance(layer, nn.Linear)
        n_in, n_out = layer.in_features, layer.out_features
        if config.rank is not None and config.rank > min(n_in, n_out):
            raise ConfigError(
                f"{STAGE}: rank {config.rank} is larger than layer {name!r} allows "
                f"(min(in, out) = min({n_in}, {n_out}) = {min(n_in, n_out)}): lower rank "
                "or exclude the layer"
            )
        first, second, s = svd_factors(layer.weight, min(n_in, n_out))
        rank = config.rank_for(s, n_in, n_out, layer.bias is not None)
        before = linear_params(layer)
        if rank == 0:
            skipped[name] = (
                f"param_ratio {config.param_ratio or DEFAULT_PARAM_RATIO} leaves no room for rank 1"
            )
            continue
        after = rank * (n_in + n_out) + (n_out if layer.bias is not None else 0)
        if after >= before:
            skipped[name] = (
                f"rank {rank} would not reduce parameters ({after:,} >= {before:,}; "
                f"needs rank < {n_in * n_out / (n_in + n_out):.1f})"
            )
            continue
        replacements[name] = factorized_linear(layer, first[:rank], second[:, :rank])
        done[name] = {
            "rank": rank,
            "shape": [n_out, n_in],
            "energy_kept": energy_kept(s, rank),
            "params_before": before,
            "params_after": after,
        }
    with restored_on_error(model):  # a swap that fails midway (a device move) undoes itself
        swap_all(model, replacements)
    record_totals(ctx, done, skipped)
    return model


def record_totals(ctx: Context, done: dict[str, dict[str, Any]], skipped: dict[str, str]) -> None:
    """The record every factorize stage writes: per-layer entries, skips, parameter totals."""
    before = sum(d["params_before"] for d in done.values())
    after = sum(d["params_after"] for d in done.values())
    ctx.record(
        factorized=done,
        skipped=skipped,
        layers_factorized=len(done),
        params_before=before,
        params_after=after,
        param_ratio=after / before if before else 1.0,
    )
