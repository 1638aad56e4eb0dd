"""Weight sharing: a layer's weight is `codebook[indices]`, at most 2**bits shared values and one
small index per weight (k-means, Deep Compression). Index 0 of a zero-coded codebook reads 0
whatever the codebook holds, so a pruned layer's zeros stay exact and take no centroid.

`ClusteredWeight` is the format (parameter `codebook`, buffer `indices`, attribute
`zero_code`): while training, the weight is gathered at every call so gradients reach the
centroids (each centroid gets the sum of its weights' gradients, the paper's update); for
inference it is gathered once. `ClusteredLinear` and `ClusteredConv` add only their shape and
op. The op runs on the gathered float weight: smaller on disk only, no speed-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.quantize.formats.base import conv_forward, kernel_cache
from netchisel.quantize.primitives import Init, cluster_weight, shared_weight


class ClusteredWeight(nn.Module):
    """The clustered format: the codebook, the indices and the gathered weight."""

    simulated = True
    codebook: nn.Parameter
    indices: Tensor
    bias: nn.Parameter | None
    zero_code: bool

    def _init_clustered(self, shape: tuple[int, ...], bits: int) -> None:
        self.zero_code = False
        self.codebook = nn.Parameter(torch.zeros(2**bits))
        self.register_buffer("indices", torch.zeros(shape, dtype=torch.uint8))

    def _fill(
        self, source: nn.Module, bits: int, pruned: Tensor | None, init: Init, seed: int
    ) -> None:
        """Cluster `source`'s weight (see `cluster_weight`) into this layer; take its bias."""
        weight = source.get_parameter("weight")
        codebook, indices = cluster_weight(weight, bits, pruned, init, seed=seed)
        with torch.no_grad():
            self.codebook.copy_(codebook)
            self.indices.copy_(indices)
            bias = getattr(source, "bias", None)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)
        self.zero_code = bool(pruned is not None and pruned.any())
        self.to(device=weight.device, dtype=weight.dtype)

    def prepare_kernels(self) -> None:
        """Gather the inference weight now (otherwise on the first call without gradients)."""
        with torch.no_grad():
            self.weight  # noqa: B018  (the property caches it)

    def dequantized_weight(self) -> Tensor:
        """The weight values the layer computes with (for counts and comparisons)."""
        with torch.no_grad():
            return self.weight.detach()

    @property
    def weight(self) -> Tensor:
        """The shared weight `codebook[indices]`.

        While training (grad enabled and a trainable codebook) it is gathered at every call so
        gradients reach the centroids; for inference it is gathered once and cached until the
        codebook or the indices change, so the layer runs as fast as the float layer.
        """
        if torch.is_grad_enabled() and self.codebook.requires_grad:
            return shared_weight(self.codebook, self.indices, self.zero_code)

        def gather() -> Tensor:
            with torch.no_grad():
                return shared_weight(self.codebook, self.indices, self.zero_code)

        return kernel_cache(self, (self.codebook, self.indices), gather, (self.zero_code,))


class ClusteredLinear(ClusteredWeight):
    """A Linear layer whose weight is `codebook[indices]` (k-means weight sharing).

    Example:
        >>> layer = ClusteredLinear.from_linear(nn.Linear(8, 4), bits=2)
        >>> len(layer.codebook), layer.indices.dtype, layer(torch.ones(3, 8)).shape
        (4, torch.uint8, torch.Size([3, 4]))
    """

    def __init__(
        self, in_features: int, out_features: int, bits: int = 5, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_clustered((out_features, in_features), bits)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 5,
        pruned: Tensor | None = None,
        init: Init = "linear",
        seed: int = 0,
    ) -> ClusteredLinear:
        """Cluster `linear`'s weight (see `cluster_weight`); `linear` is not changed."""
        layer = cls(linear.in_features, linear.out_features, bits, linear.bias is not None)
        layer._fill(linear, bits, pruned, init, seed)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"codebook={len(self.codebook)}, zero_code={self.zero_code}, "
            f"bias={self.bias is not None}"
        )


class ClusteredConv(ClusteredWeight):
    """A Conv1d/2d/3d layer whose weight is `codebook[indices]` (k-means weight sharing).

    Example:
        >>> layer = ClusteredConv.from_conv(nn.Conv2d(3, 4, 3, padding=1), bits=3)
        >>> layer(torch.ones(1, 3, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """

    def __init__(self, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bits: int = 5) -> None:
        super().__init__()
        self.dims = len(conv.kernel_size)
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.reversed_padding = tuple(conv._reversed_padding_repeated_twice)
        self._init_clustered(tuple(conv.weight.shape), bits)
        self.bias = None if conv.bias is None else nn.Parameter(torch.zeros(conv.out_channels))

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        bits: int = 5,
        pruned: Tensor | None = None,
        init: Init = "linear",
        seed: int = 0,
    ) -> ClusteredConv:
        """Cluster `conv`'s weight (see `cluster_weight`); `conv` is not changed."""
        layer = cls(conv, bits)
        layer._fill(conv, bits, pruned, init, seed)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return conv_forward(self, x, self.weight)

    def extra_repr(self) -> str:
        shape = tuple(self.indices.shape)
        return (
            f"weight={shape}, stride={self.stride}, padding={self.padding}, "
            f"codebook={len(self.codebook)}, zero_code={self.zero_code}"
        )
