"""`factorize.tucker`: a kxk Conv2d becomes 1x1 -> kxk -> 1x1 convs (Tucker-2).

The weight W (out, in, kh, kw) is decomposed along its two channel modes only:
W ~ core x_0 U_out x_1 U_in, core (r_out, r_in, kh, kw), U_out (out, r_out), U_in (in, r_in)
(Kim et al. 2016, "Compression of deep convolutional neural networks for fast and low power
mobile applications"). As modules: a 1x1 conv in -> r_in with weight U_in^T, the kxk conv
r_in -> r_out with the core (the layer's stride, padding, dilation and padding mode), and a
1x1 conv r_out -> out with weight U_out and the layer's bias. Plain `nn.Conv2d`s in an
`nn.Sequential`, so artifacts, FLOPs and latency need nothing new.

The decomposition is tensorly's `partial_tucker` (HOSVD initialisation, then HOOI iterations),
run on its PyTorch backend in float64; tensorly is an optional extra, imported on first use.

Ranks: `ranks` given, or the smallest ranks keeping `energy` of each channel unfolding's
squared singular values, or (`param_ratio`) the pair within the parameter budget that keeps
the most energy of the two unfoldings together. Grouped and depthwise convs and 1x1 convs
(a 1x1 conv is a matrix: its Tucker-2 is an SVD with an extra 1x1 conv) are skipped, as are
layers where the ranks would not save parameters; the record says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.factorize.convs import (
    ConvRewriteConfig,
    conv_geometry,
    params_of,
    relative_error,
    rewrite_convs_,
)
from netchisel.factorize.rank import (
    check_one_criterion,
    check_ratio,
    check_recalibration,
    energy_kept,
    rank_for_energy,
)

DEFAULT_PARAM_RATIO = 0.5


@dataclass(frozen=True)
class TuckerConfig(ConvRewriteConfig):
    """Replace kxk Conv2d layers by a Tucker-2 1x1 -> kxk -> 1x1 sequence.

    The ranks (r_in, r_out) of each layer come from one of (at most one may be set; none
    means `param_ratio=0.5`):

    - `ranks`: [r_in, r_out] for every chosen layer; larger than the layer's channels is an
      error;
    - `energy`: per channel mode, the smallest rank keeping this fraction of the squared
      singular values of that mode's unfolding;
    - `param_ratio`: the ranks within this fraction of the layer's parameters that keep the
      most energy of both unfoldings.

    `iterations`: HOOI iterations after the HOSVD start. `layers`, `exclude`,
    `recalibrate_bn`: as for every conv rewrite (`ConvRewriteConfig`).

    Example:
        >>> TuckerConfig(ranks=(8, 16)).ranks
        (8, 16)
    """

    NAME: ClassVar[str] = "factorize.tucker"

    ranks: tuple[int, ...] | None = None
    energy: float | None = None
    param_ratio: float | None = None
    iterations: int = 20

    def validate(self) -> None:
        check_one_criterion(
            STAGE, ranks=self.ranks, energy=self.energy, param_ratio=self.param_ratio
        )
        if self.ranks is not None and (len(self.ranks) != 2 or min(self.ranks) < 1):
            raise ConfigError(
                f"{STAGE}: ranks must be two integers >= 1 ([r_in, r_out]), got {list(self.ranks)}"
            )
        check_ratio(STAGE, "energy", self.energy)
        check_ratio(STAGE, "param_ratio", self.param_ratio)
        if self.iterations < 1:
            raise ConfigError(f"{STAGE}: iterations must be >= 1, got {self.iterations}")
        check_recalibration(STAGE, self.recalibrate_bn)


STAGE = TuckerConfig.NAME


def tucker_params(conv: nn.Conv2d, r_in: int, r_out: int) -> int:
    """Parameters of the Tucker-2 replacement of `conv` at ranks (r_in, r_out).

    Example:
        >>> tucker_params(nn.Conv2d(16, 32, 3, bias=False), 4, 8)  # 16*4 + 4*8*9 + 8*32
        608
    """
    kh, kw = conv.kernel_size
    bias = conv.out_channels if conv.bias is not None else 0
    return conv.in_channels * r_in + r_in * r_out * kh * kw + r_out * conv.out_channels + bias


def unfolding_spectra(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values of the input-channel and output-channel unfoldings of a conv weight."""
    w = weight.detach().double()
    s_out = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
    s_in = torch.linalg.svdvals(w.transpose(0, 1).reshape(w.shape[1], -1))
    return s_in, s_out


def ranks_for_params(conv: nn.Conv2d, s_in: Tensor, s_out: Tensor, ratio: float) -> tuple[int, int]:
    """The (r_in, r_out) with at most `ratio` of the layer's parameters that keep the most
    energy of the two unfoldings (sum of the two kept fractions); (0, 0) if none fits."""
    c_in, c_out = conv.in_channels, conv.out_channels
    budget = int(ratio * params_of(conv))
    r_in = torch.arange(1, c_in + 1)[:, None]
    r_out = torch.arange(1, c_out + 1)[None, :]
    kh, kw = conv.kernel_size
    bias = c_out if conv.bias is not None else 0
    params = c_in * r_in + r_in * r_out * kh * kw + r_out * c_out + bias
    e_in = _cumulative_energy(s_in, c_in)[:, None]
    e_out = _cumulative_energy(s_out, c_out)[None, :]
    # Ties (flat spectra) go to the fewer parameters.
    score = (e_in + e_out) - params.double() * 1e-12
    score = score.masked_fill(params > budget, -1.0)
    if float(score.max()) < 0:
        return 0, 0
    best = int(score.argmax())
    return best // c_out + 1, best % c_out + 1


def _cumulative_energy(s: Tensor, length: int) -> Tensor:
    squares = s.double().pow(2)
    total = float(squares.sum()) or 1.0
    out = torch.ones(length, dtype=torch.float64)
    kept = torch.cumsum(squares, 0)[:length] / total
    out[: len(kept)] = kept
    return out


def tucker2_factors(weight: Tensor, r_in: int, r_out: int, iterations: int) -> tuple[Tensor, ...]:
    """(core, u_in, u_out) of the Tucker-2 decomposition of a conv weight, in W's dtype.

    core (r_out, r_in, kh, kw), u_in (in, r_in), u_out (out, r_out); HOSVD start, then HOOI.

    Example:
        >>> w = torch.randn(6, 4, 3, 3)
        >>> [tuple(t.shape) for t in tucker2_factors(w, 4, 6, 1)]
        [(6, 4, 3, 3), (4, 4), (6, 6)]
    """
    tensorly, partial_tucker = _tensorly()
    with tensorly.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(
            weight.detach().double(),
            rank=[r_out, r_in],
            modes=[0, 1],
            init="svd",
            n_iter_max=iterations,
            tol=0.0,
        )
    return tuple(t.to(weight.dtype).contiguous() for t in (core, u_in, u_out))


def _tensorly() -> tuple[Any, Any]:
    try:
        import tensorly  # type: ignore[import-untyped, unused-ignore]
        from tensorly.decomposition import partial_tucker  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise ConfigError(f"{STAGE} needs tensorly: pip install 'netchisel[factorize]'") from None
    return tensorly, partial_tucker


def tucker_conv(conv: nn.Conv2d, core: Tensor, u_in: Tensor, u_out: Tensor) -> nn.Sequential:
    """`Sequential(1x1 in->r_in, kxk r_in->r_out, 1x1 r_out->out)` holding the factors."""
    r_out, r_in = core.shape[:2]
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(r_in, r_out, bias=False, **conv_geometry(conv))
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u_in.T[:, :, None, None])
        middle.weight.copy_(core)
        last.weight.copy_(u_out[:, :, None, None])
        if conv.bias is not None and last.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


@register(TuckerConfig)
def factorize_tucker(model: nn.Module, config: TuckerConfig, ctx: Context) -> nn.Module:
    """Replace each chosen kxk Conv2d by its Tucker-2 decomposition as three convs.

    Every replacement is built before any is swapped in, so an error (ranks larger than a
    layer) leaves the model unchanged. Records each layer's ranks, kept energy of both
    unfoldings, relative weight error and parameters, the layers skipped and why.
    """

    def rewrite(name: str, conv: nn.Conv2d) -> tuple[nn.Module, dict[str, Any]] | str:
        r_in, r_out = _ranks(name, conv, config)
        if r_in == 0:
            return f"param_ratio {ratio_of(config)} leaves no room for ranks (1, 1)"
        before, after = params_of(conv), tucker_params(conv, r_in, r_out)
        if after >= before:
            return f"ranks ({r_in}, {r_out}) would not reduce parameters ({after:,} >= {before:,})"
        core, u_in, u_out = tucker2_factors(conv.weight, r_in, r_out, config.iterations)
        approx = torch.einsum("abhw,oa,ib->oihw", core.double(), u_out.double(), u_in.double())
        s_in, s_out = unfolding_spectra(conv.weight)
        return tucker_conv(conv, core, u_in, u_out), {
            "ranks": [r_in, r_out],
            "shape": list(conv.weight.shape),
            "energy_kept": [energy_kept(s_in, r_in), energy_kept(s_out, r_out)],
            "weight_relative_error": relative_error(approx, conv.weight),
        }

    return rewrite_convs_(model, config, ctx, STAGE, rewrite)


def ratio_of(config: TuckerConfig) -> float:
    """The parameter budget in use: `param_ratio`, or the default when no criterion is set."""
    return config.param_ratio if config.param_ratio is not None else DEFAULT_PARAM_RATIO


def _ranks(name: str, conv: nn.Conv2d, config: TuckerConfig) -> tuple[int, int]:
    c_in, c_out = conv.in_channels, conv.out_channels
    if config.ranks is not None:
        r_in, r_out = config.ranks
        for what, value, limit in (("r_in", r_in, c_in), ("r_out", r_out, c_out)):
            if value > limit:
                raise ConfigError(
                    f"{STAGE}: {what} {value} is larger than layer {name!r} allows "
                    f"({limit} {'input' if what == 'r_in' else 'output'} channels): lower "
                    "ranks or exclude the layer"
                )
        return r_in, r_out
    s_in, s_out = unfolding_spectra(conv.weight)
    if config.energy is not None:
        return rank_for_energy(s_in, config.energy), rank_for_energy(s_out, config.energy)
    return ranks_for_params(conv, s_in, s_out, ratio_of(config))
