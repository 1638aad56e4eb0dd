"""The model that really runs narrower: a slimmable model and a gate choosing a width per input.

In eval mode, `forward` asks the gate (a tiny conv or linear net on the input, its cost
counted) which width each sample gets, groups the samples by width, and runs each group
through the model's own forward with every planned conv/linear layer computing on its SLICED
weights (`weight[:c_out, :c_in]`: a narrow conv is a smaller conv) and every BatchNorm that
width's own; the outputs come back in the samples' original order. At batch 1 only the chosen
width runs. Nothing is masked: what is cut is never computed, and
`netchisel.measure.count_flops` counts only what ran.

The model handed in is kept whole as the child `backbone`: the full width is exactly its own
forward. The narrower widths' BatchNorms (switchable BatchNorm, Yu et al. 2018) are
`norms.<i>.<k>` (the i-th BatchNorm of the plan at width k; the full width uses the
backbone's own). The widths, the plan (layers, kinds, channels per width), the gate's bias and
the width histogram of the calibration split are plain attributes, so `netchisel.save` /
`netchisel.load` keep them; `check_loaded` holds them against the backbone's layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from netchisel.core.errors import ConfigError
from netchisel.dynamic.labelled import logits_of
from netchisel.dynamic.loaded import check_fractions, is_int, is_number
from netchisel.dynamic.width_slim import (
    KINDS,
    STAGE,
    SlimPlan,
    check_width,
    full_channels,
    installed,
    is_depthwise,
    slice_forward,
    tensor_of,
)
from netchisel.measure.flops import count_flops


class WidthModel(nn.Module):
    """A slimmable backbone (`plan` made by `plan_width`) and a `gate` giving one logit per
    width; `fixed_width` (an index into `widths`) runs every sample at that width instead.

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
        >>> model = WidthModel(net, plan, [0.5, 1.0], nn.Linear(4, 2)).eval()
        >>> model(torch.zeros(5, 4)).shape, model.run_width(torch.zeros(1, 4), 0).shape
        (torch.Size([5, 3]), torch.Size([1, 3]))
    """

    def __init__(
        self, backbone: nn.Module, plan: SlimPlan, widths: list[float], gate: nn.Module
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.gate = gate
        self.widths = [float(w) for w in widths]
        self.steps = list(plan.steps)
        self.kinds = list(plan.kinds)
        self.channels_in = [list(c) for c in plan.channels_in]
        self.channels_out = [list(c) for c in plan.channels_out]
        # Added to gate logit k as bias * k: > 0 leans to wider widths (set on calibration).
        self.gate_bias = 0.0
        self.fixed_width: int | None = None
        # Share of the calibration split the gate sent to each width.
        self.width_fractions: list[float] = []
        norms = []
        for j, kind in enumerate(self.kinds):
            if kind != "norm":
                continue
            full = self._module(j)
            narrow = nn.ModuleList()
            for c in self.channels_in[j][:-1]:
                bn = type(full)(c, eps=full.eps, momentum=full.momentum)
                with torch.no_grad():  # start from the full width's first channels
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, name).copy_(tensor_of(full, name)[:c])
                narrow.append(bn.to(tensor_of(full, "weight").device))
            norms.append(narrow)
        self.norms = nn.ModuleList(norms)

    def check_loaded(self) -> None:
        """The attributes a manifest set agree with each other: widths in (0, 1], increasing;
        one channel count per width in every step; a valid fixed width and fractions."""
        widths = self.widths
        if not isinstance(widths, list) or not widths:
            raise ConfigError(f"{STAGE}: widths must be a non-empty list, got {widths!r}")
        for k, w in enumerate(widths):
            check_width(w, f"widths[{k}]")
        if any(a >= b for a, b in itertools.pairwise(widths)):
            raise ConfigError(f"{STAGE}: widths must increase, got {widths}")
        rows = [*self.channels_in, *self.channels_out]
        if len(self.channels_in) != len(self.steps) or len(self.channels_out) != len(self.steps):
            raise ConfigError(f"{STAGE}: one channel plan per step is needed")
        if any(not isinstance(r, list) or len(r) != len(widths) for r in rows):
            raise ConfigError(f"{STAGE}: every step needs one channel count per width")
        fixed = self.fixed_width
        if fixed is not None and not (is_int(fixed) and 0 <= fixed < len(widths)):
            raise ConfigError(f"{STAGE}: fixed_width {fixed!r} is not an index of widths")
        if self.width_fractions and len(self.width_fractions) != len(widths):
            raise ConfigError(f"{STAGE}: width_fractions needs one share per width")
        check_fractions(self.width_fractions, len(widths), "width_fractions", STAGE)
        if not is_number(self.gate_bias):
            raise ConfigError(f"{STAGE}: gate_bias must be a finite number, got {self.gate_bias!r}")
        self._check_steps()

    def _check_steps(self) -> None:
        """Every step is a module of the backbone of its kind, and every channel count a
        prefix of that module's channels (the narrow BatchNorms' sizes included)."""
        modules = dict(self.backbone.named_modules())
        norms = 0
        for j, (step, kind) in enumerate(zip(self.steps, self.kinds, strict=True)):
            module = modules.get(step) if isinstance(step, str) and step else None
            if (
                module is None
                or kind not in KINDS
                or type(module) not in KINDS[kind]
                or not (getattr(module, "groups", 1) == 1 or is_depthwise(module))
            ):
                raise ConfigError(
                    f"{STAGE}: step {step!r} of kind {kind!r} is not such a module of the backbone"
                )
            c_in, c_out = self.channels_in[j], self.channels_out[j]
            full_in, full_out = full_channels(module, kind)
            for counts, full in ((c_in, full_in), (c_out, full_out)):
                if not all(is_int(c) and 1 <= c <= full for c in counts) or counts[-1] != full:
                    raise ConfigError(
                        f"{STAGE}: step {step!r}: channel counts {counts!r} are not prefixes of "
                        f"its {full} channels ending at all of them"
                    )
            if is_depthwise(module) and c_in != c_out:
                raise ConfigError(
                    f"{STAGE}: step {step!r} is depthwise: it writes the channels it reads"
                )
            if kind == "norm":
                narrow = list(self.norms[norms].children()) if norms < len(self.norms) else []
                sizes = [getattr(bn, "num_features", None) for bn in narrow]
                if sizes != c_in[:-1]:
                    raise ConfigError(
                        f"{STAGE}: step {step!r}: narrow BatchNorms of {sizes} channels for "
                        f"widths of {c_in[:-1]}"
                    )
                norms += 1
        if norms != len(self.norms):
            raise ConfigError(f"{STAGE}: {len(self.norms)} narrow BatchNorm sets for {norms} norms")

    def _module(self, j: int) -> nn.Module:
        module = self.backbone
        # The children tables directly: get_submodule's checks cost microseconds a step.
        for part in self.steps[j].split("."):
            module = module._modules[part]  # type: ignore[assignment]
        return module

    def norm_at(self, j: int, k: int) -> _BatchNorm:
        """The BatchNorm that step `j` (a norm) uses at width index `k`."""
        if k == len(self.widths) - 1:
            norm = self._module(j)
        else:
            norm = self.norms[self.kinds[:j].count("norm")][k]  # type: ignore[index]
        assert isinstance(norm, _BatchNorm), f"step {self.steps[j]} is not a BatchNorm"
        return norm

    def run_width(self, x: Tensor, k: int) -> Tensor:
        """The model at width index `k` on the whole batch: sliced weights, width k's norms
        (a Hugging Face output's `logits`).

        Example:
            >>> from netchisel.dynamic.width_slim import plan_width
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            >>> plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
            >>> m = WidthModel(net, plan, [0.5, 1.0], nn.Linear(4, 2))
            >>> x = torch.randn(2, 4)
            >>> torch.equal(m.run_width(x, 1), net(x))
            True
        """
        if k == len(self.widths) - 1:
            return logits_of(self.backbone(x))  # type: ignore[no-any-return]
        with installed(self._forwards(k)):
            return logits_of(self.backbone(x))  # type: ignore[no-any-return]

    def _forwards(self, k: int) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """Each planned layer's op at width index `k`: the sliced weights, width k's norm."""
        found: list[tuple[nn.Module, Callable[[Tensor], Tensor]]] = []
        for j, kind in enumerate(self.kinds):
            module = self._module(j)
            c_in, c_out = self.channels_in[j][k], self.channels_out[j][k]
            op = self.norm_at(j, k) if kind == "norm" else _sliced(module, kind, c_in, c_out)
            found.append((module, _reading(op, self.steps[j], kind, c_in, self.widths[k])))
        return found

    def choose(self, x: Tensor) -> Tensor:
        """The width index the gate gives each sample (or `fixed_width` for all)."""
        if self.fixed_width is not None:
            return torch.full((x.shape[0],), self.fixed_width, dtype=torch.long, device=x.device)
        logits = self.gate(x)
        lean = self.gate_bias * torch.arange(logits.shape[-1], device=x.device, dtype=logits.dtype)
        choice: Tensor = (logits + lean).argmax(-1)
        return choice

    def routed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs with each sample at its chosen width, and the width index of each.

        Example:
            >>> from netchisel.dynamic.width_slim import plan_width
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            >>> plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
            >>> m = WidthModel(net, plan, [0.5, 1.0], nn.Linear(4, 2)).eval()
            >>> m.fixed_width = 0
            >>> m.routed(torch.zeros(3, 4))[1].tolist()
            [0, 0, 0]
        """
        choice = self.choose(x)
        return grouped(x, choice, self.run_width), choice

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            k = len(self.widths) - 1 if self.fixed_width is None else self.fixed_width
            return self.run_width(x, k)
        return self.routed(x)[0]

    def dynamic_costs(self, example_inputs: Any) -> dict[str, Any]:
        """MACs per sample at each width (with and without the gate's), the gate's, the
        share of the calibration split at each width and the expected MACs per sample (what
        `netchisel.measure.profile` reports as `dynamic`)."""
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        return width_costs(self, inputs[0])


def _reading(
    op: Callable[[Tensor], Tensor], step: str, kind: str, c_in: int, width: float
) -> Callable[[Tensor], Tensor]:
    """`op`, after checking that it is given the `c_in` channels the plan says (one line
    instead of a shape error deep in torch, where a loaded plan disagrees with the forward)."""

    def run(x: Tensor) -> Tensor:
        got = x.shape[-1] if kind == "linear" else x.shape[1]
        if got != c_in:
            raise ConfigError(
                f"{STAGE}: at width {width:g} {step} reads {got} channels where the plan says "
                f"{c_in}: the plan does not fit this model's forward"
            )
        return op(x)

    return run


def _sliced(module: nn.Module, kind: str, c_in: int, c_out: int) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        return slice_forward(module, kind, x, c_in, c_out)

    return run


def grouped(x: Tensor, choice: Tensor, run: Callable[[Tensor, int], Tensor]) -> Tensor:
    """`run(x_k, k)` on the samples of each chosen width k, the outputs put back in the
    samples' order; one call (no indexing) when all share a width, as at batch 1.

    Example:
        >>> grouped(torch.arange(4.0)[:, None], torch.tensor([1, 0, 1, 0]),
        ...         lambda x, k: x * 10 ** k).flatten().tolist()
        [0.0, 1.0, 20.0, 3.0]
    """
    if x.shape[0] == 1:  # batch 1: only its width runs
        return run(x, int(choice[0]))
    chosen = torch.unique(choice).tolist()
    if len(chosen) == 1:
        return run(x, chosen[0])
    out: Tensor | None = None
    for k in chosen:
        index = (choice == k).nonzero().squeeze(1)
        y = run(x.index_select(0, index), k)
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out.index_copy_(0, index, y)
    assert out is not None
    return out


class _AtWidth(nn.Module):
    """Runs a `WidthModel` at one width with no gate, so one count prices that width."""

    def __init__(self, model: WidthModel, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return self.model.run_width(x, self.k)


def width_macs(model: WidthModel, x: Tensor) -> tuple[list[int], int, int]:
    """Exact MACs per sample of each width, of the gate, and of the backbone alone
    (`count_flops` on the first sample of `x`).

    Example:
        >>> from netchisel.dynamic.width_slim import plan_width
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> plan = plan_width(net, [0.5, 1.0], torch.zeros(1, 4))
        >>> width_macs(WidthModel(net, plan, [0.5, 1.0], nn.Linear(4, 2)), torch.zeros(2, 4))
        ([28, 56], 8, 56)
    """
    one = x[:1]
    per_width = [count_flops(_AtWidth(model, k), one).macs for k in range(len(model.widths))]
    return per_width, count_flops(model.gate, one).macs, count_flops(model.backbone, one).macs


def width_costs(model: WidthModel, x: Tensor) -> dict[str, Any]:
    """Per width: its fraction of channels, MACs per sample alone and with the gate, and the
    share of the calibration split the gate sent there; then the gate's MACs, the expected
    MACs per sample under that histogram and the static (backbone) MACs."""
    per_width, gate, static = width_macs(model, x)
    fractions = list(model.width_fractions)
    rows = [
        {
            "width": w,
            "macs": m,
            "macs_with_gate": m + gate,
            "fraction": fractions[k] if fractions else None,
        }
        for k, (w, m) in enumerate(zip(model.widths, per_width, strict=True))
    ]
    expected = (
        sum(f * (m + gate) for f, m in zip(fractions, per_width, strict=True))
        if fractions
        else None
    )
    return {
        "widths": rows,
        "gate_macs": gate,
        "gate_bias": model.gate_bias,
        "static_macs": static,
        "expected_macs": expected,
        "mac_reduction": None if expected is None else 1.0 - expected / static,
    }
