"""Reference models: small, configurable builders that every compression method is tested on.

Each builder marks the model it returns with `netchisel.zoo.models:<name>` and its full
kwargs (defaults filled in, sequences as lists so they survive JSON), so an artifact can
rebuild the module tree without pickle. The builders live by family, digits models in
`vision.py` and language models in `text.py`; this package re-exports them, so that reference
and `netchisel.zoo.models.<name>` keep working.

- `mlp`: LeNet-300-100 shape (Flatten, Linear-ReLU x 2, Linear).
- `cnn`: three conv-bn-relu-maxpool stages (widths w, 2w, 4w) and one Linear.
- `resnet`: CIFAR ResNet (He et al. 2016, section 4.2) with option-B (1x1 conv) shortcuts.
- `mobilenet`: MobileNetV2 inverted residuals, with a stage table cut down for 32x32 inputs.
- `gpt`: a nanoGPT-style decoder-only LM with separate q/k/v projections and an untied head.
- `minilm`: the real pretrained all-MiniLM-L6-v2 (optional `llm` extra), loaded offline.
- `llama`: a `transformers` `LlamaForCausalLM` with grouped-query attention (`llm` extra),
  trained here on the zoo text (`llama.py`).
- `mnist1d_logistic`, `mnist1d_mlp`, `mnist1d_cnn`: the MNIST-1D paper's models over (N, 1, 40)
  sequences (`sequence.py`); `mnist1d_deep_cnn`: a deeper six-layer CNN on the same data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.zoo.models.llama import llama
from netchisel.zoo.models.sequence import (
    ResidualMLP,
    mnist1d_cnn,
    mnist1d_deep_cnn,
    mnist1d_logistic,
    mnist1d_mlp,
)
from netchisel.zoo.models.text import (
    GPT,
    MLP,
    Block,
    CausalSelfAttention,
    SentenceEmbedder,
    gpt,
    minilm,
    minilm_path,
    minilm_tokenize,
)
from netchisel.zoo.models.vision import (
    MOBILENET_LAST,
    MOBILENET_STAGES,
    MOBILENET_STEM,
    BasicBlock,
    InvertedResidual,
    ResNet,
    cnn,
    mlp,
    mobilenet,
    resnet,
)

__all__ = [
    "BUILDERS",
    "GPT",
    "MLP",
    "MOBILENET_LAST",
    "MOBILENET_STAGES",
    "MOBILENET_STEM",
    "MODEL_NAMES",
    "BasicBlock",
    "Block",
    "CausalSelfAttention",
    "InvertedResidual",
    "ResNet",
    "ResidualMLP",
    "SentenceEmbedder",
    "build",
    "cnn",
    "gpt",
    "llama",
    "minilm",
    "minilm_path",
    "minilm_tokenize",
    "mlp",
    "mnist1d_cnn",
    "mnist1d_deep_cnn",
    "mnist1d_logistic",
    "mnist1d_mlp",
    "mobilenet",
    "resnet",
]

MODEL_NAMES = (
    "mlp",
    "cnn",
    "resnet",
    "mobilenet",
    "gpt",
    "llama",
    "minilm",
    "mnist1d_logistic",
    "mnist1d_mlp",
    "mnist1d_cnn",
    "mnist1d_deep_cnn",
)

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    "mobilenet": mobilenet,
    "gpt": gpt,
    "llama": llama,
    "minilm": minilm,
    "mnist1d_logistic": mnist1d_logistic,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "mnist1d_deep_cnn": mnist1d_deep_cnn,
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name; unknown names and arguments are errors that list the valid ones.

    Example:
        >>> build("resnet", depth=8, width=4).fc.in_features
        16
    """
    builder = BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown zoo model {name!r} (known: {', '.join(MODEL_NAMES)})")
    known = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise ConfigError(f"zoo model {name!r}: unknown argument {unknown[0]!r} (known: {valid})")
    return builder(**kwargs)
