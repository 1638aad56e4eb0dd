"""DARTS (Liu et al. ICLR 2019): search a cell by gradient descent on a continuous relaxation.

Gradient-based one-shot search is training, not sampling, so it is a loop here rather than an
Optuna sampler. The train split is cut in two fixed halves: the weights of the search network
train on one, the architecture weights alpha on the other (the bilevel problem, eq. 3-4). Each
step is one Adam step on alpha (first order: the validation gradient at the current weights;
second order: at the weights after one virtual SGD step, with the finite-difference
Hessian-vector product of `darts_hessian`) then one SGD step on the weights.

After every epoch the current cell is derived (`darts_derive`) and two collapse signals are
recorded (Zela et al. ICLR 2020): the skip connections in the derived normal cell and the
dominant eigenvalue of the validation Hessian w.r.t. alpha. The result is an ordinary
`cell_space` candidate and the `cell_net` kwargs to build it with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from netchisel.core.errors import ConfigError
from netchisel.core.task import Batch, Task
from netchisel.search.nas.darts_config import DartsConfig, DartsResult, EpochRecord
from netchisel.search.nas.darts_cost import cost_penalty, expected_cost, set_op_costs_
from netchisel.search.nas.darts_derive import derive, skip_edges
from netchisel.search.nas.darts_hessian import (
    dominant_eigenvalue,
    finite_difference_hvp,
    gradients,
)
from netchisel.search.nas.darts_ops import SearchNet, search_ops

GRAD_CLIP = 5.0
"""Gradient-norm clip of the weight step (Liu et al. 2019's CIFAR-10 setting)."""


def darts_search(
    task: Task,
    config: DartsConfig | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> DartsResult:
    """Search a normal and a reduction cell on `task`'s train split; the same seed gives the
    same result.

    `on_epoch` is called with each epoch's record (progress, logging).
    `result.model(width=..., cells_per_stage=...)` builds the derived network.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(32, 1, 8), torch.randint(0, 2, (32,)))
        >>> task = classification_task({"train": data, "val": data})
        >>> config = DartsConfig(epochs=1, steps_per_epoch=2, nodes=1, width=2, reductions=1,
        ...                      batch_size=8, ops=("sep3", "skip"), eigen_iterations=2)
        >>> result = darts_search(task, config)
        >>> sorted(result.candidate), result.net_kwargs["dims"]
        (['normal1_in1', 'normal1_in2', 'normal1_op1', 'normal1_op2', 'reduce1_in1', \
'reduce1_in2', 'reduce1_op1', 'reduce1_op2'], 1)
    """
    config = config or DartsConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    weight_half, arch_half = _halves(task, config)
    net_kwargs = _net_kwargs(task, config, arch_half)
    ops = search_ops(config.ops)
    keys = ("nodes", "width", "cells_per_stage", "reductions", "in_channels", "num_classes")
    net = SearchNet(ops, **{k: net_kwargs[k] for k in keys}, dims=net_kwargs["dims"])
    fixed = next(iter(arch_half))
    set_op_costs_(net, task.inputs_of(fixed)[0], config.cost)
    reference = sum(float(c.cost.sum()) / len(ops) for c in net.search_cells())  # uniform alphas

    steps = config.steps_per_epoch or len(weight_half)
    w_opt = torch.optim.SGD(
        net.weight_parameters(),
        lr=config.w_lr,
        momentum=config.w_momentum,
        weight_decay=config.w_weight_decay,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_opt, config.epochs * steps, eta_min=config.w_lr_min
    )
    a_opt = torch.optim.Adam(
        net.arch_parameters(),
        lr=config.alpha_lr,
        betas=(0.5, 0.999),
        weight_decay=config.alpha_weight_decay,
    )

    def penalty() -> Tensor:
        return cost_penalty(net, config.cost_lambda, config.macs_budget, reference)

    train_batches, val_batches = _forever(weight_half), _forever(arch_half)
    trace: list[EpochRecord] = []
    history: list[dict[str, list[list[float]]]] = []
    stopped_at = None
    for epoch in range(config.epochs):
        net.train()
        train_losses = []
        for _ in range(steps):
            train_b, val_b = next(train_batches), next(val_batches)
            lr = float(schedule.get_last_lr()[0])
            arch_grads = _arch_gradient(net, task, train_b, val_b, config, lr, penalty)
            for alpha, grad in zip(net.arch_parameters(), arch_grads, strict=True):
                alpha.grad = grad
            a_opt.step()
            w_opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(net, train_b)
            loss.backward()
            nn.utils.clip_grad_norm_(net.weight_parameters(), GRAD_CLIP)
            w_opt.step()
            schedule.step()
            train_losses.append(float(loss.detach()))
        trace.append(_record(net, task, config, epoch, train_losses, arch_half, fixed, ops))
        history.append(
            {
                k: w.detach().tolist()
                for k, w in zip(("normal", "reduce"), net.op_weights(), strict=True)
            }
        )
        if on_epoch is not None:
            on_epoch(trace[-1])
        if config.early_stop and _eigenvalue_grew(trace, config):
            stopped_at = epoch
            break
    chosen = trace[stopped_at - config.es_window] if stopped_at is not None else trace[-1]
    return DartsResult(
        candidate=dict(chosen.candidate),
        net_kwargs=net_kwargs,
        ops=ops,
        trace=tuple(trace),
        alpha_history=tuple(history),
        stopped_at=stopped_at,
        seconds=time.perf_counter() - started,
        config=config,
    )


def _arch_gradient(
    net: SearchNet,
    task: Task,
    train_b: Batch,
    val_b: Batch,
    config: DartsConfig,
    lr: float,
    penalty: Callable[[], Tensor],
) -> list[Tensor]:
    alphas, weights = net.arch_parameters(), net.weight_parameters()
    extra = gradients(penalty(), alphas) if config.cost_lambda > 0 else None
    if config.order == 1:
        grads = gradients(task.loss_fn(net, val_b), alphas)
    else:
        # Virtual step w' = w - lr * (grad L_train + wd * w) (Liu et al. eq. 6), then
        # grad_alpha L_val(w') - lr * grad_alpha grad_w L_train(w) . grad_w' L_val(w') (eq. 7).
        backup = [w.detach().clone() for w in weights]
        train_grads = gradients(task.loss_fn(net, train_b), weights)
        with torch.no_grad():
            for w, g in zip(weights, train_grads, strict=True):
                w.sub_(lr * (g + config.w_weight_decay * w))
        val_grads = gradients(task.loss_fn(net, val_b), [*alphas, *weights])
        with torch.no_grad():
            for w, saved in zip(weights, backup, strict=True):
                w.copy_(saved)
        grads, vector = val_grads[: len(alphas)], val_grads[len(alphas) :]
        hvp = finite_difference_hvp(lambda: task.loss_fn(net, train_b), weights, alphas, vector)
        grads = [g - lr * h for g, h in zip(grads, hvp, strict=True)]
    if extra is not None:
        grads = [g + e for g, e in zip(grads, extra, strict=True)]
    return grads


def _record(
    net: SearchNet,
    task: Task,
    config: DartsConfig,
    epoch: int,
    train_losses: list[float],
    arch_half: DataLoader[Any],
    fixed: Batch,
    ops: tuple[str, ...],
) -> EpochRecord:
    normal, reduce = net.op_weights()
    candidate = derive(normal, reduce, ops, config.nodes, config.skip_limit, config.limited_ops)
    eigenvalue = None
    if config.eigen_iterations > 0:
        loss = task.loss_fn(net, fixed)
        eigenvalue = dominant_eigenvalue(
            loss, net.arch_parameters(), config.eigen_iterations, config.seed
        )
    net.eval()
    with torch.no_grad():
        metrics = task.metrics_fn(net, iter(arch_half))
        macs = float(expected_cost(net))
    net.train()
    return EpochRecord(
        epoch=epoch,
        train_loss=statistics.fmean(train_losses),
        val_loss=metrics.get("loss", float("nan")),
        val_accuracy=metrics.get("accuracy", float("nan")),
        skips=len(skip_edges(candidate, config.nodes)),
        eigenvalue=eigenvalue,
        expected_macs=macs,
        candidate=candidate,
    )


def _eigenvalue_grew(trace: list[EpochRecord], config: DartsConfig) -> bool:
    """DARTS-ES (Zela et al. 2020, section 4.2): the mean eigenvalue of the last window over
    that of the window before exceeds `es_factor` (they stop at 1 / 0.75 = 1.33)."""
    w = config.es_window
    if len(trace) < 2 * w:
        return False
    values = [r.eigenvalue or 0.0 for r in trace[-2 * w :]]
    before, recent = statistics.fmean(values[:w]), statistics.fmean(values[w:])
    return before > 0 and recent > config.es_factor * before


def _halves(task: Task, config: DartsConfig) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Two fixed, disjoint, seeded halves of the train split, as shuffling loaders."""
    data = task.splits.get("train")
    if data is None:
        raise ConfigError(
            f"DARTS needs a 'train' split; task {task.name!r} has {list(task.splits)}"
        )
    size = len(data)  # type: ignore[arg-type]
    if size < 4 * config.batch_size:
        raise ConfigError(
            f"DARTS: the train split ({size}) must hold at least 4 batches of {config.batch_size} "
            "(two halves of two batches): lower batch_size"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed)).tolist()
    halves = (order[: size // 2], order[size // 2 :])
    return tuple(  # type: ignore[return-value]
        DataLoader(
            Subset(data, half),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,  # a batch of one breaks BatchNorm
            generator=torch.Generator().manual_seed(config.seed + 1 + k),
        )
        for k, half in enumerate(halves)
    )


def _forever(loader: DataLoader[Any]) -> Iterator[Batch]:
    while True:
        yield from loader


def _net_kwargs(task: Task, config: DartsConfig, loader: DataLoader[Any]) -> dict[str, Any]:
    """The `cell_net` kwargs the search fixes: sizes from the config, shapes from the data."""
    batch = next(iter(loader))
    x = task.inputs_of(batch)[0]
    dims = x.dim() - 2
    if dims not in (1, 2) or (dims == 2 and x.shape[-1] != x.shape[-2]):
        raise ConfigError(
            f"DARTS inputs must be (N, C, L) sequences or (N, C, H, H) square images, "
            f"got {tuple(x.shape)}"
        )
    if config.dims is not None and config.dims != dims:
        raise ConfigError(
            f"DartsConfig dims={config.dims} but the data is {dims}-D: set dims={dims}"
        )
    labels = torch.cat([b[1] for b in task.loader("train", batch_size=4096)])
    if x.shape[-1] < 2**config.reductions:
        raise ConfigError(
            f"DARTS: {config.reductions} reductions need inputs of at least "
            f"{2**config.reductions} steps, got {x.shape[-1]}: lower reductions"
        )
    return {
        "nodes": config.nodes,
        "width": config.width,
        "cells_per_stage": config.cells_per_stage,
        "reductions": config.reductions,
        "in_channels": int(x.shape[1]),
        "num_classes": int(labels.max()) + 1,
        "image_size": int(x.shape[-1]),
        "dims": dims,
    }
