"""Training-time wrappers: a Linear or Conv2d that computes with fake-quantized weights.

`FakeQuantized` takes over a layer's own `weight` and `bias` parameters (the same tensors,
under the same names), so the optimizer trains the latent float weights, masks set by pruning
keep holding their zeros, and the layer can be put back unchanged. A weight quantizer (the
affine STE/LSQ one of `qat.py`, the binary/ternary one of `binary.py`) maps the latent weight
to the weight the forward pass uses. `InputFakeQuant` fake-quantizes the layer's input
(activations); that is simulation only: every product still runs in float.

`wrap_` swaps wrappers in for named layers; a training stage runs it inside
`core.state.restored_on_error`, so one that fails midway leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.core.modules import replace_module
from netchisel.quantize.primitives import QuantSpec, qparams_from_range
from netchisel.quantize.ste import lsq_fake_quantize, lsq_grad_scale, ste_fake_quantize

FAKE_QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


class FakeQuantized(nn.Module):
    """`layer` computing with `weight_quant(weight)` (and `input_quant(x)` when given).

    Example:
        >>> lin = nn.Linear(4, 2)
        >>> fq = FakeQuantized(lin, nn.Identity())
        >>> fq.weight is lin.weight, torch.equal(fq(torch.ones(1, 4)), lin(torch.ones(1, 4)))
        (True, True)
    """

    def __init__(
        self, layer: nn.Module, weight_quant: nn.Module, input_quant: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not isinstance(layer, FAKE_QUANTIZABLE):
            raise TypeError(
                f"FakeQuantized wraps Linear, Conv1d or Conv2d, not {type(layer).__name__}"
            )
        self.weight = layer.weight
        self.bias = layer.bias
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        # Not a child: its parameters are this module's, under this module's names.
        self.__dict__["layer"] = layer

    @property
    def original(self) -> nn.Linear | nn.Conv1d | nn.Conv2d:
        layer: nn.Linear | nn.Conv1d | nn.Conv2d = self.__dict__["layer"]
        return layer

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass computes with."""
        weight: Tensor = self.weight_quant(self.weight)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight = self.quantized_weight()
        layer = self.original
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, self.bias)
        out: Tensor = layer._conv_forward(x, weight, self.bias)
        return out


class InputFakeQuant(nn.Module):
    """Fake-quantize a tensor per tensor, asymmetric, to `bits` bits (simulated: float compute).

    - method "ste": the range is a running average (`momentum`) of the batch min/max seen in
      training, with the straight-through gradient;
    - method "lsq": the step is learned (LSQ), initialised from the first batch's min/max;
      its zero point stays fixed.

    In eval mode, or once `freeze()` was called, the stored scale and zero point are used.

    Example:
        >>> q = InputFakeQuant(bits=2).train()
        >>> q(torch.tensor([0.0, 1.0, 2.0, 3.0])).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """

    simulated = True
    zero: Tensor
    lo: Tensor
    hi: Tensor
    observed: Tensor

    def __init__(
        self, bits: int = 8, method: Literal["ste", "lsq"] = "ste", momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.bits = bits
        self.method = method
        self.momentum = momentum
        self.frozen = False
        self.scale = nn.Parameter(torch.ones(1, 1), requires_grad=method == "lsq")
        self.register_buffer("zero", torch.zeros(1, 1))
        self.register_buffer("lo", torch.zeros(1))
        self.register_buffer("hi", torch.zeros(1))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, symmetric=False, granularity="tensor")

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        lo, hi = x.detach().amin().reshape(1).float(), x.detach().amax().reshape(1).float()
        first = not bool(self.observed)
        if self.method == "lsq" and not first:
            return  # the step is learned; only the first batch initialises it
        if not first:
            lo = self.momentum * self.lo + (1 - self.momentum) * lo
            hi = self.momentum * self.hi + (1 - self.momentum) * hi
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        scale, zero = qparams_from_range(lo, hi, self.spec())
        self.scale.copy_(scale.reshape(1, 1))
        self.zero.copy_(zero.reshape(1, 1))
        self.observed.fill_(True)

    def freeze(self) -> InputFakeQuant:
        """Stop observing and learning: from now on the stored scale and zero are used."""
        self.frozen = True
        self.scale.requires_grad_(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self.frozen and (self.training or not bool(self.observed)):
            self._observe(x)
        flat = x.reshape(1, -1)
        if self.method == "lsq" and not self.frozen and self.training:
            grad_scale = lsq_grad_scale(max(1, x[0].numel()) if x.dim() > 1 else 1, self.spec())
            out = lsq_fake_quantize(flat, self.scale, self.zero, self.spec(), grad_scale)
        else:
            out = ste_fake_quantize(flat, self.scale, self.zero, self.spec())
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.method}, frozen={self.frozen}"


def wrap_(
    model: nn.Module,
    layers: dict[str, nn.Module],
    make: Callable[[str, nn.Module], FakeQuantized],
) -> dict[str, FakeQuantized]:
    """Swap a `FakeQuantized` in for every named layer (all built before any is swapped in).

    Run it inside `core.state.restored_on_error`, which puts the original layers back if the
    training or the conversion after it fails.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> wrappers = wrap_(net, {"0": net[0]}, lambda n, m: FakeQuantized(m, nn.Identity()))
        >>> type(net[0]).__name__, wrappers["0"] is net[0]
        ('FakeQuantized', True)
    """
    wrappers = {name: make(name, layer) for name, layer in layers.items()}
    for name, wrapper in wrappers.items():
        replace_module(model, name, wrapper)
    return wrappers
