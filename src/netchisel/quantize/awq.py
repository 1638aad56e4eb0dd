"""`quantize.awq`: activation-aware weight quantization (AWQ).

Lin, Tang, Tang, Yang, Dang, Gan & Han, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (MLSys 2024). A few input channels of a layer carry much larger
activations than the rest; their weights matter most. Scaling those weight columns up by s > 1
before quantizing (and the inputs down by 1/s) shrinks their relative rounding error. AWQ sets
s = mean|x|^alpha per input channel (normalised so max(s) * min(s) = 1) and searches alpha on a
grid in [0, 1] per group of layers that read one tensor (q/k/v share it; an MLP's first layer),
keeping the alpha with the smallest output error of the group:

    sum over the group's layers of ||(W - Q(W diag(s)) diag(s)^-1) X^T||^2,

computed exactly from the Gram matrix X^T X (alpha = 0 is plain RTN, so the chosen scale is
never worse than RTN on the calibration data). The 1/s is folded into the op that produced x
when that keeps the model's function (a LayerNorm, or v_proj before o_proj; see `fold.py`),
otherwise it stays as an `InputScale` module (one elementwise multiply, as the authors' code
does after a GELU). Optional clipping search (`clip`, on by default as in the paper): each
group's range is shrunk by the factor in [1 - max_shrink, 1] that minimises that group's part
of the output error (the Gram's diagonal block). The weights are then quantized to the
configured format (`quantize.rtn`'s fields) and stored in the same modules as RTN.

Layers are visited in call order, each group on the outputs of the already quantized groups
before it: `quantize_awq` is a `solve` function over `netchisel.calib.run_layerwise`, as GPTQ.
Differences from the paper's code: the error is each Linear's output (not the whole attention
or MLP block's), and q/k are clipped too.

Written here because the authors' code and AutoAWQ are tied to Hugging Face model classes;
this works on any `nn.Module` whose Linear layers can be traced.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.calib import Calibration, LayerInputs, Layerwise, run_layerwise
from netchisel.calib.hessian import gram_error
from netchisel.core.config import check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.quantize.fold import (
    CHECK_SAMPLES,
    InputScale,
    divide_outputs,
    fold_targets,
    multiply_inputs,
)
from netchisel.quantize.formats import padded_weight, quantized_linear
from netchisel.quantize.formats.kernels import kernel_qparams, kernel_scales
from netchisel.quantize.linears import chosen_linears, swap_linears
from netchisel.quantize.primitives import (
    QuantSpec,
    ScaleMethod,
    choose_qparams,
    dequantize,
    fake_quantize,
    grouped,
    pad_to_groups,
    qparams_from_range,
    quantize,
)
from netchisel.quantize.rtn import WeightQuantConfig


@dataclass(frozen=True)
class AWQConfig(WeightQuantConfig):
    """AWQ: the weight format of `quantize.rtn` plus the scale and clipping searches.

    - `grid`: alpha values tried, 0, 1/grid, ..., (grid - 1)/grid (paper: 20).
    - `clip`: search each group's clipping range on the output error (then `scale_method` is
      not used); `max_shrink`: the largest fraction of the range cut off (paper: 0.5).
    - `calibration_samples`: samples of the task's train split (paper: 128 of 512 tokens).
    - `blocks`: the `nn.ModuleList` of transformer blocks run one at a time; None finds it;
      "" runs every pass through the whole model.
    - `fold_only`: scale only groups whose 1/s folds into the op before them; the others are
      quantized unscaled (alpha 0, clipping still searched), as AutoAWQ and llm-compressor
      do. Needed to export to compressed-tensors, which has no per-input-channel scale
      (o_proj after a grouped-query v_proj, an MLP's second layer after a GELU).

    Example:
        >>> AWQConfig(bits=4).spec_for("fc").group_size
        128
    """

    NAME: ClassVar[str] = "quantize.awq"

    grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5
    calibration_samples: int = 128
    blocks: str | None = None
    fold_only: bool = False

    def validate(self) -> None:
        super().validate()
        if self.grid < 1:
            raise ConfigError(f"quantize.awq.grid: must be >= 1, got {self.grid}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ConfigError(f"quantize.awq.max_shrink: {self.max_shrink} is not in [0, 1)")
        check_calibration_samples("quantize.awq", self.calibration_samples)


# -- the searches: pure functions on tensors ----------------------------------------------


def awq_scales(x_mean: Tensor, alpha: float) -> Tensor:
    """s = mean|x|^alpha, normalised so that max(s) * min(s) = 1.

    Example:
        >>> awq_scales(torch.tensor([1.0, 4.0]), 0.5).tolist()
        [0.7071067690849304, 1.4142135381698608]
    """
    s = x_mean.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


@dataclass(frozen=True)
class ScaleSearch:
    """The chosen alpha, its scales and the output error of every alpha tried."""

    alpha: float
    scales: Tensor
    errors: dict[float, float]


def awq_search(
    weights: Sequence[Tensor],
    gram: Tensor,
    x_mean: Tensor,
    specs: Sequence[QuantSpec],
    grid: int = 20,
    method: ScaleMethod = "minmax",
) -> ScaleSearch:
    """The alpha in {0, 1/grid, ...} whose scales quantize the layers with the least error.

    `weights` are the layers that read one input (out_i, in), `gram` its X^T X and `x_mean`
    its mean |x| per feature; layer i is quantized with `specs[i]`.

    Example:
        >>> x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
        >>> x[:, 0] *= 30.0
        >>> w = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        >>> found = awq_search([w], x.T @ x, x.abs().mean(0), [QuantSpec(3, False)])
        >>> found.alpha > 0, found.errors[found.alpha] < found.errors[0.0]
        (True, True)
    """
    errors: dict[float, float] = {}
    best: tuple[float, float, Tensor] | None = None
    g = gram.float()
    for step in range(grid):
        alpha = step / grid
        s = awq_scales(x_mean, alpha)
        err = 0.0
        for w, spec in zip(weights, specs, strict=True):
            w = w.detach().float()
            scaled = pad_to_groups(w * s[None, :], spec)
            effective = fake_quantize(scaled, spec, method)[:, : w.shape[1]] / s[None, :]
            err += gram_error(effective - w, g)
        errors[alpha] = err
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return ScaleSearch(best[1], best[2], errors)


def clipped_qparams(
    weight: Tensor, gram: Tensor, spec: QuantSpec, grid: int = 20, max_shrink: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Scale and zero per group whose range, shrunk by a searched factor, keeps the output best.

    Each group (of a row) is judged by its own part of the output error, d^T G_gg d with G_gg
    the Gram's diagonal block of the group's inputs. `weight` is (out, in) with in a multiple
    of the group size; per-tensor specs fall back to min-max.

    Example:
        >>> x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> w = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
        >>> w[0, 0] = 6.0  # one outlier weight stretches its row's range
        >>> s, z = clipped_qparams(w, x.T @ x, QuantSpec(3, False))
        >>> bool(s[0, 0] < choose_qparams(w, QuantSpec(3, False))[0][0, 0])
        True
    """
    if spec.granularity == "tensor":
        return choose_qparams(weight, spec)
    g = grouped(weight.detach().float(), spec)  # [rows, groups, size]
    rows, groups, size = g.shape
    blocks = torch.stack(
        [gram[i * size : (i + 1) * size, i * size : (i + 1) * size] for i in range(groups)]
    ).float()  # [groups, size, size]
    lo, hi = g.amin(-1), g.amax(-1)
    best_scale, best_zero = qparams_from_range(lo, hi, spec)
    best_err = torch.full((rows, groups), torch.inf, device=g.device)
    for shrink in torch.linspace(1.0, 1.0 - max_shrink, grid).tolist():
        scale, zero = qparams_from_range(lo * shrink, hi * shrink, spec)
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        q = torch.clamp(torch.round(g / s) + z, spec.qmin, spec.qmax)
        delta = ((q - z) * s - g).transpose(0, 1)  # [groups, rows, size]
        err = (torch.bmm(delta, blocks) * delta).sum(-1).T  # [rows, groups]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


# -- the stage -----------------------------------------------------------------------------


@dataclass
class _Solved:
    q: Tensor
    scale: Tensor
    zero: Tensor
    alpha: float
    input_scale: Tensor | None  # 1/s kept as an InputScale module (no fold found)


@register(AWQConfig)
def quantize_awq(model: nn.Module, config: AWQConfig, ctx: Context) -> nn.Module:
    """Scale, clip and quantize the chosen Linear layers with AWQ, from the task's data.

    Every group is solved first (its float weights holding the dequantized values and its
    producer the folded scale, so later layers see them), then all layers are swapped for
    quantized modules; on any error the whole state is put back.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(64, 32), torch.zeros(64, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 2))
        >>> _ = quantize_awq(net, AWQConfig(bits=4, group_size=32), Context(task, quiet=True))
        >>> [type(m).__name__ for m in net]
        ['LayerNorm', 'Int4WeightOnlyLinear', 'GELU', 'InputScale']
    """
    stage = config.NAME
    task = ctx.require_task(stage)
    layers = chosen_linears(model, config.layers, config.exclude, stage, config.embeddings)
    specs = {name: config.spec_for(name) for name in layers}
    for name, layer in layers.items():  # a group size that cannot work fails before any change
        padded_weight(layer, specs[name], name)
    solved: dict[str, _Solved] = {}
    folded: dict[str, str] = {}
    targets: dict[str, str | None] = {}
    modules = dict(model.named_modules())  # after choosing, which may swap Conv1D layers

    def find_folds(calibration: Calibration) -> None:
        allowed = _same_block(model, layers, calibration.blocks)
        check = calibration.example(CHECK_SAMPLES)
        targets.update(fold_targets(model, calibration.groups, layers, check, allowed))

    def solve(group: dict[str, LayerInputs]) -> None:
        names = list(group)
        seen = group[names[0]]
        assert seen.gram is not None
        found = awq_search(
            [layers[n].weight for n in names],
            seen.gram,
            seen.abs_mean,
            [specs[n] for n in names],
            config.grid,
            config.scale_method,  # type: ignore[arg-type]
        )
        s, alpha = found.scales, found.alpha
        target = targets.get(names[0])
        if target is not None and target in solved and _tensor_scaled(solved[target]):
            target = None  # one scale for a whole tensor cannot take a per-row factor
        if target is None and config.fold_only:
            s, alpha = torch.ones_like(s), 0.0
        if target is not None:
            divide_outputs(modules[target], s)
            if target in solved:
                solved[target].scale /= s[:, None]
            folded[names[0]] = target
        for name in names:
            solved[name] = _quantize_layer(name, s, target, seen, alpha)

    def _quantize_layer(
        name: str, s: Tensor, target: str | None, seen: LayerInputs, alpha: float
    ) -> _Solved:
        layer, spec = layers[name], specs[name]
        assert seen.gram is not None
        multiply_inputs(layer, s)
        weight = padded_weight(layer, spec)
        pad = weight.shape[1] - layer.in_features
        s_pad = F.pad(s, (0, pad), value=1.0)
        if config.clip:
            gram = F.pad(seen.gram, (0, pad) * 2) / (s_pad[:, None] * s_pad[None, :])
            scale, zero = clipped_qparams(weight, gram, spec, config.grid, config.max_shrink)
            scale = kernel_scales(scale, spec)
        else:
            scale, zero = kernel_qparams(weight, spec, config.scale_method)  # type: ignore[arg-type]
        q = quantize(weight, scale, zero, spec)
        deq = dequantize(q, scale, zero, spec)[:, : layer.in_features]
        if not bool(torch.isfinite(deq).all()):
            raise ModelError(f"{stage}: layer {name}: quantized weights are not finite")
        keep = None if target is not None or config.fold_only else 1.0 / s
        layer.weight.copy_(deq if keep is None else deq / s[None, :])
        return _Solved(q, scale, zero, alpha, keep)

    def make(name: str, linear: nn.Linear) -> nn.Module:
        r = solved[name]
        module = quantized_linear(linear, specs[name], r.q, r.scale, r.zero)
        return InputScale.around(module, r.input_scale)

    how = Layerwise(stage, config.calibration_samples, config.blocks)
    with restored_on_error(model, spill=None):
        run = run_layerwise(model, layers, task, solve, how, ctx, prepare=find_folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # chosen_linears warned about float layers already
            swap_linears(model, config, ctx, make)
    ctx.record(
        alpha={n: r.alpha for n, r in solved.items()},
        folded_into=folded,
        input_scale_modules=sorted(n for n, r in solved.items() if r.input_scale is not None),
        calibration_samples=run.samples,
    )
    return model


def _tensor_scaled(solved: _Solved) -> bool:
    return solved.scale.numel() == 1 and solved.q.shape[0] > 1


def _same_block(
    model: nn.Module, layers: Mapping[str, nn.Linear], blocks: list[nn.Module] | None
) -> Callable[[str, str], bool]:
    """A veto on folds: inside blocks, the producer must be in the group's own block.

    Blocks run on cached inputs; a fold into an op before the block would leave those inputs
    stale (undivided) for the block's later groups.
    """
    index_of: dict[int, int] = {}
    for i, block in enumerate(blocks or []):
        index_of.update({id(sub): i for sub in block.modules()})
    modules = dict(model.named_modules())

    def allowed(first: str, producer: str) -> bool:
        group = index_of.get(id(layers[first]))
        return group is None or index_of.get(id(modules[producer])) == group

    return allowed
