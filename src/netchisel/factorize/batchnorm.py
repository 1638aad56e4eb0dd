"""Re-estimate BatchNorm statistics after a rewrite (no weight changes, no gradients).

A rewritten conv computes a different function, so the running mean and variance of the
BatchNorm after it (and of every later one) no longer match its outputs; on the trained
ResNet-20 that alone turns 98 % accuracy into chance. Recomputing them from a few hundred
training samples is the cheap, data-only repair used after pruning and quantization too
("adaptive BN" of Li et al. 2020, "EagleEye", for pruned candidates). Measured on the zoo
ResNet-20 (`bench/results/factorize_resnet.json`).
"""

from __future__ import annotations

import torch
from torch import nn

from netchisel.core.state import restored_on_error
from netchisel.core.task import Task
from netchisel.factorize.rank import swap_all


def swap_and_recalibrate_(
    model: nn.Module, replacements: dict[str, nn.Module], task: Task | None, samples: int
) -> None:
    """Swap the replacements in, then (with a task and samples > 0) recalibrate BatchNorms;
    if either fails, the model is as it was (`restored_on_error`)."""
    with restored_on_error(model):
        swap_all(model, replacements)
        if task is not None and samples and replacements:
            recalibrate_batchnorm_(model, task, samples)


def recalibrate_batchnorm_(model: nn.Module, task: Task, samples: int) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over `samples`
    train samples (momentum None), other layers in eval mode; returns the BatchNorms updated.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.full((16, 2, 4, 4), 3.0), torch.zeros(16, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.BatchNorm2d(2), nn.Flatten())
        >>> recalibrate_batchnorm_(net, task, 16), round(float(net[0].running_mean[0]), 1)
        (1, 3.0)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over all batches, not an EMA
            norm.train()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for batch in task.calibration_batches(samples):
                model(*task.inputs_of(tuple(t.to(device) for t in batch)))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)
