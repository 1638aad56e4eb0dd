"""`dynamic.early_exit`: exit heads after named modules, trained, with calibrated thresholds.

1. Split the backbone after each module in `exits` (`chain.plan_chain`), and attach a head to
   each. Where the forward is not a chain of its modules (a transformer: masks, a loop over
   layers), the heads read the exit modules' outputs through hooks instead
   (`layer_exits.plan_layers`, `LayerExitModel`; token features are read at their first
   position); one line naming the module where neither works.
2. Train (`fit`, the one training loop):
   - `training: distill` (default): the backbone is frozen and each head learns the final
     head's softened distribution (`soft_kl` at `temperature`, plus `alpha` times the labels'
     cross-entropy), as Shallow-Deep Networks' "IC-only" training (Kaya et al. 2019) keeps the
     backbone's own accuracy: samples that do not exit get exactly the original outputs.
   - `training: joint`: everything trains on the weighted sum of every exit's cross-entropy
     and the final one's (BranchyNet, Teerapittayanon et al. 2016); the backbone changes.
3. Thresholds: `thresholds:` given (checked against the criterion's range), or calibrated on
   the `split` (validation) to the least mean MACs within `max_drop` accuracy points of the
   model without exits (`thresholds.calibrate`), judged by `rule`: "agreement" (default: the
   early answers that differ from the final head's, each counted as lost, their rate's
   Clopper-Pearson upper bound at `confidence` within the budget) or "accuracy" (the split's
   accuracy as measured, a point estimate). Exits whose threshold never fires on the split
   are recorded as `never_fire`, not hidden.
   With `criterion: learned` a decider per exit (`netchisel.dynamic.deciders`) is trained
   first, after the heads and with them and the backbone frozen, on the train split to
   predict "this exit's answer is the final head's"; its score replaces the max softmax and
   the thresholds are calibrated on it exactly as above.

The result is an `EarlyExitModel` (the model handed in is its `backbone`); any failure leaves
the model handed in as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error, seeded
from netchisel.core.task import Batch, Task
from netchisel.core.train import TrainConfig, check_training, fit, frozen, train_settings
from netchisel.dynamic.chain import Chain, NotAChain, plan_chain
from netchisel.dynamic.confidence import CRITERIA, check_threshold, fires, soft_kl
from netchisel.dynamic.costs import exit_macs
from netchisel.dynamic.deciders import agreement_loss, make_decider
from netchisel.dynamic.exits import EarlyExitModel
from netchisel.dynamic.heads import TOKENS, make_head
from netchisel.dynamic.labelled import classifier_logits, labelled, split_accuracy
from netchisel.dynamic.layer_exits import LayerExitModel, plan_layers, regroups
from netchisel.dynamic.thresholds import (
    RULES,
    Budget,
    Outcome,
    calibrate,
    outcome_of,
    trade_off,
)

STAGE = "dynamic.early_exit"


@dataclass(frozen=True)
class EarlyExitConfig(TrainConfig):
    """Early exits after the modules named in `exits`, in the order the model runs them.

    - `training`: "distill" (backbone frozen, heads learn the final head's soft targets at
      `temperature`, with `alpha` weight on the labels) or "joint" (all weights, weighted
      cross-entropies: `weights` one per exit, default 1 each, and `final_weight`);
    - `epochs` / `steps`: training length (steps win when given);
    - `pool`: positions per spatial axis a head pools conv features to (1 = global pooling);
    - `head_hidden`: 0 for a head that is one Linear, else the hidden units of a two-layer head;
    - `token`: where the forward is not a chain (a transformer), which position of a layer's
      (N, T, H) output a head reads: "first" ([CLS], ViT's class token), "last" (a causal
      decoder's) or "mean";
    - `criterion`: "max_softmax" (exit when the top probability > threshold, in [0, 1]),
      "entropy" (exit when the entropy < threshold, in [0, ln C]) or "learned" (exit when a
      decider's score > threshold, in [0, 1]; the decider is trained on the train split for
      `decider_steps` steps at `lr` to predict agreement with the final head, with
      `decider_hidden` hidden units, 0 = a logistic regression);
    - `thresholds`: one per exit to use as given; empty to calibrate them on `split` so that
      the accuracy stays within `max_drop` points of the model without exits;
    - `rule`: how calibration judges that ("agreement": the upper bound, at `confidence`, on
      the rate of early answers that differ from the final head's; "accuracy": the split's
      accuracy as measured). See `netchisel.dynamic.thresholds`.

    Example:
        >>> c = EarlyExitConfig.from_dict({"exits": ["layer1", "layer2"], "max_drop": 0.5})
        >>> c.exits, c.training, c.criterion
        (('layer1', 'layer2'), 'distill', 'max_softmax')
    """

    NAME: ClassVar[str] = "dynamic.early_exit"

    exits: tuple[str, ...] = ()
    training: Literal["distill", "joint"] = "distill"
    epochs: float = 1.0
    steps: int | None = None
    temperature: float = 1.0
    alpha: float = 0.0
    weights: tuple[float, ...] = ()
    final_weight: float = 1.0
    pool: int = 1
    head_hidden: int = 0
    token: Literal["first", "last", "mean"] = "first"
    criterion: Literal["max_softmax", "entropy", "learned"] = "max_softmax"
    decider_hidden: int = 16
    decider_steps: int = 500
    thresholds: tuple[float, ...] = ()
    max_drop: float = 0.5
    rule: Literal["agreement", "accuracy"] = "agreement"
    confidence: float = 0.5
    split: str = "val"

    def validate(self) -> None:
        check_training(STAGE, self.lr, self.batch_size)
        if not self.epochs > 0:
            raise ConfigError(f"{STAGE}: epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{STAGE}: steps must be >= 1, got {self.steps}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"{STAGE}: temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{STAGE}: alpha must be in [0, 1], got {self.alpha}")
        if self.weights and len(self.weights) != len(self.exits):
            raise ConfigError(
                f"{STAGE}: {len(self.weights)} weights for {len(self.exits)} exits; give one "
                "per exit or none"
            )
        for value in (*self.weights, self.final_weight):
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{STAGE}: loss weights must be >= 0, got {value}")
        if self.pool < 1:
            raise ConfigError(f"{STAGE}: pool must be >= 1, got {self.pool}")
        if not (isinstance(self.head_hidden, int) and self.head_hidden >= 0):
            raise ConfigError(f"{STAGE}: head_hidden must be >= 0, got {self.head_hidden}")
        if self.token not in TOKENS:
            raise ConfigError(
                f"{STAGE}: token must be one of {', '.join(TOKENS)}, got {self.token!r}"
            )
        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"{STAGE}: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}"
            )
        if not (isinstance(self.decider_hidden, int) and self.decider_hidden >= 0):
            raise ConfigError(f"{STAGE}: decider_hidden must be >= 0, got {self.decider_hidden}")
        if not (isinstance(self.decider_steps, int) and self.decider_steps >= 1):
            raise ConfigError(f"{STAGE}: decider_steps must be >= 1, got {self.decider_steps}")
        if self.thresholds and len(self.thresholds) != len(self.exits):
            raise ConfigError(
                f"{STAGE}: {len(self.thresholds)} thresholds for {len(self.exits)} exits; give "
                "one per exit, or none to calibrate them"
            )
        for k, value in enumerate(self.thresholds):  # the upper end is checked per model
            check_threshold(self.criterion, value, 1 << 30, f"thresholds[{k}]")
        if not (0.0 <= self.max_drop <= 100.0):
            raise ConfigError(f"{STAGE}: max_drop must be in [0, 100] points, got {self.max_drop}")
        if self.rule not in RULES:
            raise ConfigError(f"{STAGE}: rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"{STAGE}: confidence must be in (0, 1), got {self.confidence}")


@dataclass(frozen=True)
class Calibration:
    """Thresholds set on a model and what they do on the split: the `outcome`, the MACs per
    sample at each exit and at the end (`costs`, heads that never fire left out), the
    backbone's alone (`static_macs`), and the thresholds calibrated at each accuracy budget of
    `thresholds.BUDGETS` (`sweep`: accuracy against mean MACs, what a report plots)."""

    outcome: Outcome
    costs: list[int]
    static_macs: int
    sweep: list[tuple[float, Outcome]] = field(default_factory=list)


@register(EarlyExitConfig)
def early_exit(model: nn.Module, config: EarlyExitConfig, ctx: Context) -> nn.Module:
    """Attach, train and calibrate exits; returns the `EarlyExitModel` around `model`."""
    if not config.exits:
        raise ConfigError(f"{STAGE}: exits is empty: name the modules to exit after")
    task = ctx.require_task(STAGE)
    if isinstance(model, EarlyExitModel):
        raise ConfigError(f"{STAGE}: the model already has exits; apply early exit once")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = tuple(t.to(device) for t in task.example_inputs(2))
    exits = list(config.exits)
    chain: Chain | None = None
    try:
        chain = plan_chain(model, exits, example)
        features, output = chain.features, chain.output
    except NotAChain:  # a transformer: the exits read its layers through hooks
        plan = plan_layers(model, exits, example)
        features, output = plan.features, plan.output
    classes = classifier_logits(output, STAGE).shape[-1]
    token = config.token if chain is None else None  # a layer's (N, T, H) are tokens
    for k, value in enumerate(config.thresholds):
        check_threshold(config.criterion, value, classes, f"thresholds[{k}]")
    with seeded(ctx.seed):
        heads = [
            make_head(f, classes, config.pool, name, config.head_hidden, token).to(device)
            for f, name in zip(features, exits, strict=True)
        ]
        learned = config.criterion == "learned"
        deciders = [
            make_decider(classes, config.decider_hidden).to(device)
            for _ in (config.exits if learned else ())
        ]
    reference = split_accuracy(model, task, config.split, STAGE)
    with restored_on_error(model):
        dyn = (
            EarlyExitModel(
                model, heads, chain.steps, chain.exit_after, [], config.criterion, classes, deciders
            )
            if chain is not None
            else LayerExitModel(model, heads, exits, [], config.criterion, classes, deciders)
        )
        if isinstance(dyn, LayerExitModel):
            batch = task.example_inputs(len(exits) + 4)[0].to(device)
            dyn.regroup = regroups(dyn, batch)
        losses = _train(dyn, config, task, ctx)
        if learned:
            train_deciders(dyn, task, config, ctx)
        calibration = calibrate_exits(
            dyn,
            task,
            max_drop=config.max_drop,
            reference=reference,
            split=config.split,
            thresholds=list(config.thresholds) or None,
            rule=config.rule,
            confidence=config.confidence,
        )
    dyn.eval()
    outcome = calibration.outcome
    ctx.record(
        exits=list(config.exits),
        exits_read="chain" if chain is not None else "hooks",
        regroup=chain is not None or bool(getattr(dyn, "regroup", False)),
        steps=len(losses),
        final_train_loss=losses[-1],
        thresholds=outcome.thresholds,
        rule=config.rule,
        confidence=config.confidence,
        exit_fractions=outcome.fractions,
        macs_per_exit=calibration.costs,
        static_macs=calibration.static_macs,
        expected_macs=outcome.expected_macs,
        mac_reduction=1.0 - outcome.expected_macs / calibration.static_macs,
        reference_accuracy=reference,
        calibrated_accuracy=outcome.accuracy,
        never_fire=[n for n, f in zip(config.exits, outcome.fractions, strict=False) if f == 0.0],
        dynamic=trade_off_record(config.exits, reference, calibration, config.split),
    )
    return dyn


def trade_off_record(
    exits: tuple[str, ...] | list[str], reference: float, calibration: Calibration, split: str
) -> dict[str, object]:
    """What a report plots of a dynamic stage (the record `dynamic`): accuracy against mean
    MACs per sample over the sweep, the point chosen, the static model, and the histogram of
    where the split's samples left.

    Example:
        >>> o = Outcome([0.9], 97.0, [0.25, 0.75], 85.0)
        >>> r = trade_off_record(["layer1"], 98.0, Calibration(o, [40, 100], 100, [(1.0, o)]),
        ...     "val")
        >>> r["histogram"], r["sweep"][0]["setting"]
        ({'exit after layer1': 0.25, 'end': 0.75}, 'max_drop 1')
    """
    outcome = calibration.outcome
    labels = [f"exit after {name}" for name in exits] + ["end"]
    return {
        "kind": "early_exit",
        "split": split,
        "metric": "accuracy (%)",
        "static": {"value": reference, "mean_macs": float(calibration.static_macs)},
        "chosen": {"value": outcome.accuracy, "mean_macs": outcome.expected_macs},
        "sweep": [
            {
                "setting": f"max_drop {budget:g}",
                "value": o.accuracy,
                "mean_macs": o.expected_macs,
            }
            for budget, o in calibration.sweep
        ],
        "histogram": dict(zip(labels, outcome.fractions, strict=True)),
    }


def calibrate_exits(
    model: EarlyExitModel,
    task: Task,
    *,
    max_drop: float = 0.5,
    reference: float | None = None,
    split: str = "val",
    thresholds: list[float] | None = None,
    rule: str = "agreement",
    confidence: float = 0.5,
) -> Calibration:
    """Set `model`'s thresholds (in place) to the least mean MACs that keep `split` within
    `max_drop` points of `reference` (default: the backbone alone on `split`) by `rule` at
    `confidence` (`thresholds.Budget`), or to the `thresholds` given; records the exit
    fractions on `split` for the expected MACs.

    The heads are not retrained, so a sweep over budgets costs one pass over the split each.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> data = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
        >>> task = classification_task({"val": data})
        >>> m = EarlyExitModel(net, [nn.Linear(2, 2)], ["0", "1"], [0], [], num_classes=2)
        >>> calibrate_exits(m, task, thresholds=[1.0]).outcome.fractions  # 1.0: never exits
        [0.0, 1.0]
    """
    if reference is None:
        reference = split_accuracy(model.backbone, task, split, STAGE)
    logits, labels = _outputs(model, task, split)
    device = next(model.parameters()).device
    example = task.inputs_of(next(iter(task.loader(split, batch_size=1))))[0].to(device)
    macs = exit_macs(model, example)
    budget = Budget(reference, max_drop, rule, confidence)
    deciders = list(model.deciders) or None
    if thresholds is not None:
        found = outcome_of(logits, labels, model.criterion, macs, thresholds, deciders)
    else:
        calibrated = calibrate(logits, labels, model.criterion, macs, budget, deciders)
        if calibrated is None:
            final = 100.0 * float((logits[-1].argmax(-1) == labels).double().mean())
            raise ConfigError(
                f"{STAGE}: no thresholds meet max_drop={max_drop}: with no exit taken the "
                f"{split} accuracy is {final:.2f}% against {reference:.2f}% without exits; "
                "raise max_drop, or train with training: distill (it keeps the backbone)"
            )
        found = calibrated
    model.set_thresholds(found.thresholds)
    model.exit_fractions = found.fractions
    live = [fires(model.criterion, t) for t in found.thresholds]
    sweep = trade_off(logits, labels, model.criterion, macs, budget, deciders=deciders)
    return Calibration(found, macs.per_exit(live), macs.static, sweep)


def _outputs(model: EarlyExitModel, task: Task, split: str) -> tuple[list[Tensor], Tensor]:
    """Every exit's and the final logits on a split, concatenated, and the labels."""
    device = next(model.parameters()).device
    chunks: list[list[Tensor]] = []
    labels: list[Tensor] = []
    model.eval()
    with torch.no_grad():
        for batch in task.loader(split):
            x, y = labelled(task, batch, STAGE)
            chunks.append([z.float().cpu() for z in model.all_outputs(x.to(device))])
            labels.append(y.cpu())
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)], torch.cat(labels)


def _train(model: EarlyExitModel, config: EarlyExitConfig, task: Task, ctx: Context) -> list[float]:
    weights = list(config.weights) or [1.0] * len(model.heads)
    distill = config.training == "distill"

    def loss_fn(_: nn.Module, batch: Batch) -> Tensor:
        x, y = labelled(task, batch, STAGE)
        if distill:
            model.backbone.eval()  # frozen: BatchNorm statistics and dropout stay as they were
            with torch.no_grad():
                features = model.features(x)
            outs = [head(f) for head, f in zip(model.heads, features, strict=False)]
            target = features[-1]
            total = torch.zeros((), device=x.device)
            for w, out in zip(weights, outs, strict=True):
                term = (1.0 - config.alpha) * soft_kl(out, target, config.temperature)
                if config.alpha > 0:
                    term = term + config.alpha * nn.functional.cross_entropy(out, y)
                total = total + w * term
            return total
        outs = model.all_outputs(x)
        total = config.final_weight * nn.functional.cross_entropy(outs[-1], y)
        for w, out in zip(weights, outs, strict=False):
            total = total + w * nn.functional.cross_entropy(out, y)
        return total

    with frozen(model.backbone.parameters() if distill else ()):
        settings = train_settings(config, config.steps, config.epochs)
        return fit(model, task, settings, ctx, loss_fn=loss_fn)


def train_deciders(
    model: EarlyExitModel, task: Task, config: EarlyExitConfig, ctx: Context | None = None
) -> list[float]:
    """Train `model`'s deciders (everything else frozen) to predict, per exit, whether its
    answer is the final head's: binary cross-entropy on the train split through `fit`, for
    `config.decider_steps` steps at `config.lr`; returns the losses.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> from netchisel.dynamic.deciders import make_decider
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> data = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
        >>> task = classification_task({"train": data})
        >>> m = EarlyExitModel(net, [nn.Linear(2, 2)], ["0", "1"], [0], [], "learned", 2,
        ...     [make_decider(2, 0)])
        >>> len(train_deciders(m, task, EarlyExitConfig(decider_steps=3),
        ...     Context(task, quiet=True)))
        3
    """

    def loss_fn(_: nn.Module, batch: Batch) -> Tensor:
        x, _y = labelled(task, batch, STAGE)
        model.backbone.eval()
        with torch.no_grad():
            outs = model.all_outputs(x)
        terms = [agreement_loss(d, z, outs[-1]) for d, z in zip(model.deciders, outs, strict=False)]
        return torch.stack(terms).sum()

    others = [*model.backbone.parameters(), *model.heads.parameters()]
    with frozen(others):
        settings = train_settings(config, config.decider_steps, config.epochs)
        return fit(model, task, settings, ctx, loss_fn=loss_fn)
