"""`distill`: train the model (the student) to imitate a teacher, through the one training loop.

The loss of every step is

    alpha * hard + (1 - alpha) * soft + hint_weight * sum(hints) + attention_weight * sum(attn)

- hard: the task's own loss (labels);
- soft: `soft_target_loss` (classifiers) or `token_kl_loss` (language models, forward KL or
  `reverse`, padding tokens, whose target is `ignore_index`, left out) at `temperature`;
- hints: FitNets feature regression, `hints: [[student_layer, teacher_layer], ...]`, through a
  learned adapter (Linear or 1x1 conv) where the widths differ;
- attn: attention transfer, `attention: [[student_layer, teacher_layer], ...]`: spatial maps
  of conv features (Zagoruyko & Komodakis 2017), or attention probabilities of transformer
  attention modules (KL per row).

The teacher is a module handed in: `ctx.teacher`, which the runner sets to the recipe's
original model, or to the model `teacher:` names (a zoo name, `{zoo: name, kwargs: {...},
pretrained: true}`, `{builder: ...}` or `{artifact: dir}`, read like a recipe's `model:`,
loaded by `netchisel.pipeline.sources`); in Python, `distill_(model, config, task, teacher)`.
So the same stage is recovery after pruning, factorisation or quantization (masks are kept
through training) and training a fresh, smaller student (the recipe's `model:` is the
student, `teacher:` the big one).

Adapters train with the student and are dropped afterwards: the student's module tree and
state-dict keys are exactly what they were. Before any training, one forward of both models on
the task's example inputs checks that their outputs and chosen features fit together; a
failure at any point leaves the student as it was.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import apply_masks_
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.core.task import Batch, Task, logits_of
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.distill._features import (
    FeatureRecorder,
    is_attention_module,
    make_adapter,
    submodule,
)
from netchisel.distill.losses import (
    attention_probability_loss,
    attention_transfer_loss,
    check_temperature,
    hint_loss,
    soft_target_loss,
    token_kl_loss,
)

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Knowledge distillation from a teacher into the model.

    - `epochs` / `steps`: training length (steps win when given);
    - `temperature` (> 0) and `alpha` (in [0, 1], the weight of the hard-label loss);
    - `kind`: `logits` (one distribution per sample), `lm` (one per token), or `auto` (lm when
      the outputs are (B, T, V)); `reverse`: KL(student || teacher) instead of forward KL;
    - `hints`, `hint_weight`: FitNets pairs (student layer, teacher layer) and their weight;
    - `attention`, `attention_weight`, `attention_p`: attention-transfer pairs and settings;
    - `teacher`: None (the original model) or a model source like a recipe's `model:`, which
      the recipe runner loads and hands in (in Python, pass the module as `teacher=`);
    - `ignore_index`: targets with this value are padding for `lm`.

    Example:
        >>> c = DistillConfig.from_dict({"temperature": 4, "alpha": 0.1, "steps": 100})
        >>> c.temperature, c.alpha, c.kind
        (4.0, 0.1, 'auto')
    """

    NAME: ClassVar[str] = "distill"

    epochs: float = 1.0
    steps: int | None = None
    temperature: float = 4.0
    alpha: float = 0.5
    kind: Literal["auto", "logits", "lm"] = "auto"
    reverse: bool = False
    hints: Pairs = ()
    hint_weight: float = 1.0
    attention: Pairs = ()
    attention_weight: float = 1.0
    attention_p: float = 2.0
    teacher: str | dict[str, Any] | None = None
    ignore_index: int = -100

    def validate(self) -> None:
        check_training("distill", self.lr, self.batch_size)
        check_temperature(self.temperature)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill: alpha must be in [0, 1], got {self.alpha}")
        if not self.epochs > 0:
            raise ConfigError(f"distill: epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"distill: steps must be >= 1, got {self.steps}")
        for name in ("hint_weight", "attention_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"distill: {name} must be >= 0, got {value}")
        if not self.attention_p > 0:
            raise ConfigError(f"distill: attention_p must be > 0, got {self.attention_p}")
        for where, pairs in (("hints", self.hints), ("attention", self.attention)):
            for pair in pairs:
                if len(pair) != 2 or not all(isinstance(n, str) for n in pair):
                    raise ConfigError(
                        f"distill.{where}: expected [student_layer, teacher_layer], got {pair!r}"
                    )


def handed_teacher(config: DistillConfig, ctx: Context) -> nn.Module:
    """The teacher handed in as `ctx.teacher` (the runner loads a `teacher:` source into it).

    Example:
        >>> handed_teacher(DistillConfig(), Context(None, nn.Linear(2, 2))).in_features
        2
    """
    if ctx.teacher is not None:
        return ctx.teacher
    if config.teacher is not None:
        raise ConfigError(
            f"distill: teacher {config.teacher!r} is a recipe source, which the recipe runner "
            "loads: in Python, load it and pass the module as teacher= to distill_"
        )
    raise ConfigError(
        "distill: no teacher: run it in a recipe (the original model teaches), set "
        "teacher: {zoo: ...} / {artifact: ...} in the recipe, or pass teacher= to distill_"
    )


@dataclass
class _Plan:
    """What one checked forward decided: the loss kind and the hint adapters."""

    kind: Literal["logits", "lm"]
    adapters: nn.ModuleList
    attention_kinds: list[Literal["spatial", "probs"]]


def _output(out: Any) -> Tensor:
    # A tuple's first element (hidden states, attention), or a Hugging Face output's logits.
    return logits_of(out[0] if isinstance(out, (tuple, list)) else out)


def _mismatch(student: Tensor, teacher: Tensor) -> str:
    s, t = tuple(student.shape), tuple(teacher.shape)
    if len(s) == len(t) and s[:-1] == t[:-1]:
        what = "vocabulary" if len(s) == 3 else "number of classes"
        return (
            f"distill: the teacher's {what} ({t[-1]}) differs from the student's ({s[-1]}): "
            f"teacher output {t}, student output {s}; choose a teacher of the same task"
        )
    return (
        f"distill: teacher output {t} does not match student output {s}: choose a teacher "
        "of the same task and output"
    )


def _plan(model: nn.Module, teacher: nn.Module, task: Task, config: DistillConfig) -> _Plan:
    """One forward of both on example inputs: check shapes, build adapters. Changes nothing."""
    inputs = task.example_inputs(2)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in inputs)
    wanted_s = [(s, "output") for s, _ in config.hints] + [
        (s, "attention") for s, _ in config.attention
    ]
    wanted_t = [(t, "output") for _, t in config.hints] + [
        (t, "attention") for _, t in config.attention
    ]
    was_training = model.training
    model.eval()
    try:
        with (
            FeatureRecorder(model, wanted_s, "distill.student") as rec_s,
            FeatureRecorder(teacher, wanted_t, "distill.teacher") as rec_t,
            torch.no_grad(),
        ):
            s_out, t_out = _output(model(*inputs)), _output(teacher(*inputs))
            s_feat, t_feat = dict(rec_s.features), dict(rec_t.features)
    finally:
        model.train(was_training)
    if s_out.shape != t_out.shape:
        raise ConfigError(_mismatch(s_out, t_out))
    kind = config.kind
    if kind == "auto":
        kind = "lm" if s_out.dim() == 3 else "logits"
    adapters = nn.ModuleList(
        make_adapter(s_feat[s], t_feat[t], f"distill.hints [{s}, {t}]") for s, t in config.hints
    )
    attention_kinds: list[Literal["spatial", "probs"]] = []
    for s, t in config.attention:
        probs = [is_attention_module(submodule(m, n, "")) for m, n in ((model, s), (teacher, t))]
        if probs[0] != probs[1]:
            raise ConfigError(
                f"distill.attention [{s}, {t}]: pair two transformer attention modules or two "
                "conv layers, not one of each"
            )
        if probs[0]:
            attention_probability_loss(s_feat[s], t_feat[t])  # raises on a shape mismatch
            attention_kinds.append("probs")
        else:
            attention_transfer_loss(s_feat[s], t_feat[t], config.attention_p)
            attention_kinds.append("spatial")
    return _Plan(kind, adapters.to(device), attention_kinds)


def distillation_loss(
    student_out: Tensor,
    teacher_out: Tensor,
    batch: Batch,
    config: DistillConfig,
    kind: Literal["logits", "lm"],
) -> Tensor:
    """The soft term of one batch: KL at `config.temperature` (T^2 scaled), per sample or token.

    Example:
        >>> c = DistillConfig(temperature=1.0)
        >>> z = torch.zeros(2, 3)
        >>> float(distillation_loss(z, z, (z,), c, "logits"))
        0.0
    """
    if kind == "lm":
        mask = None
        if len(batch) > 1 and batch[1].shape == student_out.shape[:-1]:
            mask = batch[1] != config.ignore_index
        return token_kl_loss(
            student_out, teacher_out, config.temperature, reverse=config.reverse, mask=mask
        )
    if config.reverse:
        return token_kl_loss(student_out, teacher_out, config.temperature, reverse=True)
    return soft_target_loss(student_out, teacher_out, config.temperature)


@register(DistillConfig)
def distill(model: nn.Module, config: DistillConfig, ctx: Context) -> nn.Module:
    """Train `model` in place against the teacher's outputs (and features) and the task's labels."""
    task = ctx.require_task("distill")
    teacher = handed_teacher(config, ctx)
    teacher_was_training = teacher.training
    teacher.eval()
    try:
        plan = _plan(model, teacher, task, config)
        with restored_on_error(model):
            losses = _train(model, teacher, task, config, plan, ctx)
    finally:
        teacher.train(teacher_was_training)
    ctx.record(
        steps=len(losses),
        final_train_loss=losses[-1],
        kind=plan.kind,
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        student_params=sum(p.numel() for p in model.parameters()),
        adapter_params_not_kept=sum(p.numel() for p in plan.adapters.parameters()),
    )
    return model


def _train(
    model: nn.Module,
    teacher: nn.Module,
    task: Task,
    config: DistillConfig,
    plan: _Plan,
    ctx: Context,
) -> list[float]:
    # fit trains everything it is given: the student and the adapters, wrapped together, so the
    # student's own module tree never holds an adapter.
    both = nn.ModuleDict({"student": model, "adapters": plan.adapters})
    captured: dict[str, Tensor] = {}

    def keep_output(module: nn.Module, args: Any, output: Any) -> None:
        captured["out"] = _output(output)

    wanted_s = [(s, "output") for s, _ in config.hints] + [
        (s, "attention") for s, _ in config.attention
    ]
    wanted_t = [(t, "output") for _, t in config.hints] + [
        (t, "attention") for _, t in config.attention
    ]
    alpha = config.alpha

    # alpha = 1 without features is plain training: the teacher need not run at all.
    needs_teacher = alpha < 1 or bool(config.hints) or bool(config.attention)

    def loss_fn(_: nn.Module, batch: Batch) -> Tensor:
        inputs = task.inputs_of(batch)
        if needs_teacher:
            with torch.no_grad():
                teacher_out = _output(teacher(*inputs))
        if alpha > 0:
            hard = task.loss_fn(model, batch)  # the student's output is captured by the hook
            total = alpha * hard
        else:
            model(*inputs)
            total = torch.zeros((), device=captured["out"].device)
        if alpha < 1:
            soft = distillation_loss(captured["out"], teacher_out, batch, config, plan.kind)
            total = total + (1.0 - alpha) * soft
        for adapter, (s, t) in zip(plan.adapters, config.hints, strict=True):
            feature = adapter(rec_s.features[s])
            total = total + config.hint_weight * hint_loss(feature, rec_t.features[t])
        for at_kind, (s, t) in zip(plan.attention_kinds, config.attention, strict=True):
            if at_kind == "probs":
                term = attention_probability_loss(rec_s.features[s], rec_t.features[t])
            else:
                term = attention_transfer_loss(
                    rec_s.features[s], rec_t.features[t], config.attention_p
                )
            total = total + config.attention_weight * term
        return total

    settings = train_settings(config, config.steps, config.epochs)
    handle = model.register_forward_hook(keep_output)
    try:
        with (
            FeatureRecorder(model, wanted_s, "distill.student") as rec_s,
            FeatureRecorder(teacher, wanted_t, "distill.teacher") as rec_t,
        ):
            # fit re-applies masks of the module it trains (the wrapper has none): the
            # student's masks are re-applied after every step here.
            # fit trains the wrapper; epoch reports (a search's pruner) are about the student.
            on_epoch = ctx.on_epoch
            student_ctx = dataclasses.replace(
                ctx, on_epoch=None if on_epoch is None else lambda e, _: on_epoch(e, model)
            )
            return fit(
                both,
                task,
                settings,
                student_ctx,
                loss_fn=loss_fn,
                after_step=lambda _: apply_masks_(model),
            )
    finally:
        handle.remove()
