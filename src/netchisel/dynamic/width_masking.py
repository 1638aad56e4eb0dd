"""The masking control: a `WidthModel`'s widths computed at full width with channels zeroed.

A benchmark control, not a way to ship a model: it shows that masks alone save nothing.
Each width's weights are stored once with the rows and columns outside its channels set to
zero (and its BatchNorm as a per-channel affine padded with zeros), then every layer runs at
its full size, exactly the kernels of the static model. The outputs equal the sliced
compute's up to float rounding (the zeros add nothing), the cost is the static model's plus
the gate's, whatever the width. Eval mode only; its tensors are not saved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netchisel.dynamic.width_model import WidthModel, grouped
from netchisel.dynamic.width_slim import tensor_of


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
        # Per width, per step: the masked tensors the full-size op runs with (None: as is).
        self.tables: list[list[tuple[Tensor | None, ...] | None]] = [
            [self._masked(j, k) for j in range(len(model.kinds))] for k in range(len(model.widths))
        ]

    def _masked(self, j: int, k: int) -> tuple[Tensor | None, ...] | None:
        m = self.model
        kind = m.kinds[j]
        with torch.no_grad():
            if kind in ("conv", "linear"):
                layer = m._module(j)
                weight = tensor_of(layer, "weight").detach().clone()
                weight[m.channels_out[j][k] :] = 0
                weight[:, m.channels_in[j][k] :] = 0
                bias = None
                if isinstance(layer.bias, Tensor):
                    bias = layer.bias.detach().clone()
                    bias[m.channels_out[j][k] :] = 0
                return weight, bias
            if kind == "norm":
                bn = m.norm_at(j, k)
                full = int(tensor_of(m._module(j), "weight").shape[0])
                c = m.channels_in[j][k]
                out = []
                for name, pad in (
                    ("running_mean", 0.0),
                    ("running_var", 1.0),
                    ("weight", 0.0),
                    ("bias", 0.0),
                ):
                    t = torch.full((full,), pad, dtype=torch.float32)
                    t[:c] = tensor_of(bn, name).detach()
                    out.append(t)
                return tuple(out)
        return None

    def run_masked(self, x: Tensor, k: int) -> Tensor:
        """Width index `k` computed at full size with the other channels zeroed."""
        m = self.model
        table = self.tables[k]
        for j, kind in enumerate(m.kinds):
            module = m._module(j)
            entry = table[j]
            if kind == "linear" and entry is not None:
                x = nn.functional.linear(x, entry[0], entry[1])  # type: ignore[arg-type]
            elif kind == "conv" and entry is not None:
                x = module._conv_forward(x, entry[0], entry[1])  # type: ignore[operator]
            elif kind == "norm" and entry is not None:
                mean, var, weight, bias = entry
                x = nn.functional.batch_norm(
                    x,
                    mean,
                    var,
                    weight,
                    bias,
                    False,
                    0.0,
                    module.eps,  # type: ignore[arg-type]
                )
            else:
                x = module(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return grouped(x, self.model.choose(x), self.run_masked)
