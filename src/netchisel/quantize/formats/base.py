"""What every stored format's modules share: the kernel-layout cache, the Linear wrapper's
shapes, bias and output, and the convolution with torch's padding modes.

A quantized module keeps a portable layout in its buffers (what the artifact stores) and
builds the layout its kernel wants (a packed int4 tile, an unpacked float weight, a oneDNN
handle) on first use. `kernel_cache` keeps that layout until the buffers change, so
`load_state_dict` (copy or assign) rebuilds it, and hands the built one to torch.compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.quantize.formats.weight_view import HasWeightView

T = TypeVar("T")
CACHE = "_netchisel_kernel_cache"  # the `_netchisel_` prefix keeps it out of artifacts


def kernel_cache(
    module: nn.Module,
    tensors: tuple[Tensor | None, ...],
    build: Callable[[], T],
    extra: tuple[Any, ...] = (),
) -> T:
    """`build()` once, until one of `tensors` (or a value of `extra`) changes.

    Keyed by each tensor's storage and version, so an in-place change or a reload invalidates
    it. Tensors made under inference_mode have no version counter (and cannot change).

    Example:
        >>> layer, calls = nn.Linear(2, 2), []
        >>> build = lambda: calls.append(1) or layer.weight.sum()
        >>> _ = kernel_cache(layer, (layer.weight,), build)
        >>> _ = kernel_cache(layer, (layer.weight,), build)
        >>> len(calls)
        1
    """
    cache = module.__dict__.get(CACHE)
    absent = tuple(t is None for t in tensors)
    if cache is not None and torch.compiler.is_compiling() and cache[2] == absent:
        # torch.compile cannot read storage or versions (each read would split the graph):
        # it takes the layout built before compiling, so one graph holds the whole model.
        return cache[1]  # type: ignore[no-any-return]
    key = tuple(
        None if t is None else (t.data_ptr(), 0 if t.is_inference() else t._version, t.device)
        for t in tensors
    ) + tuple(extra)
    if cache is None or cache[0] != key:
        cache = (key, build(), absent)
        module.__dict__[CACHE] = cache
    return cache[1]


class QuantizedLinear(HasWeightView, nn.Module):
    """The Linear part of a quantized Linear: shapes, bias, output shape and the repr, and
    `weight` for code that reads it (`weight_view.py`)."""

    simulated = False
    bits = 8

    in_features: int
    out_features: int
    bias: nn.Parameter | None

    def _setup(self, in_features: int, out_features: int, bias: Tensor | None) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def _cached(self, key_tensors: Tensor | tuple[Tensor | None, ...], build: Any) -> Any:
        tensors = key_tensors if isinstance(key_tensors, tuple) else (key_tensors,)
        return kernel_cache(self, tensors, build)

    def prepare_kernels(self) -> None:
        """Build the kernel's layout of the weight now (otherwise it is built on first use)."""

    def _finish(self, y: Tensor, x: Tensor) -> Tensor:
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, bias={self.bias is not None}"
        )


class ConvLayer(Protocol):
    """What a convolution wrapper holds besides its weight (the attributes of `nn.ConvNd`)."""

    @property
    def stride(self) -> Any: ...
    @property
    def padding(self) -> Any: ...
    @property
    def dilation(self) -> Any: ...
    @property
    def groups(self) -> int: ...
    @property
    def padding_mode(self) -> str: ...
    @property
    def bias(self) -> Tensor | None: ...


def conv_forward(layer: ConvLayer, x: Tensor, weight: Tensor) -> Tensor:
    """`layer`'s convolution of `x` with `weight`: `F.conv1d/2d/3d` (by the weight's rank) with
    the layer's stride, padding (torch's padding modes too), dilation, groups and bias.

    `layer.reversed_padding`, when the layer has it, is torch's
    `_reversed_padding_repeated_twice`; otherwise it is made from a numeric `padding`.

    Example:
        >>> c = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
        >>> x = torch.randn(1, 1, 5, 5)
        >>> torch.equal(conv_forward(c, x, c.weight), c(x))
        True
    """
    padding: Any = layer.padding
    if layer.padding_mode != "zeros":
        reversed_padding = getattr(layer, "reversed_padding", None)
        if reversed_padding is None:
            reversed_padding = [p for p in reversed(padding) for _ in range(2)]
        x = F.pad(x, tuple(reversed_padding), mode=layer.padding_mode)
        padding = 0
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    op = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
    out: Tensor = op(
        x, weight.to(x.dtype), bias, layer.stride, padding, layer.dilation, layer.groups
    )
    return out
