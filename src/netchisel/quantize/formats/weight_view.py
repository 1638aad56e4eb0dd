"""`weight` for a quantized Linear: code written for `nn.Linear` reads it, so it must exist.

Real models read a Linear's `.weight` outside its forward: `nn.MultiheadAttention` passes
`out_proj.weight` to `F.multi_head_attention_forward` (torchvision's ViT and Swin), T5 compares
`wo.weight.dtype` with its activations, timm's attention calls `F.linear(x, qkv.weight, bias)`.
torchao meets this by keeping `nn.Linear` and making its weight a tensor subclass holding the
integers, so the state dict holds the subclass. netchisel's layers keep their integers in
their own buffers (the artifact format, the kernel caches and saved files stay as they are),
and `weight` is a property that returns a `WeightView`: a tensor with no storage that stands
for the float weight the layer computes with.

- Reading its metadata (`dtype` float32, `shape` `[out, in]`, `device`) costs nothing.
- `F.linear(x, layer.weight, bias)` runs the layer's own kernel (int8, int4, oneDNN...); a
  `bias` other than the layer's own is swapped in after it.
- Any other op (`nn.MultiheadAttention`'s own projection among them: its whole function is
  one call that the view cannot enter) runs in float on `dequantized_weight()`, made for that
  call and not kept: correct, at float speed.
- In-place ops raise: the integers are the weights; change them through the layer.

The property is not a parameter or buffer, so the state dict, the artifact's bytes and the
profile's parameter counts do not change. The simpler alternatives each give up one of these:
a property returning a plain dequantized tensor dequantizes the whole weight for a `dtype`
check on every call (or keeps a float copy in memory); special-casing MultiheadAttention's
`out_proj` (torch's `NonDynamicallyQuantizableLinear`) fixes that one reader only.

Example:
    >>> from netchisel.quantize.formats.int8 import Int8WeightOnlyLinear
    >>> layer = Int8WeightOnlyLinear.from_float(nn.Linear(32, 4))
    >>> layer.weight.dtype, tuple(layer.weight.shape)
    (torch.float32, (4, 32))
    >>> x = torch.ones(2, 32)
    >>> torch.equal(F.linear(x, layer.weight, layer.bias), layer(x))
    True
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map_only

from netchisel.core.errors import ModelError


class Dequantizes(Protocol):
    """A quantized layer: its float weight on demand, its bias, its forward."""

    bias: Tensor | None

    def dequantized_weight(self) -> Tensor: ...
    def forward(self, x: Tensor) -> Tensor: ...


class WeightView(Tensor):
    """The float weight of a quantized layer, without its storage (see the module docstring)."""

    layer: Dequantizes

    @staticmethod
    def __new__(cls, layer: Dequantizes, shape: tuple[int, ...], device: torch.device) -> Any:
        view = Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32, device=device)
        view.layer = layer
        return view

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        return f"WeightView(of {type(self.layer).__name__}, shape={list(self.shape)})"

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            y = _kernel_linear(*args, **kwargs)
            if y is not None:
                return y
        name = str(getattr(func, "__name__", ""))
        out = kwargs.get("out")
        if isinstance(out, cls) or (_writes(name) and args and isinstance(args[0], cls)):
            raise _read_only(name)
        if name not in _METADATA:
            # Every other function gets the dequantized weight here, so dispatch modes
            # (netchisel's FLOP and memory counters) see plain tensors.
            args, kwargs = tree_map_only(cls, _dequantized, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        if func._schema.is_mutable:
            raise _read_only(func.__name__)
        args, kwargs = tree_map_only(cls, _dequantized, (args, kwargs or {}))
        return func(*args, **kwargs)


# What reads only the view's metadata (`dtype`, `shape`, `device` are attribute getters).
_METADATA = frozenset(
    {
        *("__get__", "size", "dim", "numel", "nelement", "ndimension", "stride"),
        *("is_contiguous", "is_floating_point", "is_complex", "element_size", "get_device"),
        "__len__",
    }
)


def _writes(name: str) -> bool:
    """Whether a function of this name writes its first argument (`mul_`, `__iadd__`, `out=`)."""
    in_place = name.endswith("_") and not name.startswith("__")
    return in_place or name in ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__set__")


def _read_only(name: str) -> ModelError:
    return ModelError(
        f"{name} would change the weight of a quantized layer, whose integers are the weights: "
        "quantize the float model again after changing it"
    )


def _dequantized(view: WeightView) -> Tensor:
    # In the view's shape: a Conv1d stored as a height-1 Conv2d has a 3-d float weight.
    return view.layer.dequantized_weight().float().reshape(view.shape)


def _kernel_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | None:
    """`F.linear` on the layer's kernel, or None where `weight` is not a view."""
    if not isinstance(weight, WeightView) or isinstance(input, WeightView):
        return None
    layer = weight.layer
    y = layer.forward(input)
    if bias is layer.bias:
        return y
    # Another bias than the layer's own (Swin V2 zeroes part of a copy): swapped after the
    # kernel, in the output's dtype (float32 unless the input is lower).
    if layer.bias is not None:
        y = y - layer.bias.to(y.dtype)
    return y if bias is None else y + bias.to(y.dtype)


class HasWeightView:
    """Mixin for a quantized layer: `weight` is a `WeightView` of the float weight's shape
    (`[out_features, in_features]` for a Linear; a convolution says its own)."""

    in_features: int
    out_features: int

    def _view_shape(self) -> tuple[int, ...]:
        return self.out_features, self.in_features

    @property
    def weight(self) -> Tensor:
        """The float weight as code written for `nn.Linear` / `nn.Conv2d` reads it (Hugging
        Face's ViT reads the patch conv's `weight.dtype`); not stored, no copy.

        `F.linear` with it runs this layer's kernel; other ops compute in float."""
        assert isinstance(self, nn.Module)
        device = next(iter([*self.buffers(), *self.parameters()])).device
        view: Tensor = WeightView(self, self._view_shape(), device)  # type: ignore[arg-type]
        return view
