"""`dynamic.moe`: feed-forward blocks turned into mixture-of-experts layers (`MoEFeedForward`).

1. The blocks: `modules` names them (or globs, or "auto" for every Linear-activation-Linear
   block; `moe_blocks.find_feed_forwards`, one line naming a module that is not one).
2. `method: moefy` (MoEfication, Zhang et al. 2022): a trained block's hidden units are split
   into `experts` equal groups of units that fire together on calibration tokens from the
   task's train split (`moe_split.coactivation_groups`), each group an expert (slices of the
   block's Linears: with top_k = experts the layer is the block). A Linear router per layer
   then learns, through `fit` on the recorded block inputs, which experts matter for a token:
   the targets are the top_k experts whose outputs are largest (L2 norm of the expert's
   contribution to the block's output; MoEfication labels by activation mass, which for a
   GELU block with negative activations is a weaker proxy), learnt as k independent
   yes/no labels (binary cross-entropy), and the top_k router logits pick the experts at
   inference. Gates are 1: the chosen experts' outputs add up. The rest of the model is not
   trained.
3. `method: switch` (Switch Transformer, Fedus et al. 2021): `init: scratch` (fresh experts
   of width `expert_hidden`, default the block's) or `upcycle` (every expert a copy of the
   block, Komatsuzaki et al. 2022), a fresh router, then the whole model trains on the task's
   loss plus `balance` times the mean over layers of the load-balancing loss (0 = the ablation
   without it) plus `z_loss` times the mean router z-loss (ST-MoE, Zoph et al. 2022); `jitter`
   multiplies the routers' inputs by U(1 - jitter, 1 + jitter) noise while training
   (Switch). Gates: the router probability for top_k = 1, renormalised over the k chosen
   for top_k > 1 (so an upcycled layer starts as the dense block).
4. The routing is measured on `split` (`measure_routing`) and kept on the returned `MoEModel`
   for `dynamic_costs`; the records give the load coefficient of variation, dropped tokens and
   routing entropy per layer.

A failure leaves the model handed in as it was.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.core.task import Batch, Task, logits_of
from netchisel.core.train import (
    TrainConfig,
    TrainSettings,
    check_training,
    fit,
    frozen,
    train_settings,
)
from netchisel.dynamic.moe_blocks import FeedForward, find_feed_forwards, replace_module
from netchisel.dynamic.moe_costs import load_cv, load_entropy, measure_routing, moe_layers
from netchisel.dynamic.moe_layer import MoEFeedForward, check_jitter, check_routing
from netchisel.dynamic.moe_model import MoEModel
from netchisel.dynamic.moe_split import (
    coactivation_groups,
    fresh_router,
    scratch_experts,
    sliced_experts,
    upcycled_experts,
)
from netchisel.dynamic.moe_tradeoff import moe_trade_off, per_sample_macs

STAGE = "dynamic.moe"


@dataclass(frozen=True)
class MoEConfig(TrainConfig):
    """Mixture-of-experts feed-forward layers in place of the blocks in `modules`.

    - `modules`: block names or globs (`blocks.*.mlp`), or ("auto",) for every
      Linear-activation-Linear block;
    - `method`: "moefy" (split a trained block into experts, train routers) or "switch"
      (Switch layers trained on the task), with `init` "scratch" or "upcycle" (switch only);
    - `experts` (E), `top_k` (k <= E), `capacity_factor` (> 0; null: no capacity, nothing
      dropped), `expert_hidden` (switch scratch: each expert's width, default the block's);
    - `balance`: weight of the Switch load-balancing loss (0 = none); `z_loss`: weight of the
      router z-loss (0 = none; ST-MoE uses 1e-3); `jitter`: router input noise (0 = none;
      Switch uses 0.01); `steps` / `epochs` (switch training length; steps win), plus the
      shared training fields (`lr`, ...);
    - moefy: `calibration_samples` (train samples whose tokens drive the split and the
      routers), `router_target` ("output_norm" or "activation"), `router_steps`,
      `router_lr`, `router_batch` (tokens per step), `finetune_steps` (experts distilled
      from the dense model afterwards; 0 = none; with the shared `lr`, `batch_size`, ...);
    - `split`: where the routing is measured for the expected MACs.

    Example:
        >>> c = MoEConfig.from_dict({"modules": ["blocks.*.mlp"], "experts": 8, "top_k": 2})
        >>> c.method, c.experts, c.top_k, c.capacity_factor
        ('moefy', 8, 2, None)
    """

    NAME: ClassVar[str] = "dynamic.moe"

    modules: tuple[str, ...] = ("auto",)
    method: Literal["moefy", "switch"] = "moefy"
    init: Literal["scratch", "upcycle"] = "upcycle"
    experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = None
    expert_hidden: int | None = None
    balance: float = 0.01
    z_loss: float = 0.0
    jitter: float = 0.0
    steps: int | None = None
    epochs: float = 1.0
    calibration_samples: int = 64
    router_target: Literal["output_norm", "activation"] = "output_norm"
    router_steps: int = 300
    router_lr: float = 1e-2
    router_batch: int = 256
    finetune_steps: int = 0
    split: str = "val"

    def validate(self) -> None:
        check_training(STAGE, self.lr, self.batch_size)
        check_routing(self.experts, self.top_k, self.capacity_factor, STAGE)
        if not (self.balance >= 0 and math.isfinite(self.balance)):
            raise ConfigError(f"{STAGE}: balance must be >= 0, got {self.balance}")
        if not (self.z_loss >= 0 and math.isfinite(self.z_loss)):
            raise ConfigError(f"{STAGE}: z_loss must be >= 0 (ST-MoE: 0.001), got {self.z_loss}")
        check_jitter(self.jitter, STAGE)
        if self.finetune_steps < 0:
            raise ConfigError(
                f"{STAGE}: finetune_steps must be >= 0 (0: no fine-tuning), got "
                f"{self.finetune_steps}"
            )
        if not self.epochs > 0:
            raise ConfigError(f"{STAGE}: epochs must be > 0, got {self.epochs}")
        for field, value in (
            ("steps", self.steps),
            ("expert_hidden", self.expert_hidden),
            ("calibration_samples", self.calibration_samples),
            ("router_steps", self.router_steps),
            ("router_batch", self.router_batch),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{STAGE}: {field} must be >= 1, got {value}")
        if not self.router_lr > 0:
            raise ConfigError(f"{STAGE}: router_lr must be > 0, got {self.router_lr}")
        if self.method == "moefy" and self.init == "scratch":
            raise ConfigError(
                f"{STAGE}: init: scratch applies to method: switch; moefy splits a trained block"
            )
        if self.method == "switch" and self.finetune_steps:
            raise ConfigError(
                f"{STAGE}: finetune_steps = {self.finetune_steps} applies to method: moefy; "
                "switch trains for `steps`"
            )
        if self.method == "switch" and self.router_target != "output_norm":
            raise ConfigError(
                f"{STAGE}: router_target = {self.router_target!r} applies to method: moefy"
            )
        if self.method == "moefy" and (self.jitter or self.z_loss):
            raise ConfigError(
                f"{STAGE}: jitter = {self.jitter}, z_loss = {self.z_loss} apply to method: "
                "switch (moefy routers train on labels); set them to 0"
            )
        if self.method == "moefy" and self.expert_hidden is not None:
            raise ConfigError(
                f"{STAGE}: expert_hidden = {self.expert_hidden} applies to method: switch; "
                "moefy experts are the block's hidden width / experts"
            )


@register(MoEConfig)
def moe(model: nn.Module, config: MoEConfig, ctx: Context) -> nn.Module:
    """Convert, train and measure; returns the `MoEModel` around `model`."""
    task = ctx.require_task(STAGE)
    if isinstance(model, MoEModel) or moe_layers(model):
        raise ConfigError(f"{STAGE}: the model already has MoE layers; apply dynamic.moe once")
    blocks = find_feed_forwards(model, config.modules, STAGE)
    if config.method == "moefy":
        for block in blocks:
            if block.hidden % config.experts:
                raise ConfigError(
                    f"{STAGE}: module {block.name!r} has {block.hidden} hidden units, not a "
                    f"multiple of experts = {config.experts}; choose experts dividing it"
                )
    was_training = model.training
    model.eval()
    dense = {
        "value": task.evaluate(model, config.split)[task.primary_metric],
        "mean_macs": float(per_sample_macs(model, task, config.split)),
    }
    model.train(was_training)
    with restored_on_error(model):
        if config.method == "moefy":
            details = _moefy(model, blocks, config, task, ctx)
        else:
            details = _switch(model, blocks, config, task, ctx)
        routing = measure_routing(model, task, config.split)
        model.eval()
        trade_off = moe_trade_off(model, task, config.split, dense, config.method == "moefy")
    ctx.record(
        modules=[b.name for b in blocks],
        method=config.method,
        **details,
        routing={
            name: {
                "load_cv": load_cv(r["load"]),
                "load_cv_kept": load_cv(r["kept"]),
                "dropped_fraction": r["dropped"] / max(sum(r["load"]), 1),
                "router_entropy": r["router_entropy"],
                "load_entropy": load_entropy(r["load"]),
            }
            for name, r in routing["layers"].items()
        },
        dynamic=trade_off,
    )
    return MoEModel(model, [b.name for b in blocks], routing)


def _gating(config: MoEConfig) -> str:
    if config.method == "moefy":
        return "unit"
    return "softmax" if config.top_k == 1 else "renorm"


def _layer(
    block: FeedForward, experts: list[nn.Sequential], router: nn.Linear, c: MoEConfig
) -> MoEFeedForward:
    bias = block.fc_out.bias
    return MoEFeedForward(
        router,
        experts,
        None if bias is None else bias.detach(),
        top_k=c.top_k,
        capacity_factor=c.capacity_factor,
        gating=_gating(c),
        dropout=block.dropout,
        jitter=c.jitter,
    )


# -- moefy -----------------------------------------------------------------------------------


def _block_inputs(
    model: nn.Module, blocks: list[FeedForward], task: Task, samples: int
) -> dict[str, Tensor]:
    """Each block's input tokens (tokens, d) on `samples` train samples of the task."""
    modules = dict(model.named_modules())
    seen: dict[str, list[Tensor]] = {b.name: [] for b in blocks}
    hooks = [
        modules[b.name].register_forward_pre_hook(
            lambda _m, args, name=b.name: seen[name].append(
                args[0].detach().reshape(-1, args[0].shape[-1])
            )
        )
        for b in blocks
    ]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in task.calibration_batches(samples):
                model(*(t.to(device) for t in task.inputs_of(batch)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in seen.items()}


def expert_scores(experts: list[nn.Sequential], x: Tensor) -> Tensor:
    """(tokens, E): the L2 norm of each expert's output on each token (no grad).

    Example:
        >>> from netchisel.dynamic.moe_layer import make_expert
        >>> e = make_expert(2, 2, 2, nn.ReLU())
        >>> expert_scores([e, e], torch.zeros(3, 2)).shape
        torch.Size([3, 2])
    """
    with torch.no_grad():
        return torch.stack([e(x).float().norm(dim=-1) for e in experts], dim=1)


def activation_mass(experts: list[nn.Sequential], x: Tensor) -> Tensor:
    """(tokens, E): the sum of each expert's positive hidden activations on each token (no
    grad): MoEfication's router target (its MLP router "predicts the sum of positive values
    in each expert", BMCook's MoEfication README).

    Example:
        >>> from netchisel.dynamic.moe_layer import make_expert
        >>> e = make_expert(2, 3, 2, nn.ReLU())
        >>> _ = nn.init.ones_(e[0].weight), nn.init.zeros_(e[0].bias)
        >>> activation_mass([e], torch.tensor([[1.0, 1.0], [-1.0, -1.0]])).tolist()
        [[6.0], [0.0]]
    """
    with torch.no_grad():
        return torch.stack(
            [e[1](e[0](x)).float().clamp_min(0.0).sum(dim=-1) for e in experts], dim=1
        )


def _router_task(x: Tensor, targets: Tensor, batch: int) -> Task:
    """The router's training data as a task: block inputs and their k-hot expert labels."""

    def loss_fn(router: nn.Module, b: Batch) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(router(b[0]), b[1])

    def metrics(router: nn.Module, batches: Any) -> dict[str, float]:
        return {}

    data = TensorDataset(x, targets)
    return Task("moe_router", {"train": data}, loss_fn, metrics, "loss", False, batch)


def _moefy(
    model: nn.Module, blocks: list[FeedForward], c: MoEConfig, task: Task, ctx: Context
) -> dict[str, Any]:
    dense = copy.deepcopy(model).eval() if c.finetune_steps else None
    inputs = _block_inputs(model, blocks, task, c.calibration_samples)
    recall: dict[str, float] = {}
    losses: dict[str, float] = {}
    for k, block in enumerate(blocks):
        x = inputs[block.name]
        groups = coactivation_groups(block, x, c.experts, seed=ctx.seed + k)
        experts = sliced_experts(block, groups)
        score = expert_scores if c.router_target == "output_norm" else activation_mass
        scores = score(experts, x)
        top = scores.topk(c.top_k, dim=1).indices
        targets = torch.zeros_like(scores).scatter_(1, top, 1.0).to(x.dtype)
        # A held-out tenth of the tokens measures how often the router finds the true top-k.
        cut = max(1, len(x) // 10)
        router = fresh_router(x.shape[1], c.experts, block.fc_in.weight, seed=ctx.seed + k)
        settings = TrainSettings(steps=c.router_steps, lr=c.router_lr, batch_size=c.router_batch)
        train = _router_task(x[cut:], targets[cut:], c.router_batch)
        quiet = Context(train, seed=ctx.seed, quiet=True)
        losses[block.name] = fit(router, train, settings, quiet)[-1]
        router.eval()
        with torch.no_grad():
            picked = router(x[:cut]).topk(c.top_k, dim=1).indices
        hits = torch.zeros_like(scores[:cut]).scatter_(1, picked, 1.0) * targets[:cut]
        recall[block.name] = float(hits.sum() / (cut * c.top_k))
        replace_module(model, block.name, _layer(block, experts, router, c))
    details: dict[str, Any] = {
        "router_final_loss": losses,
        "router_recall": recall,
        "calibration_tokens": len(next(iter(inputs.values()))),
    }
    if dense is not None:
        distil = _distil_experts(model, dense, task, c, ctx)
        details["finetune_steps"] = len(distil)
        details["finetune_first_loss"] = distil[0]
        details["finetune_final_loss"] = distil[-1]
    return details


def _distil_experts(
    model: nn.Module, dense: nn.Module, task: Task, c: MoEConfig, ctx: Context
) -> list[float]:
    """Train the MoE layers' experts (and shared biases) so the model's outputs match the
    dense model's: per-position KL(dense || MoE) of the softmax over the last axis. The
    routers and every other weight stay fixed. Returns the loss of every step."""
    layers = moe_layers(model).values()
    trained = {id(p) for layer in layers for n, p in layer.named_parameters() if n[:6] != "router"}

    def loss_fn(m: nn.Module, batch: Batch) -> Tensor:
        inputs = task.inputs_of(batch)
        with torch.no_grad():
            want = logits_of(dense(*inputs)).float().log_softmax(dim=-1)
        got = logits_of(m(*inputs)).float().log_softmax(dim=-1)
        width = got.shape[-1]
        return nn.functional.kl_div(
            got.reshape(-1, width), want.reshape(-1, width), reduction="batchmean", log_target=True
        )

    with frozen(p for p in model.parameters() if id(p) not in trained):
        return fit(model, task, train_settings(c, c.finetune_steps), ctx, loss_fn=loss_fn)


# -- switch ----------------------------------------------------------------------------------


def _switch(
    model: nn.Module, blocks: list[FeedForward], c: MoEConfig, task: Task, ctx: Context
) -> dict[str, Any]:
    for k, block in enumerate(blocks):
        if c.init == "upcycle":
            if c.expert_hidden not in (None, block.hidden):
                raise ConfigError(
                    f"{STAGE}: expert_hidden = {c.expert_hidden} with init: upcycle; upcycled "
                    f"experts are copies of {block.name!r} ({block.hidden} hidden units)"
                )
            experts = upcycled_experts(block, c.experts)
        else:
            hidden = c.expert_hidden or block.hidden
            experts = scratch_experts(block, c.experts, hidden, seed=ctx.seed + 1000 * (k + 1))
        router = fresh_router(
            block.fc_in.in_features, c.experts, block.fc_in.weight, seed=ctx.seed + k
        )
        replace_module(model, block.name, _layer(block, experts, router, c))
    layers = list(moe_layers(model).values())
    balance: list[float] = []

    z: list[float] = []

    def loss_fn(m: nn.Module, batch: Batch) -> Tensor:
        loss = task.loss(m, batch)
        aux = torch.stack([layer.balance_loss() for layer in layers]).mean()
        router_z = torch.stack([layer.z_loss() for layer in layers]).mean()
        balance.append(float(aux.detach()))
        z.append(float(router_z.detach()))
        if c.balance > 0:
            loss = loss + c.balance * aux
        return loss + c.z_loss * router_z if c.z_loss > 0 else loss

    losses = fit(model, task, train_settings(c, c.steps, c.epochs), ctx, loss_fn=loss_fn)
    return {
        "steps": len(losses),
        "final_train_loss": losses[-1],
        "final_balance_loss": balance[-1],
        "final_z_loss": z[-1],
    }
