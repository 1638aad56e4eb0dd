"""`quantize.gptq`: weight quantization with second-order error feedback (GPTQ).

Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023). For one Linear layer with weight W (rows =
outputs, columns = inputs) and calibration inputs X, GPTQ looks for quantized weights that
keep the layer's output, minimising ||(W - Q) X^T||^2. Every output row shares the Hessian
H = 2 X^T X / n, so one inverse serves them all.

The solver quantizes one column at a time, left to right. The rounding error of column j,
err = (w_j - q_j) / [U]_jj, is spread over the columns not yet quantized through row j of U,
the upper Cholesky factor of H^-1: they move to compensate for it (Optimal Brain Quantization
restricted to the columns on the right). Lazy batch updates: inside a block of `blocksize`
columns the update is applied column by column; the block's errors reach the columns on its
right in one matrix product. With groups, a group's scale and zero are chosen from its
columns as they are when the solver reaches the group (already corrected by the errors of the
groups before it); the block size is rounded up to a multiple of the group size so a group
never straddles two blocks.

Act-order (`act_order: true`) quantizes columns in order of decreasing H diagonal (the inputs
with the most energy first, while the most columns remain to absorb their error). With groups
we keep the groups of the stored format consistent by choosing every group's scale and zero
*before* the sweep from the original weights ("static groups"): column c always uses the
parameters of group c // group_size, whatever order it is quantized in, so the artifact needs
no per-column group index and runs on the same kernels as RTN. The cost is that scales do not
see the error feedback.

Damping, its tenfold escalation when float32 cannot factor H, and the refusal of non-finite
calibration inputs are shared with SparseGPT (`netchisel.calib.hessian`). Layers are solved in
call order, block by block, each on the outputs of the already quantized layers before it:
`quantize_gptq` is a `solve` function over `netchisel.calib.run_layerwise`. The number format
is any `QuantSpec` (1-8 bits, per tensor, channel or group) with any scale chooser, so the
solver and the format combine freely (as gpt-fast's GPTQ takes its quantize functions as
arguments); the result is the same integers, scales and zeros that RTN produces, so the same
modules (`quantize.formats.quantized_linear`) hold it.

Written here because the authors' code, AutoGPTQ and llm-compressor are tied to Hugging Face
model classes and to their own number formats.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netchisel.calib import LayerInputs, Layerwise, run_layerwise
from netchisel.calib.hessian import (
    damped_factors,
    gram_error,
    layer_hessian,
    prepared_hessian,
    row_chunks,
    unsolvable,
)
from netchisel.core.config import check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.registry import register
from netchisel.core.spill import held_tensors
from netchisel.core.state import restored_on_error
from netchisel.quantize.formats import kernel_qparams, padded_weight, quantized_linear
from netchisel.quantize.linears import chosen_linears, swap_linears
from netchisel.quantize.primitives import (
    QuantSpec,
    ScaleMethod,
    dequantize,
    group_padding,
    quantize,
)
from netchisel.quantize.rtn import WeightQuantConfig

QParamsChooser = Callable[[Tensor, QuantSpec], tuple[Tensor, Tensor]]
"""`(weight [rows, cols], spec) -> (scale, zero)` of shape [rows, groups], as `kernel_qparams`."""


@dataclass(frozen=True)
class GPTQConfig(WeightQuantConfig):
    """GPTQ: the weight format of `quantize.rtn` plus the solver's settings.

    - `blocksize`: columns per lazy batch update (paper: 128); rounded up to a multiple of the
      group size. It changes speed, not the result.
    - `damping`: added to H's diagonal as a fraction of its mean diagonal (paper: 0.01).
    - `act_order`: quantize columns by decreasing H diagonal, with static groups.
    - `calibration_samples`: samples of the task's train split (for text: windows).
    - `blocks`: the `nn.ModuleList` of transformer blocks run one at a time; None finds it;
      "" runs every pass through the whole model.

    Example:
        >>> GPTQConfig(bits=4, group_size=64).spec_for("fc").group_size
        64
    """

    NAME: ClassVar[str] = "quantize.gptq"

    blocksize: int = 128
    damping: float = 0.01
    act_order: bool = False
    calibration_samples: int = 128
    blocks: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.blocksize < 1:
            raise ConfigError(f"quantize.gptq.blocksize: must be >= 1, got {self.blocksize}")
        if not self.damping > 0.0:
            raise ConfigError(f"quantize.gptq.damping: must be > 0, got {self.damping}")
        check_calibration_samples("quantize.gptq", self.calibration_samples)


# -- the solver: pure functions on tensors ------------------------------------------------


@dataclass(frozen=True)
class GPTQResult:
    """A solved layer: integers, scales and zeros as `primitives.quantize` gives them.

    `damping` is the fraction of H's mean diagonal that made H invertible. The dequantized
    weight (what the layer computes with) is not held: `weight` and `rows` compute it from
    the integers, which is how a large layer is written back a chunk of rows at a time.
    """

    q: Tensor
    scale: Tensor
    zero: Tensor
    damping: float
    spec: QuantSpec
    dtype: torch.dtype = torch.float32

    def rows(self, rows: slice) -> Tensor:
        """The dequantized weight of output rows `rows`, in the input weight's dtype."""
        scale, zero = _of_rows(self.scale, rows), _of_rows(self.zero, rows)
        return dequantize(self.q[rows], scale, zero, self.spec).to(self.dtype)

    @property
    def weight(self) -> Tensor:
        """The whole dequantized weight (a new tensor)."""
        return self.rows(slice(None))


def _of_rows(t: Tensor, rows: slice) -> Tensor:
    """Rows `rows` of a per-row parameter; a per-tensor one (one row) serves every row."""
    return t if t.shape[0] == 1 else t[rows]


def gptq_solve(
    weight: Tensor,
    hessian: Tensor,
    spec: QuantSpec,
    *,
    blocksize: int = 128,
    damping: float = 0.01,
    act_order: bool = False,
    choose: QParamsChooser | None = None,
) -> GPTQResult:
    """Quantize `weight` (out, in) to `spec`, keeping `weight @ x` for the inputs of H.

    `hessian` is X^T X (any positive scale) of the layer's inputs, (in, in). `choose` picks
    scales and zeros for a block of columns under `spec` (default: `kernel_qparams` min-max,
    whose scales are exactly what the kernels store). If the damped H is not positive
    definite in float32, or the result is not finite, the damping is raised tenfold, up to
    `calib.hessian.DAMPING_RETRIES` times. The rows are solved in chunks
    (`calib.hessian.row_chunks`) with one inverse factor: the float working set is one
    chunk's, whatever the layer's size, and the result is the same. Inputs are not modified.

    Example:
        >>> x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> w = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        >>> result = gptq_solve(w, x.T @ x, QuantSpec(bits=4, symmetric=False))
        >>> int(result.q.max()) <= 15, tuple(result.scale.shape), result.damping
        (True, (4, 1), 0.01)
    """
    choose = choose or functools.partial(kernel_qparams, method="minmax")
    weight = weight.detach()
    rows, cols = weight.shape
    if group_padding(cols, spec):
        raise ConfigError(
            f"group_size {spec.group_size} does not divide the {cols} inputs of the weight: "
            "pad it (quantize.formats.padded_weight) or choose a divisor"
        )
    h = prepared_hessian(hessian)
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
    else:
        perm = torch.arange(cols, device=weight.device)
    inverse = torch.argsort(perm)
    static = spec.granularity != "group" or act_order
    # Static parameters come from the original rows before the sweep: from each chunk's own
    # rows (per row, so the same), from the whole weight only for the one per-tensor scale.
    whole = choose(weight.float(), spec) if spec.granularity == "tensor" else None
    if spec.granularity == "group" and not act_order:
        blocksize = -(-blocksize // spec.group_size) * spec.group_size
    if act_order:  # without it perm is the identity: no permuted copy of H (memory)
        h = h[perm][:, perm]
    for factor, used in damped_factors(h, damping):
        q = torch.empty(rows, cols, dtype=spec.storage_dtype, device=weight.device)
        scales, zeros = [], []
        for chunk in row_chunks(rows, cols):
            # [:, perm] copies the chunk's rows in solving order; the sweep works on that copy.
            w = weight[chunk].float()[:, perm]
            fixed = (whole or choose(weight[chunk].float(), spec)) if static else None
            q_chunk, scale, zero = _sweep(w, factor, spec, perm, blocksize, fixed, choose)
            del w
            q[chunk] = q_chunk[:, inverse]
            if not bool(torch.isfinite(dequantize(q[chunk], scale, zero, spec)).all()):
                break
            scales.append(scale)
            zeros.append(zero)
        else:
            if spec.granularity == "tensor":  # every chunk holds the one fixed scale
                scales, zeros = scales[:1], zeros[:1]
            scale, zero = torch.cat(scales), torch.cat(zeros)
            return GPTQResult(q, scale, zero, used, spec, weight.dtype)
    raise unsolvable(damping)


def _sweep(
    w: Tensor,
    u: Tensor,
    spec: QuantSpec,
    perm: Tensor,
    blocksize: int,
    fixed: tuple[Tensor, Tensor] | None,
    choose: QParamsChooser,
) -> tuple[Tensor, Tensor, Tensor]:
    """The column sweep over `w` (columns in solving order; updated in place): integers, scale,
    zero."""
    rows, cols = w.shape
    column = QuantSpec(spec.bits, spec.symmetric, "channel")
    if fixed is not None:
        scale, zero = (t.expand(rows, -1).clone() for t in fixed)
    else:
        groups = cols // spec.group_size
        scale = torch.ones(rows, groups, device=w.device)
        zero = torch.zeros(rows, groups, device=w.device)
    group_of = perm // spec.group_size if spec.granularity == "group" else torch.zeros_like(perm)
    group_of_list = group_of.tolist()
    q = torch.zeros(rows, cols, dtype=spec.storage_dtype, device=w.device)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        errors = torch.zeros_like(block)
        for j in range(end - start):
            g = group_of_list[start + j]
            if fixed is None and (start + j) % spec.group_size == 0:
                # The group's parameters come from its columns as the sweep left them.
                s, z = choose(block[:, j : j + spec.group_size], spec)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            s, z = scale[:, g : g + 1], zero[:, g : g + 1]
            col = block[:, j : j + 1]
            qj = quantize(col, s, z, column)
            deq = dequantize(qj, s, z, column)
            err = (col - deq)[:, 0] / u_block[j, j]
            # Spread the error over the columns to the right (row j of U).
            block[:, j:] -= err[:, None] * u_block[j, j:][None, :]
            block[:, j : j + 1] = deq
            q[:, start + j] = qj[:, 0]
            errors[:, j] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    if spec.granularity == "tensor":
        scale, zero = scale[:1], zero[:1]
    return q, scale, zero


def rtn_weight(weight: Tensor, spec: QuantSpec, method: ScaleMethod = "minmax") -> Tensor:
    """What `quantize.rtn` computes with: `weight` rounded to nearest on the kernel's scales.

    Example:
        >>> rtn_weight(torch.tensor([[0.0, 0.5, -1.0]]), QuantSpec(bits=4, symmetric=False))
        tensor([[ 0.0000,  0.5000, -1.0000]])
    """
    scale, zero = kernel_qparams(weight, spec, method)
    return _rounded(weight, scale, zero, spec)


def _rounded(weight: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    return dequantize(quantize(weight, scale, zero, spec), scale, zero, spec)


# -- the stage: layer by layer through the model ------------------------------------------


@register(GPTQConfig)
def quantize_gptq(model: nn.Module, config: GPTQConfig, ctx: Context) -> nn.Module:
    """Quantize the chosen Linear layers with GPTQ, in call order, from the task's data.

    Calibration samples come from the task's train split. Every layer is solved first (its
    float weight holding the dequantized values meanwhile, so later layers see them), then all
    are swapped for quantized modules; on any error the model is put back as it was.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(64, 32), torch.zeros(64, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> config = GPTQConfig(bits=4, group_size=32)
        >>> _ = quantize_gptq(net, config, Context(task, quiet=True))
        >>> type(net[0]).__name__, type(net[2]).__name__
        ('Int4WeightOnlyLinear', 'Int4WeightOnlyLinear')
    """
    stage = config.NAME
    task = ctx.require_task(stage)
    layers = chosen_linears(model, config.layers, config.exclude, stage, config.embeddings)
    specs = {name: config.spec_for(name) for name in layers}
    for name, layer in layers.items():  # a group size that cannot work fails before any change
        padded_weight(layer, specs[name], name)
    choose = functools.partial(kernel_qparams, method=config.scale_method)  # type: ignore[arg-type]
    # Only the integers, scales and zeros wait for the swap (not the dequantized weight, which
    # is copied into the layer at once): held for every layer, a float copy would double the
    # model's memory by the end.
    solved: dict[str, tuple[Tensor, Tensor, Tensor]]  # held_tensors below: on disk if large
    damping: dict[str, float] = {}
    errors: dict[str, tuple[float, float]] = {}

    def solve(group: dict[str, LayerInputs]) -> None:
        for name, seen in group.items():
            layer, spec = layers[name], specs[name]
            weight = padded_weight(layer, spec)
            pad = (0, weight.shape[1] - layer.in_features) * 2
            try:
                result = gptq_solve(
                    weight,
                    F.pad(layer_hessian(seen), pad),
                    spec,
                    blocksize=config.blocksize,
                    damping=config.damping,
                    act_order=config.act_order,
                    choose=choose,
                )
            except ModelError as e:
                raise ModelError(
                    f"{stage}: layer {name}: {e}; exclude it or raise damping"
                ) from None
            gram = F.pad(seen.gram, pad)  # type: ignore[arg-type]
            errors[name] = _write_back(layer, weight, result, gram, config.scale_method)
            solved[name] = (result.q, result.scale, result.zero)
            damping[name] = result.damping

    def make(name: str, linear: nn.Linear) -> nn.Module:
        q, scale, zero = solved[name]
        return quantized_linear(linear, specs[name], q, scale, zero)

    how = Layerwise(stage, config.calibration_samples, config.blocks)
    with restored_on_error(model, spill=None), held_tensors(model) as solved:
        run = run_layerwise(model, layers, task, solve, how, ctx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # chosen_linears warned about float layers already
            swap_linears(model, config, ctx, make)
    ctx.record(
        layer_output_error={n: e[0] for n, e in errors.items()},
        rtn_layer_output_error={n: e[1] for n, e in errors.items()},
        damping=damping,
        calibration_samples=run.samples,
    )
    return model


def _write_back(
    layer: nn.Linear, weight: Tensor, result: GPTQResult, gram: Tensor, method: str
) -> tuple[float, float]:
    """Copy the dequantized result into `layer`; its output error and RTN's (relative).

    A chunk of rows at a time (`row_chunks`), so no float copy of a whole large layer is made;
    `weight` (the padded float weight) may be a view of the layer's: each chunk is read before
    it is written.
    """
    spec = result.spec
    # RTN's scales per chunk (they are per row), from the whole weight only when per tensor.
    whole = kernel_qparams(weight, spec, method) if spec.granularity == "tensor" else None  # type: ignore[arg-type]
    total = ours = rtn = 0.0
    for rows in row_chunks(*weight.shape):
        before, after = weight[rows], result.rows(rows)
        scale, zero = whole or kernel_qparams(before, spec, method)  # type: ignore[arg-type]
        rounded = _rounded(before, scale, zero, spec)
        total += gram_error(before, gram)
        ours += gram_error(before - after, gram)
        rtn += gram_error(before - rounded, gram)
        layer.weight[rows].copy_(after[:, : layer.in_features])
    return (ours / total, rtn / total) if total > 0 else (0.0, 0.0)
