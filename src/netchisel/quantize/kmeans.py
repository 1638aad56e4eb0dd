"""`quantize.kmeans`: weight sharing by k-means (Deep Compression, Han et al., ICLR 2016).

Every chosen layer's weights are clustered into at most 2**bits shared values (a per-layer
codebook) and the layer keeps only the codebook and one small index per weight. k-means runs
on the weights alone, 1-D, starting from centroids spaced linearly over [min, max] (the
paper's best initialisation, section 3.2), so it is deterministic. Pruned weights stay zero
and do not take a centroid: index 0 is reserved for them and always reads 0.

Optional fine-tuning then trains the centroids through the task: the gradient of a centroid is
the sum of the gradients of the weights that share it (section 3.1, figure 3), which is exactly
what autograd gives for `codebook[indices]`.

The layers become `ClusteredLinear` / `ClusteredConv` (`formats/clustered.py`); k-means itself
is `primitives.kmeans_1d` / `cluster_weight`. The artifact stores the indices with the
`huffman` codec (`artifact/int_codecs.py`) by default: Huffman codes, plus the relative-index
sparse layout when the layer was pruned. The forward pass gathers `codebook[indices]` into a
float weight (once, for inference) and runs the ordinary kernel, so a clustered model is
smaller on disk but not faster or smaller in memory, and the stage records that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

import netchisel.artifact.int_codecs  # noqa: F401  (registers the codecs indices are saved with)
from netchisel.artifact.store import set_codec
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import Mask, forget_masks, masks_of
from netchisel.core.modules import nothing_chosen, replace_module, select_modules
from netchisel.core.registry import register
from netchisel.core.state import restored_on_error
from netchisel.core.train import TrainConfig, check_training, fit, train_settings
from netchisel.quantize.formats.clustered import ClusteredConv, ClusteredLinear
from netchisel.quantize.primitives import Init

CLUSTERABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SIMULATED_NOTE = (
    "k-means layers compute in float with the weight codebook[indices] (gathered once for "
    "inference): smaller on disk only, no speed-up and no memory saving at run time"
)


FLOAT16_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True)
class KMeansConfig(TrainConfig):
    """Weight sharing: at most 2**bits shared values per layer, optionally fine-tuned.

    - `bits`: 2-8, index bits per weight (the codebook has 2**bits entries, one of them the
      reserved zero when the layer was pruned); `per_layer_bits` overrides it for layers whose
      name fully matches a regex (e.g. `{"conv.*": 8}`).
    - `layers` / `exclude`: regexes over Linear/Conv module names (default: all of them).
    - `init`: "linear" (the paper's choice), "density" or "random" (seeded by the context).
    - `iterations`: at most this many Lloyd iterations (it stops when no cluster boundary moves).
    - `finetune_epochs` / `finetune_steps`: centroid fine-tuning through the task after
      clustering (0 = none; steps win when both are set). Every trainable parameter trains:
      the codebooks, biases, and layers left unclustered. `lr`, `optimizer`, `weight_decay`,
      `lr_schedule`, `batch_size`: that training.
    - `codec`: how the artifact stores the indices: "huffman" (default), "packed" (fixed
      width) or "raw" (one byte each). See `int_codecs.py`.
    - `float16`: after fine-tuning, keep the clustered layers' codebooks and biases in
      float16 (they compute in the input's dtype): half their bytes, each value rounded by at
      most 2**-11 of itself. In a small pruned model the fp32 biases outweigh the indices.

    Example:
        >>> KMeansConfig(bits=5, per_layer_bits={"fc3": 6}).bits_for("fc3")
        6
    """

    NAME: ClassVar[str] = "quantize.kmeans"

    bits: int = 5
    per_layer_bits: dict[str, int] = field(default_factory=dict)
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    init: Init = "linear"
    iterations: int = 300
    finetune_epochs: float = 0.0
    finetune_steps: int | None = None
    codec: Literal["huffman", "packed", "raw"] = "huffman"
    float16: bool = False

    def validate(self) -> None:
        for name, bits in [("bits", self.bits), *self.per_layer_bits.items()]:
            if not 2 <= bits <= 8:
                raise ConfigError(f"quantize.kmeans: bits {name}={bits} is outside 2-8")
        if self.iterations < 1:
            raise ConfigError(f"quantize.kmeans: iterations must be >= 1, got {self.iterations}")
        if self.finetune_epochs < 0:
            raise ConfigError(
                f"quantize.kmeans: finetune_epochs must be >= 0, got {self.finetune_epochs}"
            )
        if self.finetune_steps is not None and self.finetune_steps < 0:
            raise ConfigError(
                f"quantize.kmeans: finetune_steps must be >= 0, got {self.finetune_steps}"
            )
        check_training("quantize.kmeans", self.lr, self.batch_size)

    def bits_for(self, layer: str) -> int:
        """The index bits of one layer (after `per_layer_bits`)."""
        return next(
            (b for pattern, b in self.per_layer_bits.items() if re.fullmatch(pattern, layer)),
            self.bits,
        )

    def trains(self) -> bool:
        steps = self.finetune_steps
        return steps > 0 if steps is not None else self.finetune_epochs > 0


@register(KMeansConfig)
def quantize_kmeans(model: nn.Module, config: KMeansConfig, ctx: Context) -> nn.Module:
    """Cluster the chosen layers, swap in clustered modules, then fine-tune the centroids."""
    task = ctx.require_task("quantize.kmeans") if config.trains() else None
    layers = _chosen_layers(model, config)
    masks = masks_of(model)
    new: dict[str, ClusteredLinear | ClusteredConv] = {}
    for name, layer in layers.items():  # compute everything before changing the model
        pruned = _pruned_entries(name, layer, masks.get(f"{name}.weight"))
        bits = config.bits_for(name)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            new[name] = ClusteredConv.from_conv(layer, bits, pruned, config.init, ctx.seed)
        elif isinstance(layer, nn.Linear):
            new[name] = ClusteredLinear.from_linear(layer, bits, pruned, config.init, ctx.seed)
    errors = {n: _relative_error(layers[n], m) for n, m in new.items()}
    records: dict[str, Any] = {}
    with restored_on_error(model):
        for name, module in new.items():
            replace_module(model, name, module)
        forget_masks(model, set(new))
        if task is not None:
            before = task.evaluate(model)
            losses = fit(
                model,
                task,
                train_settings(config, config.finetune_steps, config.finetune_epochs or 1.0),
                ctx,
            )
            records = {
                "finetune_steps": len(losses),
                "final_train_loss": losses[-1],
                f"before_finetune_{task.primary_metric}": before[task.primary_metric],
            }
        if config.float16:
            for name, layer in new.items():
                _halve_floats(name, layer)
    if config.codec != "raw":
        for name in new:
            set_codec(model, f"{name}.indices", config.codec)
    ctx.record(
        clustered_layers=len(new),
        layer_bits={n: config.bits_for(n) for n in new},
        distinct_values={n: _distinct(m) for n, m in new.items()},
        weight_relative_error=errors,
        codec=config.codec,
        float16=config.float16,
        **records,
        note=SIMULATED_NOTE,
    )
    return model


def _halve_floats(name: str, layer: ClusteredLinear | ClusteredConv) -> None:
    """Codebook and bias to float16 parameters (`fit` trains them through fp32 copies)."""
    for tensor_name in ("codebook", "bias"):
        tensor = getattr(layer, tensor_name)
        if tensor is None:
            continue
        largest = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
        if largest > FLOAT16_MAX:
            raise ConfigError(
                f"quantize.kmeans: float16 cannot hold {name}.{tensor_name} (|value| up to "
                f"{largest:.3g} > {FLOAT16_MAX:,.0f}): leave float16 off"
            )
    layer.codebook = nn.Parameter(layer.codebook.detach().half())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach().half())


def _chosen_layers(model: nn.Module, config: KMeansConfig) -> dict[str, nn.Module]:
    chosen = select_modules(model, CLUSTERABLE, config.layers, config.exclude)
    # Exactly these types: a subclass may use its weight elsewhere (MultiheadAttention's
    # out_proj is read by the attention function, not called).
    layers = {n: m for n, m in chosen.items() if type(m) in CLUSTERABLE}
    if not layers:
        raise nothing_chosen(model, CLUSTERABLE, "quantize.kmeans", "Linear or Conv", "cluster")
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name, layer in layers.items():
        tied = [n for n in owners[id(layer.get_parameter("weight"))] if n != f"{name}.weight"]
        if tied:
            raise ConfigError(
                f"quantize.kmeans: {name}.weight is tied to {tied[0]}; exclude {name!r} "
                "(clustering one copy would untie them)"
            )
    return layers


def _pruned_entries(name: str, layer: nn.Module, mask: Mask | None) -> Tensor:
    weight = layer.get_parameter("weight").detach()
    if mask is None:
        return (weight == 0).cpu()  # a pruned model loaded from an artifact, or exact zeros
    if mask.fill is not None:
        raise ConfigError(
            f"quantize.kmeans: {name}.weight has frozen entries (prune mode 'freeze'); "
            f"exclude {name!r} or prune with mode 'zero'"
        )
    return (~mask.keep).cpu()


def _relative_error(layer: nn.Module, clustered: ClusteredLinear | ClusteredConv) -> float:
    weight = layer.get_parameter("weight").detach()
    shared = clustered.weight.detach()
    return float((shared - weight).norm() / weight.norm().clamp_min(1e-12))


def _distinct(module: ClusteredLinear | ClusteredConv) -> int:
    return int(torch.unique(module.weight.detach()).numel())
