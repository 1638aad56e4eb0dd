"""The masking control: a `WidthModel`'s widths computed at full width with channels zeroed.

A benchmark control, not a way to ship a model: it shows that masks alone save nothing.
Each width's weights are stored once with the output channels outside its prefix set to zero
(and its BatchNorm as a per-channel affine padded with zeros), then every layer runs at its
full size, exactly the kernels of the static model. The cost is the static model's plus the
gate's, whatever the width. Eval mode only; its tensors are not saved.

It is also the proof that a plan is right (`check_prefixes`): the cut channels are zero from
the layer that cuts them on, so the masked model equals the sliced one exactly when every
layer's kept channels are a prefix of what it reads. A concatenation, a split, a channel
shuffle or an op that turns zeros into something else (a bare sigmoid) breaks the equality.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ModelError
from netchisel.dynamic.width_model import WidthModel, grouped
from netchisel.dynamic.width_slim import (
    STAGE,
    SUPPORTED,
    installed,
    output_tensors,
    tensor_of,
)

# Relative difference between the sliced and the masked outputs beyond float rounding.
TOLERANCE = 1e-4


class MaskedWidth(nn.Module):
    """Runs `model`'s gate and routing, but each width as the full network with zeroed
    channels (`run_masked`).

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
        >>> m = WidthModel(net, plan, [0.5, 1.0], nn.Linear(4, 2)).eval()
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(MaskedWidth(m).run_masked(x, 0), m.run_width(x, 0), atol=1e-6)
        True
    """

    def __init__(self, model: WidthModel) -> None:
        super().__init__()
        self.model = model
        # Per width, per step: the masked tensors the full-size op runs with.
        self.tables: list[list[tuple[Tensor | None, ...]]] = [
            [self._masked(j, k) for j in range(len(model.kinds))] for k in range(len(model.widths))
        ]

    def _masked(self, j: int, k: int) -> tuple[Tensor | None, ...]:
        m = self.model
        with torch.no_grad():
            if m.kinds[j] != "norm":
                layer = m._module(j)
                weight = tensor_of(layer, "weight").detach().clone()
                weight[m.channels_out[j][k] :] = 0
                bias = None
                if isinstance(layer.bias, Tensor):
                    bias = layer.bias.detach().clone()
                    bias[m.channels_out[j][k] :] = 0
                return weight, bias
            bn = m.norm_at(j, k)
            full = int(tensor_of(m._module(j), "weight").shape[0])
            c = m.channels_in[j][k]
            out = []
            for name, pad in (("running_mean", 0.0), ("running_var", 1.0), ("weight", 0.0)):
                t = torch.full((full,), pad, dtype=torch.float32, device=bn.weight.device)
                t[:c] = tensor_of(bn, name).detach()
                out.append(t)
            bias = torch.zeros_like(out[0])
            bias[:c] = tensor_of(bn, "bias").detach()
            return (*out, bias)

    def _op(self, j: int, k: int) -> Callable[[Tensor], Tensor]:
        module, kind, entry = self.model._module(j), self.model.kinds[j], self.tables[k][j]

        def run(x: Tensor) -> Tensor:
            if kind == "linear":
                return nn.functional.linear(x, entry[0], entry[1])  # type: ignore[arg-type]
            if kind == "conv":
                return module._conv_forward(x, entry[0], entry[1])  # type: ignore[operator,no-any-return]
            mean, var, weight, bias = entry
            eps = float(module.eps)  # type: ignore[arg-type]
            return nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

        return run

    def run_masked(self, x: Tensor, k: int) -> Tensor:
        """Width index `k` computed at full size with the other channels zeroed."""
        m = self.model
        ops = [(m._module(j), self._op(j, k)) for j in range(len(m.kinds))]
        with installed(ops):
            return m.backbone(x)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return grouped(x, self.model.choose(x), self.run_masked)


def check_prefixes(model: WidthModel, x: Tensor) -> None:
    """One line unless, at every width of `model` and on `x`, each planned layer reads the
    first channels of what it reads in the full model with the cut channels zeroed, and the
    rest of those are zero (the plan's channels are prefixes all the way through).

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> class Cat(nn.Module):  # a concatenation: the second half is no prefix
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.head = nn.Linear(2, 4), nn.Linear(2, 4), nn.Linear(8, 1)
        ...     def forward(self, x):
        ...         return self.head(torch.cat([self.a(x), self.b(x)], 1))
        >>> net = Cat()
        >>> model = WidthModel(net, plan_width(net, [0.5, 1.0], torch.ones(1, 2)), [0.5, 1.0],
        ...                    nn.Identity())
        >>> check_prefixes(model, torch.ones(2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ModelError: dynamic.width: at width 0.5 head (Linear) does not ...
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            masked = MaskedWidth(model)
            for k, width in enumerate(model.widths[:-1]):
                sliced, sliced_out = _inputs(model, functools.partial(model.run_width, x, k))
                full, full_out = _inputs(model, functools.partial(masked.run_masked, x, k))
                for j, step in enumerate(model.steps):
                    dim = -1 if model.kinds[j] == "linear" else 1
                    c = model.channels_in[j][k]
                    a, b = sliced[j], full[j]
                    if not (a.shape[dim] == c and _near(a, b.narrow(dim, 0, c), b)) or not _near(
                        b.narrow(dim, c, b.shape[dim] - c), torch.zeros(()), b
                    ):
                        name = type(model._module(j)).__name__
                        raise ModelError(
                            f"{STAGE}: at width {width:g} {step} ({name}) does not read the "
                            "first channels of what it reads in the full model with the cut "
                            "channels zeroed (a concatenation, split or shuffle before it?); "
                            f"supported: {SUPPORTED}"
                        )
                pairs = zip(output_tensors(sliced_out), output_tensors(full_out), strict=True)
                if not all(_near(a, b, b) for a, b in pairs):
                    raise ModelError(
                        f"{STAGE}: at width {width:g} the sliced model's outputs are not the "
                        f"full one's with the cut channels zeroed; supported: {SUPPORTED}"
                    )
    finally:
        model.train(was)


def _near(a: Tensor, b: Tensor, reference: Tensor) -> bool:
    """`a` equals `b` up to float rounding at the scale of `reference`."""
    scale = float(reference.abs().max()) if reference.numel() else 1.0
    return a.numel() == 0 or float((a - b).abs().max()) <= TOLERANCE * (scale or 1.0)


def _inputs(model: WidthModel, run: Callable[[], Any]) -> tuple[list[Tensor], Any]:
    """What each planned layer of `model` reads during `run()`, and the output."""
    seen: dict[int, Tensor] = {}
    hooks = [
        model._module(j).register_forward_pre_hook(
            lambda _, args, j=j: seen.__setitem__(j, args[0])
        )
        for j in range(len(model.steps))
    ]
    try:
        out = run()
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[j] for j in range(len(model.steps))], out
