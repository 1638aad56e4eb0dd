"""Compression-policy spaces (AMC / HAQ style): one searched value per layer of a model.

- `sparsity`: one structured-pruning ratio per channel group (a group of coupled layers is
  one keep-decision, so it is one dimension, named after its root layer). The recipe passes
  them to `prune.structured` as `per_layer: $sparsity`.
- `bits`: one weight bit width per Linear layer, passed to a weight quantizer as
  `per_layer_bits: $bits` (`quantize.rtn`, `quantize.gptq`, ...).

Dimension names are `<kind>/<regex matching exactly that layer>`, so the `$kind` placeholder
expands to the `{regex: value}` mapping those stages take.

He et al., "AMC: AutoML for Model Compression", ECCV 2018; Wang et al., "HAQ: Hardware-Aware
Automated Quantization with Mixed Precision", CVPR 2019.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.search.space import Space, categorical
from netchisel.search.template import placeholders

KINDS = ("sparsity", "bits")
SPEC_KEYS = ("policy", "choices", "layers")


def policy_space(
    model: nn.Module,
    kind: str,
    choices: Sequence[Any],
    inputs: tuple[torch.Tensor, ...],
    layers: Sequence[str] | None = None,
) -> Space:
    """One categorical dimension per prunable group (`sparsity`) or Linear layer (`bits`).

    `layers`: regexes (full match) over the root/layer names to keep; default all.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> list(policy_space(net, "sparsity", [0.0, 0.5], (torch.zeros(1, 1, 8, 8),)).dimensions)
        ['sparsity/0', 'sparsity/2']
    """
    if kind not in KINDS:
        raise ConfigError(
            f"search.space.policy: unknown policy {kind!r} (known: {', '.join(KINDS)})"
        )
    if kind == "sparsity":
        from netchisel.prune.structured import channel_groups

        names = list(channel_groups(model, inputs))
    else:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layers is not None:
        names = [n for n in names if any(re.fullmatch(p, n) for p in layers)]
    if not names:
        what = "prunable channel groups" if kind == "sparsity" else "Linear layers"
        raise ConfigError(f"search.space.policy: the model has no {what} (after 'layers')")
    dimension = categorical(*choices)
    return Space({f"{kind}/{re.escape(name)}": dimension for name in names})


def policy_space_from_spec(
    part: Mapping[str, Any], template: Mapping[str, Any], where: str
) -> Space:
    """The policy space of a spec: `{policy: sparsity, choices: [...], layers: [...]}`.

    The recipe's model is built once (without placeholders) to find its layers.
    """
    for key in part:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(SPEC_KEYS)})")
    choices = part.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}.choices: expected a non-empty list of values per layer")
    layers = part.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise ConfigError(f"{where}.layers: expected a list of regexes")
    model, inputs = _model_and_inputs(template)
    return policy_space(model, str(part["policy"]), choices, inputs, layers)


def _model_and_inputs(template: Mapping[str, Any]) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from netchisel.pipeline.sources import load_model, load_task, parse_source

    if placeholders(template.get("model")) or placeholders(template.get("task")):
        raise ConfigError(
            "search.space.policy: the recipe's model and task must be fixed (no $placeholders), "
            "since the policy has one value per layer of that model"
        )
    if "model" not in template:
        raise ConfigError("search.recipe: 'model' is required")
    model_spec = parse_source(
        "search.recipe.model", template["model"], ("zoo", "builder", "artifact")
    )
    model = load_model(model_spec)
    task_value = template.get("task")
    task_spec = (
        parse_source("search.recipe.task", task_value, ("zoo", "builder")) if task_value else None
    )
    task = load_task(task_spec, model_spec, model)
    if task is None:
        raise ConfigError("search.recipe: add 'task:' so the policy's layers can be traced")
    return model, task.example_inputs(1)
