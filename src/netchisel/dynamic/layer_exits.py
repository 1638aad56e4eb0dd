"""Early exits on a backbone whose forward is not a chain (a transformer's layer stack).

A Hugging Face BERT or ViT cannot be cut into steps run one after the other: its forward builds
masks and position tensors and loops over `encoder.layer`. So the exits read it from inside
instead, as DeeBERT (Xin et al. 2020) and PABEE (Zhou et al. 2020) attach off-ramps to a
BERT: a forward hook on each exit module hands its output (the first tensor, the hidden
states) to the exit's head. In eval mode a sample whose head is sure enough keeps that answer;
once no sample of the batch is left, the hook raises and the rest of the forward never runs.
At batch 1 that is a real early return. In a batch, with `regroup`, the exit's hook returns its
output without the rows that exited and the later modules of the exits' container get their
batch-sized arguments (an attention mask) cut the same way, so the rest run as a smaller
batch; the stage sets `regroup` only where `regroups` shows, on the example batch, that every
sample gets exactly the answer of the uncut batch. Without it a batch stops only once all of
its samples have exited.

`plan_layers` checks the exits on one forward of an example: each names a module that runs
exactly once, in the order given, with a float tensor to read. The exit modules and their
order are plain attributes (`steps`, the last one `END`), checked at load like the chain's.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.chain import STAGE, check_exit_names
from netchisel.dynamic.confidence import exits_now, fires
from netchisel.dynamic.exits import EarlyExitModel
from netchisel.dynamic.labelled import classifier_logits, logits_of
from netchisel.measure.flops import count_flops

Decide = Callable[[int, Tensor, Tensor], Tensor]
"""`decide(k, logits, rows)`: which rows of the running batch leave at exit k."""

END = "@end"
"""The last step of a layer-exit model: the rest of the backbone's forward."""


class _Stop(Exception):
    """Raised by an exit's hook when no sample is left to run: ends the backbone's forward."""


def first_tensor(out: Any) -> Tensor | None:
    """The tensor a module's output leads with: itself, a tuple's first item, or a Hugging
    Face ModelOutput's first field (the hidden states).

    Example:
        >>> first_tensor((torch.zeros(2, 3), None)).shape
        torch.Size([2, 3])
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        value = next(iter(out.values()), None)
        return value if isinstance(value, Tensor) else None
    return None


@dataclass(frozen=True)
class LayerPlan:
    """What one forward of the example showed: each exit's features and the model's logits."""

    features: list[Tensor]
    output: Tensor


def plan_layers(model: nn.Module, exits: list[str], example: tuple[Tensor, ...]) -> LayerPlan:
    """Check `exits` against one eval forward of `example`: modules that run once each, in
    the order given, each giving a float tensor; one line naming what is wrong.

    Example:
        >>> # any model; hooks need no chain, a Sequential only keeps the example short
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> plan = plan_layers(net, ["0", "2"], (torch.zeros(2, 4),))
        >>> [tuple(f.shape) for f in plan.features], tuple(plan.output.shape)
        ([(2, 4), (2, 4)], (2, 2))
    """
    names = check_exit_names(model, exits)
    calls: list[tuple[str, Tensor | None]] = []
    handles = [
        names[name].register_forward_hook(
            lambda _m, _a, out, name=name: calls.append((name, first_tensor(out)))
        )
        for name in exits
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = classifier_logits(logits_of(model(*example)), STAGE)
    finally:
        model.train(was)
        for handle in handles:
            handle.remove()
    order = [name for name, _ in calls]
    for name in exits:
        if order.count(name) != 1:
            raise ConfigError(
                f"{STAGE}: exit after {name!r}: it runs {order.count(name)} times in one "
                "forward; exit after a module that runs once"
            )
    if order != list(exits):
        raise ConfigError(
            f"{STAGE}: list the exits in the order the model runs them: {order} (got {list(exits)})"
        )
    features = [feature for _, feature in calls]
    for name, feature in zip(exits, features, strict=True):
        if feature is None or not feature.is_floating_point():
            raise ConfigError(
                f"{STAGE}: the output of {name!r} is not a float tensor, so it cannot feed an "
                "exit head; choose another module"
            )
        if feature is not None and feature.shape == output.shape and torch.equal(feature, output):
            raise ConfigError(
                f"{STAGE}: exit after {name!r}: its output is the model's output; choose an "
                "earlier module"
            )
    return LayerPlan([f for f in features if f is not None], output)


class LayerExitModel(EarlyExitModel):
    """A backbone with exit heads reading the outputs of the modules `exits` (in the order
    the forward runs them) through hooks, and a threshold per exit.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
        >>> m = LayerExitModel(net, [nn.Linear(4, 3)], ["0"], [0.0]).eval()
        >>> m.exiting(torch.zeros(2, 4))[1].tolist()  # threshold 0: all leave at exit 0
        [0, 0]
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Sequence[nn.Module],
        exits: list[str],
        thresholds: list[float],
        criterion: str = "max_softmax",
        num_classes: int | None = None,
        deciders: Sequence[nn.Module] = (),
    ) -> None:
        steps = [*exits, END]
        after = list(range(len(exits)))
        super().__init__(
            backbone, heads, steps, after, thresholds, criterion, num_classes, deciders
        )
        # Whether a batch drops the samples that exited (set where `regroups` showed it exact).
        self.regroup = False

    def _check_steps(self) -> None:
        """Every step but the last is a distinct module of the backbone, the last `END`, and
        exit k sits after step k."""
        steps, modules = self.steps, dict(self.backbone.named_modules())
        if not isinstance(steps, list) or not steps or steps[-1] != END:
            raise ConfigError(f"{STAGE}: steps {steps!r} must end with {END!r}")
        for step in steps[:-1]:
            if not isinstance(step, str) or not step or step not in modules:
                raise ConfigError(f"{STAGE}: step {step!r} is not a module of the backbone")
        if len(set(steps)) != len(steps):
            raise ConfigError(f"{STAGE}: steps {steps!r} name a module twice")
        if self.exit_after != list(range(len(steps) - 1)):
            raise ConfigError(
                f"{STAGE}: exit_after {self.exit_after!r} must be 0..{len(steps) - 2}: exit k "
                "reads step k"
            )
        if not isinstance(self.regroup, bool):  # a manifest sets it too
            raise ConfigError(f"{STAGE}: regroup must be a bool, got {self.regroup!r}")

    @contextlib.contextmanager
    def _reading(self, at_exit: Callable[[int, Any], Any]) -> Iterator[None]:
        """`at_exit(k, output)` on each exit module's output during the block; what it returns
        (not None) replaces that output."""
        handles = [
            self.backbone.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, k=k: at_exit(k, out)
            )
            for k, name in enumerate(self.steps[:-1])
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def later_layers(self) -> list[nn.Module]:
        """The modules after the first exit in the container that holds it (a transformer's
        later layers), which read the batch-sized tensors a regrouped batch must cut."""
        parent, _, name = self.steps[0].rpartition(".")
        children = list(self.backbone.get_submodule(parent).named_children())
        names = [n for n, _ in children]
        return [m for n, m in children[names.index(name) + 1 :]]

    def features(self, x: Tensor) -> list[Tensor]:
        """The features every exit reads (copies), then the backbone's logits."""
        found: dict[int, Tensor] = {}

        def keep(k: int, out: Any) -> None:
            feature = first_tensor(out)
            assert feature is not None, f"exit {k}: the module gave no tensor"
            found[k] = feature.clone()

        with self._reading(keep):
            final = logits_of(self.backbone(x))
        return [*(found[k] for k in range(len(self.heads))), final]

    def exiting(self, x: Tensor, decide: Decide | None = None) -> tuple[Tensor, Tensor]:
        """The outputs with early exits, and the exit each sample took (len(heads) = the
        end). The forward stops once every sample has exited; with `regroup` the samples that
        exit leave the batch. `decide(k, logits, rows)` replaces the thresholds (a check)."""
        n = x.shape[0]
        taken = torch.full((n,), len(self.heads), dtype=torch.long, device=x.device)
        rows = torch.arange(n, device=x.device)  # the sample of each row still in the batch
        live = torch.ones(n, dtype=torch.bool, device=x.device)  # rows not yet answered
        regroup = self.regroup and n > 1
        out: list[Tensor] = []

        def at_exit(k: int, output: Any) -> Any:
            nonlocal rows, live
            if decide is None and not fires(self.criterion, self.thresholds[k]):
                return None  # an exit that never lets a sample out: its head does not run
            feature = first_tensor(output)
            assert feature is not None, f"exit {k}: the module gave no tensor"
            logits = self.heads[k](feature)
            done = (
                decide(k, logits, rows)
                if decide is not None
                else exits_now(logits, self.criterion, self.thresholds[k], self.decider(k))
            ) & live
            if not bool(done.any()):
                return None
            if not out:
                out.append(logits.new_zeros((n, *logits.shape[1:])))
            out[0][rows[done]] = logits[done].to(out[0].dtype)
            taken[rows[done]] = k
            live = live & ~done
            if not bool(live.any()):
                raise _Stop
            if not regroup:
                return None
            keep = live.nonzero().squeeze(1)
            count = len(rows)
            rows, live = rows[keep], live[keep]
            return _take(output, keep, count)

        def cut(_m: nn.Module, args: Any, kwargs: Any) -> Any:
            if len(rows) == n:
                return None
            return (
                tuple(_take(a, rows, n) for a in args),
                {key: _take(v, rows, n) for key, v in kwargs.items()},
            )

        handles = (
            [m.register_forward_pre_hook(cut, with_kwargs=True) for m in self.later_layers()]
            if regroup
            else []
        )
        try:
            with self._reading(at_exit):
                final = logits_of(self.backbone(x))
        except _Stop:
            return out[0], taken
        finally:
            for handle in handles:
                handle.remove()
        if not out:
            return final, taken
        out[0][rows[live]] = final[live].to(out[0].dtype)
        return out[0], taken

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return logits_of(self.backbone(x))  # type: ignore[no-any-return]
        return self.exiting(x)[0]

    def segment_macs(self, x: Tensor) -> list[int]:
        """MACs per sample of the backbone up to each exit's module, between exits, and after
        the last (count_flops of forwards stopped at each exit, on the first sample of `x`)."""
        one = x[:1]
        reached = [count_flops(_Until(self, k), one).macs for k in range(len(self.heads))]
        total = count_flops(_Until(self, None), one).macs
        bounds = [0, *reached, total]
        return [b - a for a, b in itertools.pairwise(bounds)]


def _take(value: Any, index: Tensor, count: int) -> Any:
    """`value` with only the rows `index` where it is a batch of `count` rows (a tensor of 2 or
    more dims whose first is `count`, or a tuple of them); anything else as it is."""
    if isinstance(value, Tensor):
        return (
            value.index_select(0, index) if value.dim() >= 2 and value.shape[0] == count else value
        )
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_take(v, index, count) for v in value)
    return value


def regroups(model: LayerExitModel, x: Tensor) -> bool:
    """Whether `model` may drop exited samples from a batch: on `x` (at least len(heads) + 2
    samples), with sample i sent to exit i mod (len(heads) + 1) (the last: the end), the
    regrouped forward gives each sample exactly the answer the whole batch's forward gives it
    at that exit. False where the exits are not in one container or anything differs or fails
    (a model whose later code reads the batch size of its input, as GPT-2's pooling does).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> m = LayerExitModel(net, [nn.Linear(4, 2)], ["0"], [0.9]).eval()
        >>> regroups(m, torch.randn(6, 4))
        True

        With a residual add around the exit module (`x + layer(x)`) it is False: the module's
        output loses rows, the stream outside it does not.
    """
    parents = {name.rpartition(".")[0] for name in model.steps[:-1]}
    paths = len(model.heads) + 1
    if len(parents) != 1 or x.shape[0] < paths + 1:
        return False
    pattern = torch.arange(x.shape[0], device=x.device) % paths
    was, model.regroup = model.regroup, True
    model.eval()
    try:
        with torch.no_grad():
            every = model.all_outputs(x)
            want = torch.stack([every[int(p)][i] for i, p in enumerate(pattern)])
            got, taken = model.exiting(x, lambda k, _logits, rows: pattern[rows] == k)
    except Exception:  # any failure of the cut forward: the batch is not regrouped
        return False
    finally:
        model.regroup = was
    scale = float(want.abs().max()) or 1.0
    return bool(torch.equal(taken, pattern) and float((got - want).abs().max()) <= 1e-4 * scale)


class _Until(nn.Module):
    """Runs a layer-exit model's backbone until exit `k`'s module has run (None: to the end),
    with no head, so one count prices that much of it."""

    def __init__(self, model: LayerExitModel, k: int | None) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def forward(self, x: Tensor) -> None:
        def stop(k: int, _: Any) -> None:
            if k == self.k:
                raise _Stop

        try:
            with self.model._reading(stop):
                self.model.backbone(x)
        except _Stop:
            pass
