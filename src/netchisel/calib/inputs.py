"""What a layer reads on calibration data: the batches, and the statistics solvers need of them.

Every layer-by-layer solver needs the same few numbers of a Linear layer's inputs X (one row
per token): the Gram matrix X^T X (GPTQ and SparseGPT's Hessian, AWQ's output error), the
token count, and per input feature the sum and maximum of |x| (AWQ's activation magnitude,
SmoothQuant's activation range). `LayerInputs` accumulates them batch by batch from a forward
pre-hook, so no activation is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netchisel.calib.trace import hooks
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task

Inputs = Sequence[tuple[Tensor, ...]]


@dataclass
class LayerInputs:
    """What a layer read during one calibration pass (all float32, on the layer's device).

    - `gram`: X^T X, (in, in), summed over tokens (None when not asked for).
    - `tokens`: how many rows X has (tokens, or samples for a 2-D input).
    - `abs_sum` / `abs_max`: per input feature, the sum and the maximum of |x|.

    Example:
        >>> seen = LayerInputs.empty(2)
        >>> seen.add(torch.tensor([[1.0, -2.0], [3.0, 0.0]]), with_gram=True)
        >>> seen.gram.tolist(), seen.tokens, seen.abs_mean.tolist(), seen.abs_max.tolist()
        ([[10.0, -2.0], [-2.0, 4.0]], 2, [2.0, 1.0], [3.0, 2.0])
    """

    gram: Tensor | None
    tokens: int
    abs_sum: Tensor
    abs_max: Tensor

    @classmethod
    def empty(cls, features: int, device: torch.device | None = None) -> LayerInputs:
        """Nothing seen yet, for a layer with `features` inputs."""
        zeros = torch.zeros(features, device=device)
        return cls(None, 0, zeros, zeros.clone())

    @property
    def abs_mean(self) -> Tensor:
        """Mean |x| per input feature (AWQ's activation magnitude)."""
        return self.abs_sum / max(self.tokens, 1)

    def add(self, x: Tensor, with_gram: bool) -> None:
        """Accumulate a batch `x` of shape (rows, in)."""
        if with_gram:
            gram = x.T @ x
            self.gram = gram if self.gram is None else self.gram + gram
        self.tokens += len(x)
        magnitude = x.abs()
        self.abs_sum += magnitude.sum(0)
        self.abs_max = torch.maximum(self.abs_max, magnitude.amax(0))

    def finite(self) -> bool:
        """Whether everything seen is finite (no inf or NaN reached the layer)."""
        gram_finite = self.gram is None or bool(torch.isfinite(self.gram).all())
        return gram_finite and bool(torch.isfinite(self.abs_max).all())


def calibration_inputs(
    task: Task, samples: int, device: torch.device, stage: str
) -> list[tuple[Tensor, ...]]:
    """The model inputs of the task's first `samples` shuffled train samples, in batches.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.zeros(10, 4), torch.zeros(10))
        >>> task = classification_task({"train": data})
        >>> [x[0].shape[0] for x in calibration_inputs(task, 6, torch.device("cpu"), "demo")]
        [6]
    """
    empty = ConfigError(
        f"{stage}: task {task.name!r} gave no calibration samples (its train split is "
        "empty): give the task training data"
    )
    train = task.splits.get("train")
    if train is not None and hasattr(train, "__len__") and len(train) == 0:
        raise empty  # checked first: a shuffled loader over nothing is torch's ValueError
    batches = task.calibration_batches(samples)
    inputs = [task.inputs_of(tuple(t.to(device) for t in batch)) for batch in batches]
    if not inputs or sum(len(x[0]) for x in inputs) == 0:
        raise empty
    return inputs


def accumulate(
    module: nn.Module, name: str, stats: dict[str, LayerInputs], with_gram: bool
) -> torch.utils.hooks.RemovableHandle:
    """A pre-hook adding what `module` reads to `stats[name]` (one row per token)."""

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if name not in stats:
            stats[name] = LayerInputs.empty(x.shape[1], x.device)
        stats[name].add(x, with_gram)

    return module.register_forward_pre_hook(hook)


def collect_inputs(
    model: nn.Module, layers: Mapping[str, nn.Module], inputs: Inputs, with_gram: bool = False
) -> dict[str, LayerInputs]:
    """Input statistics of every layer from full passes of the unchanged model.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> stats = collect_inputs(net, {"0": net[0]}, [(torch.tensor([[1.0, -3.0]]),)])
        >>> stats["0"].abs_max.tolist(), stats["0"].tokens
        ([1.0, 3.0], 1)
    """
    stats: dict[str, LayerInputs] = {}
    with torch.no_grad(), hooks([accumulate(m, n, stats, with_gram) for n, m in layers.items()]):
        for x in inputs:
            model(*x)
    missing = [n for n in layers if n not in stats]
    if missing:
        raise ModelError(f"layer {missing[0]} was not called on calibration data: exclude it")
    return stats
