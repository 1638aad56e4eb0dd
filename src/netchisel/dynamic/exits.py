"""The model that really exits: a backbone run step by step, with heads that may stop it.

In eval mode, `forward` runs the backbone's steps up to the first exit, asks that exit's head
how sure it is, and writes the answers of the samples that are sure enough into the output.
Only the others go on, as a smaller batch (regrouping), to the next exit and finally to the
rest of the backbone; at batch 1 a sure sample returns at once and the later layers never run.
An exit whose threshold never fires is skipped: its head does not run either.
The outputs come back in the samples' original order. This is real computation saved, not a
simulation: what never runs costs nothing, and `netchisel.measure.count_flops` counts only
what ran.

In training mode `forward` is the backbone's own output (through the same steps), and
`all_outputs` gives every exit's logits and the final ones for the training losses.

The backbone is kept whole as the child `backbone` (its state-dict keys gain the prefix
`backbone.`); the heads are `heads.0`, `heads.1`, ...; with `criterion: learned` each exit
also has a decider, `deciders.0`, ... (`netchisel.dynamic.deciders`), which runs on the
samples still in the batch at its exit, right after the head. The split points, criterion,
thresholds and the exit distribution measured on the validation split are plain attributes,
so `netchisel.save` / `netchisel.load` keep them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.chain import GLUE, run_steps
from netchisel.dynamic.confidence import CRITERIA, check_threshold, exits_now, fires, never
from netchisel.dynamic.costs import exit_costs
from netchisel.dynamic.deciders import check_decider
from netchisel.dynamic.loaded import check_fractions, is_int


class EarlyExitModel(nn.Module):
    """A backbone with exit heads after some of its steps and a threshold per exit (none
    given: every exit off until `set_thresholds`).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> model = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1", "2"], [1], [0.5])
        >>> model.eval()(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Sequence[nn.Module],
        steps: list[str],
        exit_after: list[int],
        thresholds: list[float],
        criterion: str = "max_softmax",
        num_classes: int | None = None,
        deciders: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise ConfigError(
                f"dynamic.early_exit: criterion {criterion!r} is not one of {', '.join(CRITERIA)}"
            )
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        # One per head with criterion "learned", else none (empty: no parameters, no keys).
        self.deciders = nn.ModuleList(deciders)
        self.steps = list(steps)
        self.exit_after = list(exit_after)
        self.criterion = criterion
        self.num_classes = num_classes
        self.thresholds: list[float] = [never(criterion)] * len(heads)
        # Fraction of the calibration split that leaves at each exit, then at the end.
        self.exit_fractions: list[float] = []
        self.set_thresholds(thresholds or self.thresholds)
        self._check_deciders()

    @property
    def exit_names(self) -> list[str]:
        """The module after which each exit sits."""
        return [self.steps[i] for i in self.exit_after]

    def check_loaded(self) -> None:
        """The attributes a manifest set agree with each other: exits at increasing steps
        before the last, one head each, thresholds in range, one fraction per path."""
        after = self.exit_after
        self._check_steps()
        if len(after) != len(self.heads):
            raise ConfigError("dynamic.early_exit: one exit position per head is needed")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"dynamic.early_exit: unknown criterion {self.criterion!r}")
        if "deciders" not in self._modules:  # saved before learned exit decisions existed
            self.deciders = nn.ModuleList()
        classes = self.num_classes
        if classes is not None and not (is_int(classes) and classes >= 2):
            raise ConfigError(f"dynamic.early_exit: num_classes must be >= 2, got {classes!r}")
        self.set_thresholds(self.thresholds)
        self._check_deciders()
        if self.exit_fractions and len(self.exit_fractions) != len(self.heads) + 1:
            raise ConfigError("dynamic.early_exit: exit_fractions needs one share per path")
        fractions, paths = self.exit_fractions, len(self.heads) + 1
        check_fractions(fractions, paths, "exit_fractions", "dynamic.early_exit")

    def _check_steps(self) -> None:
        """Every step is a module of the backbone or a glue step; exits at increasing steps
        before the last."""
        after, steps = self.exit_after, self.steps
        modules = dict(self.backbone.named_modules())
        for step in steps if isinstance(steps, list) else [steps]:
            if not isinstance(step, str) or not (step in GLUE or (step and step in modules)):
                raise ConfigError(
                    f"dynamic.early_exit: step {step!r} is not a module of the backbone"
                )
        if not all(is_int(i) and 0 <= i < len(steps) - 1 for i in after):
            raise ConfigError(f"dynamic.early_exit: exit_after {after!r} is not steps' indices")
        if any(a >= b for a, b in itertools.pairwise(after)):
            raise ConfigError(f"dynamic.early_exit: exit_after must increase, got {after}")

    def _check_deciders(self) -> None:
        """A decider per exit that maps the exit's logits to one score with criterion
        "learned", none otherwise."""
        wanted = len(self.heads) if self.criterion == "learned" else 0
        if len(self.deciders) != wanted:
            raise ConfigError(
                f"dynamic.early_exit: criterion {self.criterion!r} with {len(self.heads)} exits "
                f"needs {wanted} deciders, got {len(self.deciders)}"
            )
        if wanted and not isinstance(self.num_classes, int):
            raise ConfigError("dynamic.early_exit: criterion 'learned' needs num_classes")
        for k, decider in enumerate(self.deciders):
            check_decider(decider, int(self.num_classes or 0), f"deciders[{k}]")

    def decider(self, k: int) -> nn.Module | None:
        """Exit `k`'s decider with criterion "learned", else None."""
        return self.deciders[k] if self.criterion == "learned" else None

    def set_thresholds(self, thresholds: list[float]) -> None:
        """Set one threshold per exit, each checked against the criterion's range.

        Example:
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
            >>> m = EarlyExitModel(net, [nn.Linear(2, 2)], ["0", "1"], [0], [1.0])
            >>> m.set_thresholds([2.0])  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            netchisel.core.errors.ConfigError: ...: thresholds[0] = 2.0 is outside [0, 1] ...
        """
        values = [float(t) for t in thresholds]
        if len(values) != len(self.heads):
            raise ConfigError(
                f"dynamic.early_exit: {len(values)} thresholds for {len(self.heads)} exits; "
                "give one per exit"
            )
        classes = self.num_classes or 2
        for k, value in enumerate(values):
            check_threshold(self.criterion, value, max(classes, 2), f"thresholds[{k}]")
        self.thresholds = values

    def _segments(self) -> list[list[str]]:
        """The steps before each exit, then the steps after the last one."""
        bounds = [0, *(i + 1 for i in self.exit_after), len(self.steps)]
        return [self.steps[a:b] for a, b in itertools.pairwise(bounds)]

    def features(self, x: Tensor) -> list[Tensor]:
        """The backbone's features at every exit, then its output (no head runs).

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
            >>> m = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [1.0])
            >>> [tuple(t.shape) for t in m.features(torch.zeros(2, 4))]
            [(2, 8), (2, 3)]
        """
        out: list[Tensor] = []
        for segment in self._segments():
            # The next steps run on a copy: one that works in place (ReLU(inplace=True) right
            # after an exit, as in torchvision's VGG) would otherwise change the feature kept
            # for the head, which at inference reads it before those steps run.
            x = run_steps(self.backbone, segment, x.clone() if out else x)
            out.append(x)
        return out

    def all_outputs(self, x: Tensor) -> list[Tensor]:
        """Every exit's logits, then the backbone's output, for the whole batch.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
            >>> m = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [1.0])
            >>> [tuple(t.shape) for t in m.all_outputs(torch.zeros(2, 4))]
            [(2, 3), (2, 3)]
        """
        features = self.features(x)
        return [*(head(f) for head, f in zip(self.heads, features, strict=False)), features[-1]]

    def exiting(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs with early exits, and the exit each sample took (len(heads) = the end).

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
            >>> m = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1"], [0], [0.0]).eval()
            >>> m.exiting(torch.zeros(3, 4))[1].tolist()  # threshold 0: everything leaves
            [0, 0, 0]
        """
        n = x.shape[0]
        segments = self._segments()
        index = torch.arange(n, device=x.device)
        taken = torch.full((n,), len(self.heads), dtype=torch.long, device=x.device)
        out: Tensor | None = None
        for k, (segment, head) in enumerate(zip(segments, self.heads, strict=False)):
            x = run_steps(self.backbone, segment, x)
            if not fires(self.criterion, self.thresholds[k]):
                continue  # an exit that can never let a sample out: its head does not run
            logits = head(x)
            done = exits_now(logits, self.criterion, self.thresholds[k], self.decider(k))
            # One sync decides what follows; on a small model each tensor operation costs
            # about as much as a layer, so the cases below index as little as they can.
            count = int(done.sum())
            if count == 0:
                continue
            if count == len(index) and out is None:  # all of them, at the first live exit
                taken.fill_(k)
                return logits, taken
            if out is None:
                out = logits.new_empty((n, *logits.shape[1:]))
            if count == len(index):
                out[index] = logits
                taken[index] = k
                return out, taken
            rows = done.nonzero().squeeze(1)
            keep = (~done).nonzero().squeeze(1)
            out[index[rows]] = logits[rows]
            taken[index[rows]] = k
            x, index = x[keep], index[keep]
        final = run_steps(self.backbone, segments[-1], x)
        if out is None:
            return final, taken
        out[index] = final.to(out.dtype)
        return out, taken

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return run_steps(self.backbone, self.steps, x)
        if x.shape[0] == 1:
            return self._single(x)
        return self.exiting(x)[0]

    def _single(self, x: Tensor) -> Tensor:
        """Batch 1 without `exiting`'s bookkeeping (the exit index, the output buffer): on a
        small model each extra tensor operation costs as much as a layer."""
        segments = self._segments()
        for k, (segment, head) in enumerate(zip(segments, self.heads, strict=False)):
            x = run_steps(self.backbone, segment, x)
            if fires(self.criterion, self.thresholds[k]):
                logits: Tensor = head(x)
                decision = exits_now(logits, self.criterion, self.thresholds[k], self.decider(k))
                if bool(decision):
                    return logits
        return run_steps(self.backbone, segments[-1], x)

    def dynamic_costs(self, example_inputs: Any) -> dict[str, Any]:
        """MACs per sample at each exit and the expected MACs under the calibration split's
        exit distribution (what `netchisel.measure.profile` reports as `dynamic`)."""
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        return exit_costs(self, inputs[0])
