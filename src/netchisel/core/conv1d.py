"""Hugging Face's `Conv1D` (GPT-2's projections) as the `nn.Linear` it is.

`transformers.pytorch_utils.Conv1D` computes `y = x @ W + b` with W stored (in, out): a Linear
whose weight is kept transposed. GPT-2 builds c_attn, c_proj, c_fc and mlp.c_proj from it, so
a method that looks for `nn.Linear` saw no layer there. The layer-wise methods (GPTQ, AWQ,
SmoothQuant, RTN, int8, SparseGPT, Wanda, magnitude) swap each Conv1D they choose for an
`nn.Linear` holding W^T (a copy, same dtype and device) and the same bias, then treat it like
any Linear. The swap changes no output beyond float round-off (the matrix product runs on the
other memory layout), and the new layer saves and loads like every `nn.Linear`.

The new Linear, and whatever a quantizer puts in its place, carries the plain attribute
`from_conv1d = True` (stored in the artifact with the module): an export whose consumer reads
GPT-2 checkpoints in Conv1D's (in, out) layout can refuse or transpose those layers.

Recognised by name and its `nf` (output width) attribute, so transformers stays optional.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from netchisel.core.modules import replace_module
from netchisel.core.state import restored_on_error

FROM_CONV1D = "from_conv1d"
"""The attribute (True) on a layer that was a Hugging Face Conv1D, weight now (out, in)."""


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's `Conv1D` (GPT-2): a Linear whose weight is stored (in, out).

    Example:
        >>> is_conv1d(nn.Linear(2, 2))
        False
    """
    return type(module).__name__ == "Conv1D" and isinstance(vars(module).get("nf"), int)


def conv1d_types(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The Conv1D classes in `model` (none without transformers), to select them by type.

    Example:
        >>> conv1d_types(nn.Sequential(nn.Linear(2, 2)))
        ()
    """
    return tuple({type(m) for m in model.modules() if is_conv1d(m)})


def linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """An `nn.Linear` equal to `conv`: weight W^T (contiguous copy), a copy of its bias, same
    dtype, device, train mode and `requires_grad`; marked `from_conv1d = True`.

    The copies leave `conv` untouched, so a stage that fails can put it back as it was.

    Example:
        >>> class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D's layout
        ...     def __init__(self, nf: int, nx: int) -> None:
        ...         super().__init__()
        ...         self.nf = nf
        ...         self.weight = nn.Parameter(torch.randn(nx, nf))
        ...         self.bias = nn.Parameter(torch.randn(nf))
        >>> linear = linear_from_conv1d(Conv1D(3, 2))
        >>> linear.in_features, linear.out_features, linear.from_conv1d
        (2, 3, True)
    """
    weight, bias = conv.get_parameter("weight"), getattr(conv, "bias", None)
    # Built on the meta device: no initialisation of a weight that is overwritten at once.
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device="meta")
    with torch.no_grad():
        linear.weight = nn.Parameter(weight.t().contiguous(), weight.requires_grad)
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach().clone(), bias.requires_grad)
    setattr(linear, FROM_CONV1D, True)
    return linear.train(conv.training)


def conv1d_to_linear_(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace every Hugging Face Conv1D in `model` (or those at `names`) by an equal
    `nn.Linear` (`linear_from_conv1d`), in place; the names it replaced, in model order.

    Names that are not Conv1D layers are left alone. Forward hooks on a replaced Conv1D do not
    move to the Linear.

    Example:
        >>> conv1d_to_linear_(nn.Sequential(nn.Linear(2, 2)))
        []
    """
    wanted = None if names is None else set(names)
    found = [
        name
        for name, module in model.named_modules()
        if name and is_conv1d(module) and (wanted is None or name in wanted)
    ]
    for name in found:
        replace_module(model, name, linear_from_conv1d(model.get_submodule(name)))
    return found


def with_conv1d_as_linear_(model: nn.Module, chosen: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """`chosen` (layers of `model` by name) with each Conv1D among them swapped, in `model`
    too, for its equal `nn.Linear`: what a stage that chose them by name works on.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> with_conv1d_as_linear_(net, {"0": net[0]})["0"] is net[0]
        True
    """
    swapped = set(conv1d_to_linear_(model, [n for n, m in chosen.items() if is_conv1d(m)]))
    return {n: model.get_submodule(n) if n in swapped else m for n, m in chosen.items()}


def guarded_if_conv1d(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """`restored_on_error` (spill to disk when large) around a stage run on a model with
    Conv1D layers, which choosing may swap before the stage can still fail (`core.registry`
    wraps every stage in it); nothing for a model without them (no copy to pay for).

    Example:
        >>> with guarded_if_conv1d(nn.Linear(2, 2)):
        ...     pass
    """
    if conv1d_types(model):
        return restored_on_error(model, spill=None)
    return contextlib.nullcontext()
