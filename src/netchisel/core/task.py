"""Task: what "good" means for a model: its data, its loss and its metrics.

Methods that need data or training ask the Task; they never build their own loaders.
A batch is a tuple of tensors (as a TensorDataset yields); `inputs_of(batch)` is what the
model is called with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from netchisel.core.errors import ConfigError

Batch = tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
MetricsFn = Callable[[nn.Module, Iterable[Batch]], dict[str, float]]


def _first(batch: Batch) -> tuple[Tensor, ...]:
    return (batch[0],)


@dataclass(frozen=True)
class Task:
    """Data splits, a loss and a metrics function, with the metric that ranks models.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
        >>> task = classification_task({"train": data, "val": data})
        >>> sorted(task.evaluate(nn.Linear(4, 2)))
        ['accuracy', 'loss']
    """

    name: str
    splits: dict[str, Dataset[Any]]
    loss_fn: LossFn
    metrics_fn: MetricsFn
    primary_metric: str
    higher_is_better: bool
    batch_size: int = 64
    eval_split: str = "val"
    inputs_of: Callable[[Batch], tuple[Tensor, ...]] = _first
    extra: dict[str, Any] = field(default_factory=dict)

    def loader(
        self, split: str, *, shuffle: bool = False, batch_size: int | None = None, seed: int = 0
    ) -> DataLoader[Any]:
        """A DataLoader over one split; shuffling is seeded so runs repeat."""
        if split not in self.splits:
            raise ConfigError(
                f"task {self.name!r} has no {split!r} split (has: {', '.join(self.splits)})"
            )
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size if batch_size is None else batch_size,
            shuffle=shuffle,
            generator=generator,
        )

    def evaluate(self, model: nn.Module, split: str | None = None) -> dict[str, float]:
        """Metrics of `model` on a split (default `eval_split`), in eval mode without grad."""
        was_training = model.training
        model.eval()
        device = _device_of(model)
        batches = (
            tuple(t.to(device) for t in batch) for batch in self.loader(split or self.eval_split)
        )
        try:
            with torch.no_grad():
                return self.metrics_fn(model, batches)
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The training loss of one batch."""
        return self.loss_fn(model, batch)

    def example_inputs(self, batch_size: int = 1, split: str | None = None) -> tuple[Tensor, ...]:
        """Real model inputs of exactly `batch_size` samples (the split repeats if smaller)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        batch = tuple(next(iter(self.loader(split or self.eval_split, batch_size=batch_size))))
        repeats = -(-batch_size // len(batch[0]))
        batch = tuple(t.repeat(repeats, *[1] * (t.dim() - 1))[:batch_size] for t in batch)
        return self.inputs_of(batch)

    def calibration_batches(self, n_samples: int, split: str = "train") -> list[Batch]:
        """The first `n_samples` samples of a split, in batches, for calibration."""
        if n_samples <= 0:
            raise ConfigError(f"calibration needs at least one sample, got {n_samples}")
        if split in self.splits and len(self.splits[split]) == 0:  # type: ignore[arg-type]
            raise ConfigError(f"task {self.name!r}: the {split!r} split is empty")
        out: list[Batch] = []
        seen = 0
        for batch in self.loader(split, shuffle=True, seed=1234):
            take = min(len(batch[0]), n_samples - seen)
            out.append(tuple(t[:take] for t in batch))
            seen += take
            if seen >= n_samples:
                break
        return out


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def logits_of(output: object) -> Tensor:
    """A model's logits: its output if that is a tensor, else the `.logits` of a Hugging Face
    model output (`CausalLMOutputWithPast`, `SequenceClassifierOutput`, ...), so the tasks take
    a `transformers` model as it is.

    Example:
        >>> logits_of(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
        >>> logits_of({"logits": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        netchisel.core.errors.ConfigError: the model returned dict, not logits (a tensor, ...
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ConfigError(
        f"the model returned {type(output).__name__}, not logits (a tensor, or an output with "
        ".logits)"
    )


def classification_task(
    splits: dict[str, Dataset[Any]], batch_size: int = 64, name: str = "classification"
) -> Task:
    """Cross-entropy loss; metrics `accuracy` (percent) and `loss` (mean nats)."""

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        return nn.functional.cross_entropy(logits_of(model(batch[0])), batch[1])

    def metrics(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        correct, total, loss_sum = 0, 0, 0.0
        for x, y in batches:
            logits = logits_of(model(x))
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
        if total == 0:
            raise ConfigError(f"task {name!r}: the evaluation split is empty")
        return {"accuracy": 100.0 * correct / total, "loss": loss_sum / total}

    return Task(name, splits, loss_fn, metrics, "accuracy", True, batch_size)


def language_model_task(
    splits: dict[str, Dataset[Any]], batch_size: int = 32, name: str = "language_model"
) -> Task:
    """Next-token cross-entropy over (tokens, targets) pairs.

    Metrics: `loss` (nats per token), `perplexity` (exp of loss) and `bits_per_token`
    (loss / ln 2; with byte-level tokens this is bits per byte). The protocol: the loss is
    summed over every target token of the split's windows and divided by their number (each
    window is scored on its own, its first tokens with less context; the zoo text's val and
    test windows do not overlap, so every byte is predicted once); perplexity = exp(loss).
    """

    def logits_loss(model: nn.Module, batch: Batch, reduction: str) -> Tensor:
        logits = logits_of(model(batch[0]))
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1), reduction=reduction
        )

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        return logits_loss(model, batch, "mean")

    def metrics(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        loss_sum, tokens = 0.0, 0
        for batch in batches:
            loss_sum += float(logits_loss(model, batch, "sum"))
            tokens += batch[1].numel()
        if tokens == 0:
            raise ConfigError(f"task {name!r}: the evaluation split is empty")
        loss = loss_sum / tokens
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2)}

    return Task(name, splits, loss_fn, metrics, "perplexity", False, batch_size)


def embedding_task(
    splits: dict[str, Dataset[Any]],
    reference: nn.Module,
    top_k: int = 5,
    batch_size: int = 32,
    name: str = "embedding_fidelity",
) -> Task:
    """Fidelity of a sentence-embedding model to a reference (the uncompressed model).

    Batches are the model's inputs (e.g. token ids and attention mask). Metrics: `cosine`
    (mean cosine similarity to the reference embedding of the same input), `cosine_min`, and
    `topk_agreement` (mean overlap of each sentence's top-k neighbours under both models).
    The loss is 1 - cosine, so fine-tuning pulls the model back to the reference.
    """
    reference = reference.eval()

    def reference_of(batch: Batch) -> Tensor:
        with torch.no_grad():
            return reference(*batch)  # type: ignore[no-any-return]

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        cos = nn.functional.cosine_similarity(model(*batch), reference_of(batch), dim=-1)
        return 1.0 - cos.mean()

    def metrics(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        ours, theirs = [], []
        for batch in batches:
            ours.append(model(*batch).float())
            theirs.append(reference_of(batch).float())
        if not ours:
            raise ConfigError(f"task {name!r}: the evaluation split is empty")
        a, b = torch.cat(ours), torch.cat(theirs)
        cos = nn.functional.cosine_similarity(a, b, dim=-1)
        return {
            "cosine": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "topk_agreement": topk_agreement(a, b, top_k),
        }

    return Task(name, splits, loss_fn, metrics, "cosine", True, batch_size, inputs_of=lambda b: b)


def topk_agreement(ours: Tensor, reference: Tensor, k: int) -> float:
    """Mean fraction of each row's k nearest rows (cosine, self excluded) shared by both.

    Example:
        >>> x = torch.eye(4) + 0.1
        >>> topk_agreement(x, x, 2)
        1.0
    """
    k = min(k, len(ours) - 1)
    if k <= 0:
        return 1.0

    def neighbours(x: Tensor) -> Tensor:
        x = nn.functional.normalize(x, dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(-math.inf)
        return sim.topk(k, dim=-1).indices

    a, b = neighbours(ours), neighbours(reference)
    shared = sum(len(set(r.tolist()) & set(s.tolist())) for r, s in zip(a, b, strict=True))
    return shared / (k * len(a))


def custom_task(
    evaluate: Callable[[nn.Module], dict[str, float]],
    example_inputs: Sequence[Tensor],
    primary_metric: str,
    higher_is_better: bool = True,
    train: Dataset[Any] | None = None,
    loss_fn: LossFn | None = None,
    name: str = "custom",
) -> Task:
    """A task around a user's own `evaluate(model) -> metrics`, optionally trainable.

    Example:
        >>> task = custom_task(lambda m: {"score": 1.0}, [torch.zeros(1, 4)], "score")
        >>> task.evaluate(nn.Linear(4, 2))
        {'score': 1.0}
    """
    from torch.utils.data import TensorDataset

    inputs = tuple(example_inputs)
    splits: dict[str, Dataset[Any]] = {"example": TensorDataset(*inputs)}
    if train is not None:
        splits["train"] = train

    def no_loss(model: nn.Module, batch: Batch) -> Tensor:
        raise ConfigError(f"task {name!r} has no loss: pass loss_fn= to custom_task to train")

    return Task(
        name,
        splits,
        loss_fn or no_loss,
        lambda model, _batches: evaluate(model),
        primary_metric,
        higher_is_better,
        batch_size=len(inputs[0]),
        eval_split="example",
        inputs_of=lambda b: b,
    )
