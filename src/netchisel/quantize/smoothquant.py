"""`quantize.smoothquant`: move activation outliers into the weights, then int8 x int8.

Xiao, Lin, Seznec, Wu, Demouth & Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models" (ICML 2023). Activations of transformers have a few
channels far larger than the rest, so one int8 scale per token row wastes most of its levels
on them; weights are easy to quantize. A per-input-channel factor

    s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)

(alpha = 0.5 by default, the paper's choice for most models) divides the activations and
multiplies the weight columns, which keeps the float function and balances the two ranges.
The maxima come from one pass over calibration data (the task's train split); W is the
concatenation of the layers that read the same tensor (q, k and v share s).

The 1/s is folded into the op that produces the activations when that keeps the model's
function: a LayerNorm (pre-LN transformers: q/k/v, the MLP's first layer, the LM head) or the
Linear before (v_proj before o_proj), checked on calibration data (`fold.py`). Where no fold
exists (after a GELU; everywhere in post-LN BERT, whose LayerNorm outputs also feed the
residual) the group is left unsmoothed by default (`fold_only: true`), because the division
would cost an extra elementwise pass at run time; `fold_only: false` keeps it as an
`InputScale` module instead.

Then every chosen Linear becomes `DynamicInt8Linear`: int8 weights with a scale per output
channel, activations quantized to int8 per token row at run time (the paper's "O1"-like
per-token dynamic setting), multiplied on `torch._int_mm`. We chose per-row dynamic over a
static per-tensor activation scale because it needs no activation observers in the artifact
and is the more accurate of the two; the smoothing is what makes per-row activation int8
usable on models with outliers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from netchisel.calib import Calibration, LayerInputs, Layerwise, run_layerwise
from netchisel.core.config import check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.quantize.dynamic_int8 import DynamicInt8Config
from netchisel.quantize.fold import (
    CHECK_SAMPLES,
    InputScale,
    divide_outputs,
    fold_targets,
    multiply_inputs,
)
from netchisel.quantize.formats import DynamicInt8Linear
from netchisel.quantize.linears import chosen_linears, swap_linears


@dataclass(frozen=True)
class SmoothQuantConfig(DynamicInt8Config):
    """SmoothQuant: `quantize.dynamic_int8` after migrating activation outliers into weights.

    - `alpha`: migration strength in [0, 1]; 0 leaves activations alone, 1 moves all their
      range into the weights (paper: 0.5; 0.75-0.85 for the largest models).
    - `calibration_samples`: samples of the task's train split the maxima come from.
    - `fold_only`: smooth only groups whose 1/s folds into the op before them (no run-time
      cost); false keeps the others' 1/s as an `InputScale` module.

    Example:
        >>> SmoothQuantConfig(alpha=0.75).alpha
        0.75
    """

    NAME: ClassVar[str] = "quantize.smoothquant"

    alpha: float = 0.5
    calibration_samples: int = 128
    fold_only: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"quantize.smoothquant.alpha: {self.alpha} is not in [0, 1]")
        check_calibration_samples("quantize.smoothquant", self.calibration_samples)


def smoothing_scales(act_max: Tensor, weight_max: Tensor, alpha: float) -> Tensor:
    """s = act_max^alpha / weight_max^(1 - alpha), 1 where either maximum is zero.

    Example:
        >>> smoothing_scales(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 2.0]), 0.5)
        tensor([4., 1., 1.])
    """
    a, w = act_max.float(), weight_max.float()
    s = a.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1.0 - alpha)
    return torch.where((a > 0) & (w > 0), s, torch.ones_like(s))


@register(SmoothQuantConfig)
def quantize_smoothquant(model: nn.Module, config: SmoothQuantConfig, ctx: Context) -> nn.Module:
    """Smooth the chosen Linear layers' inputs, then make them `DynamicInt8Linear`.

    On any error the whole state is put back, so the model is as it was.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(64, 32), torch.zeros(64, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 8))
        >>> ctx = Context(task, quiet=True)
        >>> _ = quantize_smoothquant(net, SmoothQuantConfig(), ctx)
        >>> type(net[1]).__name__, ctx.records["smoothed"]
        ('DynamicInt8Linear', {'1': '0'})
    """
    stage = config.NAME
    task = ctx.require_task(stage)
    layers = chosen_linears(model, config.layers, config.exclude, stage, config.embeddings)
    smoothed: dict[str, str] = {}
    kept: dict[str, Tensor] = {}
    targets: dict[str, str | None] = {}
    groups: list[list[str]] = []
    modules = dict(model.named_modules())  # after choosing, which may swap Conv1D layers

    def find_folds(calibration: Calibration) -> None:
        groups.extend(calibration.groups)
        check = calibration.example(CHECK_SAMPLES)
        targets.update(fold_targets(model, calibration.groups, layers, check))

    def solve(group: dict[str, LayerInputs]) -> None:
        names = list(group)
        target = targets.get(names[0])
        if target is None and config.fold_only:
            return
        weight_max = torch.stack([layers[n].weight.detach().abs().amax(0) for n in names]).amax(0)
        s = smoothing_scales(group[names[0]].abs_max, weight_max, config.alpha)
        if target is not None:
            divide_outputs(modules[target], s)
            smoothed[names[0]] = target
        for name in names:
            multiply_inputs(layers[name], s)
            if target is None:
                kept[name] = 1.0 / s

    def make(name: str, linear: nn.Linear) -> nn.Module:
        return InputScale.around(
            DynamicInt8Linear.from_float(linear, config.activations, config.weights),
            kept.get(name),
        )

    # The scales come from the original activations: one pass of the unchanged model.
    how = Layerwise(stage, config.calibration_samples, sequential=False, gram=False)
    with restored_on_error(model, spill=None):
        run = run_layerwise(model, layers, task, solve, how, ctx, prepare=find_folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # chosen_linears warned about float layers already
            swap_linears(model, config, ctx, make)
    ctx.record(
        smoothed=smoothed,
        input_scale_modules=sorted(kept),
        unsmoothed=sorted(n for g in groups for n in g if g[0] not in smoothed and n not in kept),
        calibration_samples=run.samples,
    )
    return model
