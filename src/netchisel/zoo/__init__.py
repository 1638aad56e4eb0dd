"""Reference data, models and their trained checkpoints, all offline.

Example:
    >>> from netchisel import zoo
    >>> model = zoo.build("resnet", depth=8, width=4)
    >>> task = zoo.task("digits32")
    >>> sorted(task.evaluate(model))
    ['accuracy', 'loss']
"""

from __future__ import annotations

from netchisel.zoo.cache import cache_dir
from netchisel.zoo.data import (
    TASK_NAMES,
    bytes_per_char,
    corpus,
    digits,
    non_ascii_fraction,
    sentences,
    task,
    text,
    text_fingerprint,
)
from netchisel.zoo.mnist1d import mnist1d_arrays, mnist1d_fingerprint, mnist1d_splits
from netchisel.zoo.models import (
    MODEL_NAMES,
    build,
    cnn,
    gpt,
    llama,
    minilm,
    minilm_tokenize,
    mlp,
    mobilenet,
    resnet,
)
from netchisel.zoo.train import Recipe, pretrained, recipe, reference_metrics

__all__ = [
    "MODEL_NAMES",
    "TASK_NAMES",
    "Recipe",
    "build",
    "bytes_per_char",
    "cache_dir",
    "cnn",
    "corpus",
    "digits",
    "gpt",
    "llama",
    "minilm",
    "minilm_tokenize",
    "mlp",
    "mnist1d_arrays",
    "mnist1d_fingerprint",
    "mnist1d_splits",
    "mobilenet",
    "non_ascii_fraction",
    "pretrained",
    "recipe",
    "reference_metrics",
    "resnet",
    "sentences",
    "task",
    "text",
    "text_fingerprint",
]
