"""`factorize.cp`: a kxk Conv2d becomes 1x1 -> depthwise kxk -> 1x1 convs (CP, rank R).

Lebedev et al. 2015 ("Speeding-up convolutional neural networks using fine-tuned
CP-decomposition") write the 4-way weight W (out, in, kh, kw) as a sum of R rank-one terms
a_out o a_in o a_h o a_w and run it as four convs: 1x1 in -> R, a kx1 and a 1xk depthwise
conv on R channels, 1x1 R -> out. Here the two spatial modes stay together: W, read as the
3-way tensor (out, in, kh*kw), is a sum of R terms a_out[:, r] o a_in[:, r] o k_r, where k_r
is any kxk filter instead of the outer product of a column and a row. As modules: a 1x1 conv
in -> R (weight a_in^T), a depthwise kxk conv on R channels (filter k_r on channel r, with the
layer's stride, padding, dilation and padding mode) and a 1x1 conv R -> out (a_out and the
layer's bias). Why this form rather than Lebedev's four convs:

- it is exact for more weights at the same rank (a kxk filter per term, not a rank-1 one) for
  kh*kw - kh - kw more weights per term: 3 for 3x3, small next to in + out;
- three convs instead of four, and the stride stays on one conv;
- it is the block shape MobileNet runs (1x1, depthwise, 1x1).

Half the MACs is not half the time: at half the parameters of ResNet-20's in = out convs, R is
1.75-2.1x their channel count, and the CP model runs slower than the original on one CPU
thread (`bench/results/factorize_resnet.json`); measure before choosing it over Tucker or
separable.

The decomposition is tensorly's `parafac` (alternating least squares from an SVD start, then
`iterations` sweeps) on its PyTorch backend in float64; the scale of each term is spread
evenly over its three factors, which keeps them alike for the recovery training. A best
rank-R CP approximation need not exist (de Silva & Lim 2008) and ALS finds a local one, so
each layer's relative weight error is recorded, and the rewritten model needs recovery
(`distill`, as after every rewrite).

Rank: `rank` for every layer, or the largest R within `param_ratio` of the layer's parameters
(0.5 when neither is given): R (in + kh kw + out) + bias <= ratio x params. Unlike Tucker's
ranks, R may exceed the channel counts; it may not exceed min(out in, out kh kw, in kh kw), the
largest CP rank a tensor of that shape can have. Grouped, depthwise and 1x1 convs and layers
where R would not save parameters are skipped; the record says which and why.
"""

from __future__ import annotations

import warnings
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
    rank_for_budget,
)

DEFAULT_PARAM_RATIO = 0.5


@dataclass(frozen=True)
class CPConfig(ConvRewriteConfig):
    """Replace kxk Conv2d layers by a rank-R CP 1x1 -> depthwise kxk -> 1x1 sequence.

    The rank of each layer comes from one of (at most one may be set; none means
    `param_ratio=0.5`):

    - `rank`: the same R for every chosen layer; above the largest CP rank of the layer's
      weight shape, min(out in, out kh kw, in kh kw), it is an error;
    - `param_ratio`: the largest R whose three convs have at most this fraction of the
      layer's parameters.

    `iterations`: ALS sweeps after the SVD start. `layers`, `exclude`, `recalibrate_bn`: as
    for every conv rewrite (`ConvRewriteConfig`).

    Example:
        >>> CPConfig(rank=24).iterations
        100
    """

    NAME: ClassVar[str] = "factorize.cp"

    rank: int | None = None
    param_ratio: float | None = None
    iterations: int = 100

    def validate(self) -> None:
        check_one_criterion(STAGE, rank=self.rank, param_ratio=self.param_ratio)
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"{STAGE}: rank must be >= 1, got {self.rank}")
        check_ratio(STAGE, "param_ratio", self.param_ratio)
        if self.iterations < 1:
            raise ConfigError(f"{STAGE}: iterations must be >= 1, got {self.iterations}")
        check_recalibration(STAGE, self.recalibrate_bn)


STAGE = CPConfig.NAME


def cp_params(conv: nn.Conv2d, rank: int) -> int:
    """Parameters of the rank-`rank` CP replacement of `conv`.

    Example:
        >>> cp_params(nn.Conv2d(16, 32, 3, bias=False), 10)  # 10 * (16 + 9 + 32)
        570
    """
    kh, kw = conv.kernel_size
    bias = conv.out_channels if conv.bias is not None else 0
    return rank * (conv.in_channels + kh * kw + conv.out_channels) + bias


def max_cp_rank(weight_shape: torch.Size | tuple[int, ...]) -> int:
    """The largest CP rank a conv weight (out, in, kh, kw), as (out, in, kh*kw), can have.

    Example:
        >>> max_cp_rank((16, 16, 3, 3))  # min(256, 144, 144)
        144
    """
    out, c_in, kh, kw = weight_shape
    return min(out * c_in, out * kh * kw, c_in * kh * kw)


def cp_factors(weight: Tensor, rank: int, iterations: int) -> tuple[Tensor, Tensor, Tensor]:
    """(a_out (out, R), a_in (in, R), a_k (kh*kw, R)) with W[o, i, k] ~ sum_r of their products.

    In W's dtype; the columns of the three factors of each term have equal norms.

    Example (seeded: about 1 random rank-2 draw in 20 needs more than 50 iterations):
        >>> _ = torch.manual_seed(0)
        >>> w = torch.einsum("or,ir,kr->oik", *(torch.randn(n, 2) for n in (6, 4, 9)))
        >>> a_out, a_in, a_k = cp_factors(w.reshape(6, 4, 3, 3), 2, 50)
        >>> bool(torch.allclose(torch.einsum("or,ir,kr->oik", a_out, a_in, a_k), w, atol=1e-4))
        True
    """
    tensorly, parafac = _tensorly()
    out, c_in, kh, kw = weight.shape
    tensor = weight.detach().double().reshape(out, c_in, kh * kw)
    with tensorly.backend_context("pytorch"), warnings.catch_warnings():
        # A rank above a mode's size: tensorly pads that SVD start with random columns, as
        # intended here, and warns about it.
        warnings.filterwarnings("ignore", "Trying to compute SVD with n_eigenvecs")
        weights, factors = parafac(
            tensor, rank, n_iter_max=iterations, init="svd", tol=0.0, random_state=0
        )
    norms = [f.norm(dim=0).clamp_min(1e-30) for f in factors]
    scale = (weights.abs() * norms[0] * norms[1] * norms[2]) ** (1.0 / 3.0)
    a_out, a_in, a_k = (f / n * scale for f, n in zip(factors, norms, strict=True))
    a_out = a_out * weights.sign()
    return a_out.to(weight.dtype), a_in.to(weight.dtype), a_k.to(weight.dtype)


def _tensorly() -> tuple[Any, Any]:
    try:
        import tensorly  # type: ignore[import-untyped, unused-ignore]
        from tensorly.decomposition import parafac  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise ConfigError(f"{STAGE} needs tensorly: pip install 'netchisel[factorize]'") from None
    return tensorly, parafac


def cp_conv(conv: nn.Conv2d, a_out: Tensor, a_in: Tensor, a_k: Tensor) -> nn.Sequential:
    """`Sequential(1x1 in->R, depthwise kxk on R, 1x1 R->out)` holding the factors."""
    rank = a_out.shape[1]
    first = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
    middle = nn.Conv2d(rank, rank, groups=rank, bias=False, **conv_geometry(conv))
    last = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(a_in.T[:, :, None, None])
        middle.weight.copy_(a_k.T.reshape(rank, 1, *conv.kernel_size))
        last.weight.copy_(a_out[:, :, None, None])
        if conv.bias is not None and last.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


@register(CPConfig)
def factorize_cp(model: nn.Module, config: CPConfig, ctx: Context) -> nn.Module:
    """Replace each chosen kxk Conv2d by its rank-R CP decomposition as three convs.

    Every replacement is built before any is swapped in, so an error (a rank above what a
    layer can have) leaves the model unchanged. Records each layer's rank, relative weight
    error and parameters, the layers skipped and why.
    """

    def rewrite(name: str, conv: nn.Conv2d) -> tuple[nn.Module, dict[str, Any]] | str:
        before = params_of(conv)
        rank = _rank(name, conv, config)
        if rank == 0:
            return (
                f"param_ratio {config.param_ratio or DEFAULT_PARAM_RATIO} leaves no room for rank 1"
            )
        after = cp_params(conv, rank)
        if after >= before:
            return f"rank {rank} would not reduce parameters ({after:,} >= {before:,})"
        a_out, a_in, a_k = cp_factors(conv.weight, rank, config.iterations)
        approx = torch.einsum("or,ir,kr->oik", a_out.double(), a_in.double(), a_k.double())
        return cp_conv(conv, a_out, a_in, a_k), {
            "rank": rank,
            "shape": list(conv.weight.shape),
            "weight_relative_error": relative_error(approx.reshape(conv.weight.shape), conv.weight),
        }

    return rewrite_convs_(model, config, ctx, STAGE, rewrite)


def _rank(name: str, conv: nn.Conv2d, config: CPConfig) -> int:
    if config.rank is None:
        ratio = config.param_ratio if config.param_ratio is not None else DEFAULT_PARAM_RATIO
        fixed = cp_params(conv, 0)  # the bias
        return rank_for_budget(params_of(conv), ratio, fixed, cp_params(conv, 1) - fixed)
    limit = max_cp_rank(conv.weight.shape)
    if config.rank > limit:
        out, c_in, kh, kw = conv.weight.shape
        raise ConfigError(
            f"{STAGE}: rank {config.rank} is larger than layer {name!r} allows (a "
            f"{out}x{c_in}x{kh * kw} weight has CP rank <= {limit}): lower rank or exclude "
            "the layer"
        )
    return config.rank
