"""What the classifier stages of `dynamic` (early exit, width) read from a task: labelled
batches, and a model's accuracy on a split, each refusal one line naming the stage."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.task import Batch, Task


def labelled(task: Task, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
    """(inputs, class labels) of a batch; a task without class labels is a ConfigError.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> task = classification_task({"val": TensorDataset(torch.zeros(2, 3), torch.ones(2))})
        >>> labelled(task, next(iter(task.loader("val"))), "dynamic.x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        netchisel.core.errors.ConfigError: dynamic.x: task 'classification' has no class labels; ...
    """
    if len(batch) < 2 or batch[1].dim() != 1 or batch[1].is_floating_point():
        raise ConfigError(
            f"{stage}: task {task.name!r} has no class labels; it needs a classification task"
        )
    return task.inputs_of(batch)[0], batch[1]


def logits_of(out: Any) -> Any:
    """A classifier's logits from its output: a Hugging Face output's `logits`, else as is.

    Example:
        >>> class Output:
        ...     logits = torch.zeros(1, 2)
        >>> logits_of(Output()).shape, logits_of(3)
        (torch.Size([1, 2]), 3)
    """
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, Tensor) else out


def classifier_logits(out: object, stage: str) -> Tensor:
    """`out` (or a Hugging Face output's `logits`) if it is (N, classes) float logits, else a
    ConfigError naming its shape."""
    out = logits_of(out)
    if not isinstance(out, Tensor) or out.dim() != 2 or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"{stage}: the model's output is {shape}; it needs a classifier's (N, classes) logits"
        )
    return out


def split_accuracy(model: nn.Module, task: Task, split: str, stage: str) -> float:
    """Accuracy in percent of `model`'s argmax on a split (eval mode, put back after).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> x = torch.eye(2)
        >>> task = classification_task({"val": TensorDataset(x, torch.tensor([0, 1]))})
        >>> split_accuracy(nn.Identity(), task, "val", "dynamic.x")
        100.0
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in task.loader(split):
                x, y = labelled(task, batch, stage)
                out = classifier_logits(model(x.to(device)), stage)
                correct += int((out.argmax(-1).cpu() == y).sum())
                total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ConfigError(f"{stage}: the {split!r} split is empty; calibration needs data")
    return 100.0 * correct / total
