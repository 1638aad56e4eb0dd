"""Quantization as pure tensor functions: affine (choose scales, quantize, dequantize) and
k-means weight sharing (a codebook and an index per weight).

A real value `w` is stored as an integer `q` with `w ~ (q - zero) * scale`. Symmetric
quantization fixes `zero = 0` and uses the signed range; asymmetric uses `[0, 2**bits - 1]`
with an integer zero point. Scales are per tensor, per output channel (row), or per group of
`group_size` consecutive inputs of a row, always over the weight flattened to
`[rows, inputs]` so Linear and Conv weights are handled alike. A row whose width the group
size does not divide is padded with zero inputs (`pad_to_groups`) where the format stores it
so, and refused elsewhere (`grouped`).

Written here because the algorithms (RTN, GPTQ, AWQ, QAT, mixed precision, k-means) need the
same small functions with any bit width 1-8 and any scale chooser; torchao's equivalents are
tied to its tensor subclasses, and no library clusters weights in 1-D with the paper's inits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from netchisel.core.errors import ConfigError

Granularity = Literal["tensor", "channel", "group"]
ScaleMethod = Literal["minmax", "percentile", "mse"]
SCALE_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
Init = Literal["linear", "density", "random"]  # k-means initialisations
DEFAULT_GROUP_SIZE = 128
"""Inputs per scale below 8 bits when a config does not say (GPTQ's and AWQ's choice)."""


@dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized: bit width, symmetry and scale granularity.

    Example:
        >>> QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32).levels
        16
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "channel"
    group_size: int = DEFAULT_GROUP_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"bits={self.bits} is outside 1-8")
        if self.symmetric and self.bits < 2:
            raise ConfigError("symmetric 1-bit has no zero level: use symmetric=false or binary")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ConfigError(f"granularity {self.granularity!r} is not tensor, channel or group")
        if self.granularity == "group" and self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size} must be >= 1")

    @property
    def levels(self) -> int:
        return int(2**self.bits)

    @property
    def qmin(self) -> int:
        return int(-(2 ** (self.bits - 1))) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return int(2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1)

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.int8 if self.symmetric else torch.uint8


def grouped(w: Tensor, spec: QuantSpec) -> Tensor:
    """View `w` as `[rows, groups, group]`: the last axis shares one scale.

    Example:
        >>> grouped(torch.zeros(4, 8), QuantSpec(granularity="group", group_size=2)).shape
        torch.Size([4, 4, 2])
    """
    rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    if spec.granularity == "tensor":
        return rows.reshape(1, 1, -1)
    if spec.granularity == "channel":
        return rows.unsqueeze(1)
    if rows.shape[1] % spec.group_size:
        raise ConfigError(
            f"group_size {spec.group_size} does not divide the {rows.shape[1]} inputs per row; "
            "choose a divisor or pad the weight (the quantized modules pad for you)"
        )
    return rows.reshape(rows.shape[0], -1, spec.group_size)


def group_padding(columns: int, spec: QuantSpec) -> int:
    """Zero inputs to append to a row of `columns` so that whole groups tile it (0 unless the
    spec is grouped).

    Example:
        >>> group_padding(100, QuantSpec(granularity="group", group_size=32))
        28
    """
    return -columns % spec.group_size if spec.granularity == "group" else 0


def pad_to_groups(w: Tensor, spec: QuantSpec) -> Tensor:
    """`w` (`[rows, inputs]`) with zero inputs appended up to a multiple of the group size.

    Example:
        >>> pad_to_groups(torch.ones(1, 3), QuantSpec(granularity="group", group_size=2)).tolist()
        [[1.0, 1.0, 1.0, 0.0]]
    """
    pad = group_padding(w.shape[-1], spec)
    return F.pad(w, (0, pad)) if pad else w


def symmetric_steps(spec: QuantSpec) -> float:
    """How many steps of the scale a symmetric grid puts between 0 and the largest |value|.

    Below 8 bits the grid uses all of its 2**bits levels: `amax` maps to `qmax + 1/2` steps,
    so -amax lands on qmin and +amax rounds to qmax with an error of half a step, no more
    than any other value's (the divisor of compressed-tensors, llm-compressor and PyTorch's
    symmetric observers). Mapping `amax` to `qmax` instead leaves qmin unused: 7 of 8 levels
    at 3 bits, a step 1/6 wider than needed. 8-bit grids keep the restricted [-127, 127]
    range of the int8 kernels and exports (negation stays exact; the loss is 1/255 of a step).

    Example:
        >>> symmetric_steps(QuantSpec(bits=3)), symmetric_steps(QuantSpec(bits=8))
        (3.5, 127.0)
    """
    return spec.qmax + 0.5 if spec.bits < 8 else float(spec.qmax)


def qparams_from_range(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point that map `[lo, hi]` onto the spec's integer range.

    Example:
        >>> s, z = qparams_from_range(torch.tensor([-1.0]), torch.tensor([0.5]), QuantSpec(3))
        >>> round(float(s[0]), 4), float(z[0])
        (0.2857, 0.0)
    """
    if spec.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / symmetric_steps(spec)
        zero = torch.zeros_like(scale)
    else:
        lo = torch.minimum(lo, torch.zeros_like(lo))  # zero must be exactly representable
        hi = torch.maximum(hi, torch.zeros_like(hi))
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        zero = zero.clamp(spec.qmin, spec.qmax)
    tiny = torch.finfo(torch.float32).tiny
    return torch.where(scale > tiny, scale, torch.ones_like(scale)), zero


def choose_qparams(
    w: Tensor,
    spec: QuantSpec,
    method: ScaleMethod = "minmax",
    percentile: float = 99.9,
    grid: int = 40,
) -> tuple[Tensor, Tensor]:
    """Scale and zero point of shape `[rows, groups]` for `w`.

    - minmax: cover the whole range of each group.
    - percentile: clip each group at the given percentile of its values (of |w| if symmetric).
    - mse: shrink the range by the factor (of `grid` between 1 and 0.2) that minimises the
      group's squared quantization error.

    Example:
        >>> s, z = choose_qparams(torch.tensor([[-1.0, 0.5]]), QuantSpec(bits=8))
        >>> round(float(s[0, 0]) * 127, 4), float(z[0, 0])
        (1.0, 0.0)
    """
    g = grouped(w.detach().float(), spec)
    if method == "minmax":
        return qparams_from_range(g.amin(-1), g.amax(-1), spec)
    if method == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ConfigError(f"percentile {percentile} is not in (0, 100]")
        q = percentile / 100.0
        if spec.symmetric:
            hi = quantile_last(g.abs(), q)
            return qparams_from_range(-hi, hi, spec)
        return qparams_from_range(quantile_last(g, 1.0 - q), quantile_last(g, q), spec)
    if method == "mse":
        return _mse_qparams(g, spec, grid)
    raise ConfigError(f"unknown scale method {method!r} ({', '.join(SCALE_METHODS)})")


QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs


def quantile_last(x: Tensor, q: float) -> Tensor:
    """`torch.quantile(x, q, dim=-1)` (linear interpolation), also beyond its 2**24 limit.

    Example:
        >>> quantile_last(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 0.5).tolist()
        [2.5]
    """
    n = x.shape[-1]
    if x.numel() <= QUANTILE_LIMIT:
        return torch.quantile(x, q, dim=-1)
    position = q * (n - 1)
    below = int(position)
    low = torch.kthvalue(x, below + 1, dim=-1).values
    if below + 1 == n:
        return low
    high = torch.kthvalue(x, below + 2, dim=-1).values
    return low + (position - below) * (high - low)


def _mse_qparams(g: Tensor, spec: QuantSpec, grid: int) -> tuple[Tensor, Tensor]:
    lo, hi = g.amin(-1), g.amax(-1)
    best_scale, best_zero = qparams_from_range(lo, hi, spec)
    best_err = _group_error(g, best_scale, best_zero, spec)
    for shrink in torch.linspace(1.0, 0.2, grid)[1:].tolist():
        scale, zero = qparams_from_range(lo * shrink, hi * shrink, spec)
        err = _group_error(g, scale, zero, spec)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def _group_error(g: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
    q = torch.clamp(torch.round(g / s) + z, spec.qmin, spec.qmax)
    return ((q - z) * s - g).pow(2).sum(-1)


def quantize(w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """Integers of `w` (int8 if symmetric, else uint8), in `w`'s shape.

    Example:
        >>> w = torch.tensor([[0.0, 1.0, -1.0]])
        >>> s, z = choose_qparams(w, QuantSpec(bits=8))
        >>> quantize(w, s, z, QuantSpec(bits=8)).tolist()
        [[0, 127, -127]]
    """
    g = grouped(w.detach().float(), spec)
    q = torch.round(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp(spec.qmin, spec.qmax).to(spec.storage_dtype).reshape(w.shape)


def dequantize(q: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """Float values `(q - zero) * scale`, in `q`'s shape."""
    g = grouped(q.float(), spec)
    return ((g - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(q.shape)


def fake_quantize(w: Tensor, spec: QuantSpec, method: ScaleMethod = "minmax") -> Tensor:
    """`dequantize(quantize(w))`: what the model computes with after quantization."""
    scale, zero = choose_qparams(w, spec, method)
    return dequantize(quantize(w, scale, zero, spec), scale, zero, spec).to(w.dtype)


def bf16_round_up(scale: Tensor) -> Tensor:
    """The smallest bf16 value >= each scale (float32), so nothing the scale covered clips.

    Example:
        >>> float(bf16_round_up(torch.tensor([1.001])))
        1.0078125
    """
    rounded = scale.to(torch.bfloat16)
    up = torch.nextafter(rounded, torch.tensor(float("inf"), dtype=torch.bfloat16))
    return torch.where(rounded.float() < scale, up, rounded).float()


# -- k-means weight sharing (Deep Compression, Han et al., ICLR 2016) ---------------------


def kmeans_1d(
    values: Tensor,
    k: int,
    init: Init = "linear",
    iterations: int = 300,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on a 1-D tensor: (sorted centroids [k], label of every value).

    In 1-D every cluster is an interval of the sorted values, so after one sort an iteration
    is a binary search of the k - 1 midpoints between centroids and a difference of prefix
    sums: O(k log n), whatever n. It stops when no boundary moves. A centroid that loses all
    its values stays where it was. Inits (Han et al. 2016, section 3.2): "linear" over
    [min, max], "density" at evenly spaced quantiles, "random" values drawn with `generator`.

    Example:
        >>> c, labels = kmeans_1d(torch.tensor([0.0, 0.1, 0.9, 1.0]), 2)
        >>> [round(v, 2) for v in c.tolist()], labels.tolist()
        ([0.05, 0.95], [0, 0, 1, 1])
    """
    x = values.detach().reshape(-1).double()
    if k < 1:
        raise ConfigError(f"k-means needs k >= 1, got {k}")
    if x.numel() == 0:
        return torch.zeros(k, dtype=values.dtype), torch.zeros(0, dtype=torch.int64)
    ordered = torch.sort(x).values
    prefix = torch.cat((x.new_zeros(1), torch.cumsum(ordered, 0)))
    centroids = _initial_centroids(x, k, init, generator)
    edges = torch.zeros(0, dtype=torch.int64)
    for _ in range(max(1, iterations)):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        # A value equal to a midpoint goes to the lower cluster, as `_assign` does.
        cut = torch.searchsorted(ordered, midpoints, right=True)
        new_edges = torch.cat((cut.new_zeros(1), cut, cut.new_full((1,), len(ordered))))
        if torch.equal(new_edges, edges):
            break
        edges = new_edges
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centroids = torch.sort(
            torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        ).values
    return centroids.to(values.dtype), _assign(x, centroids)


def _initial_centroids(x: Tensor, k: int, init: Init, generator: torch.Generator | None) -> Tensor:
    if init == "linear":
        return torch.linspace(float(x.min()), float(x.max()), k, dtype=x.dtype)
    if init == "density":
        return torch.quantile(x, torch.linspace(0.0, 1.0, k, dtype=x.dtype))
    if init == "random":
        picks = torch.randint(0, x.numel(), (k,), generator=generator)
        return torch.sort(x[picks]).values
    raise ConfigError(f"unknown k-means init {init!r} (linear, density, random)")


def _assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (centroids sorted ascending)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(x, midpoints)


def cluster_weight(
    weight: Tensor,
    bits: int,
    pruned: Tensor | None = None,
    init: Init = "linear",
    iterations: int = 300,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """(codebook [2**bits], uint8 indices in the weight's shape) for one weight tensor.

    Where `pruned` is True the weight is zero: it gets index 0 and codebook[0] == 0, and the
    other 2**bits - 1 centroids cluster the remaining weights. With no pruned entry all
    2**bits centroids are free. `codebook[indices]` is the shared weight.

    Example:
        >>> w = torch.tensor([[0.0, 0.5, -0.5, 0.25]])
        >>> codebook, idx = cluster_weight(w, 2, pruned=w == 0)
        >>> codebook.tolist(), idx.tolist()
        ([0.0, -0.5, 0.25, 0.5], [[0, 3, 1, 2]])
    """
    if not 1 <= bits <= 8:
        raise ConfigError(f"k-means bits={bits} is outside 1-8 (indices are uint8)")
    flat = weight.detach().reshape(-1)
    drop = torch.zeros_like(flat, dtype=torch.bool) if pruned is None else pruned.reshape(-1)
    reserve = bool(drop.any())
    k = 2**bits - int(reserve)
    generator = torch.Generator().manual_seed(seed)
    centroids, labels = kmeans_1d(
        flat[~drop], k, "linear" if k == 1 else init, iterations, generator
    )
    indices = torch.zeros(flat.shape, dtype=torch.uint8)
    indices[~drop] = (labels + int(reserve)).to(torch.uint8)
    zero = torch.zeros(int(reserve), dtype=centroids.dtype)
    codebook = torch.cat((zero, centroids)).to(weight.dtype)
    return codebook, indices.reshape(weight.shape)


def shared_weight(codebook: Tensor, indices: Tensor, zero_code: bool) -> Tensor:
    """`codebook[indices]`; with `zero_code`, index 0 reads 0 whatever codebook[0] holds.

    Gradients flow to the codebook summed over the weights that share each entry (the
    paper's centroid update); entry 0 of a zero-coded codebook gets none, so it stays 0.
    """
    table = torch.cat((codebook.new_zeros(1), codebook[1:])) if zero_code else codebook
    return table[indices.to(torch.int64)]
