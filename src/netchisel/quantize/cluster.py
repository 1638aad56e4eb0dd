"""`quantize.kmeans`: weight sharing by k-means (Deep Compression, Han et al., ICLR 2016).

Every chosen layer's weights are clustered into at most 2**bits shared values (a per-layer
codebook) and the layer keeps only the codebook and one small index per weight. k-means runs
on the weights alone, 1-D, starting from centroids spaced linearly over [min, max] (the
paper's best initialisation, section 3.2), so it is deterministic. Pruned weights stay zero
and do not take a centroid: index 0 is reserved for them and always reads 0.

Optional fine-tuning then trains the centroids through the task: the gradient of a centroid is
the sum of the gradients of the weights that share it (section 3.1, figure 3), which is exactly
what autograd gives for `codebook[indices]`.

The artifact stores the indices with the `huffman` codec (`int_codecs.py`) by default: Huffman
codes, plus the relative-index sparse layout when the layer was pruned. The forward pass
gathers `codebook[indices]` into a float weight (once, for inference) and runs the ordinary
kernel, so a clustered model is smaller on disk but not faster or smaller in memory, and the
stage records that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import netchisel.artifact.int_codecs  # noqa: F401  (registers the codecs indices are saved with)
from netchisel.artifact.store import set_codec
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import Mask, clear_masks, forget_masks, masks_of, set_mask
from netchisel.core.modules import nothing_chosen, replace_module, select_modules
from netchisel.core.registry import register
from netchisel.core.state import clone_state
from netchisel.core.train import TrainConfig, TrainSettings, check_training, fit

Init = Literal["linear", "density", "random"]
CLUSTERABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CACHE = "_netchisel_weight_cache"  # the `_netchisel_` prefix keeps it out of artifacts
SIMULATED_NOTE = (
    "k-means layers compute in float with the weight codebook[indices] (gathered once for "
    "inference): smaller on disk only, no speed-up and no memory saving at run time"
)

# -- k-means on one tensor (pure) -------------------------------------------------------------


def kmeans_1d(
    values: Tensor,
    k: int,
    init: Init = "linear",
    iterations: int = 300,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on a 1-D tensor: (sorted centroids [k], label of every value).

    In 1-D every cluster is an interval of the sorted values, so after one sort an iteration
    is a binary search of the k - 1 midpoints between centroids and a difference of prefix
    sums: O(k log n), whatever n. It stops when no boundary moves. A centroid that loses all
    its values stays where it was. Inits (Han et al. 2016, section 3.2): "linear" over
    [min, max], "density" at evenly spaced quantiles, "random" values drawn with `generator`.

    Example:
        >>> c, labels = kmeans_1d(torch.tensor([0.0, 0.1, 0.9, 1.0]), 2)
        >>> [round(v, 2) for v in c.tolist()], labels.tolist()
        ([0.05, 0.95], [0, 0, 1, 1])
    """
    x = values.detach().reshape(-1).double()
    if k < 1:
        raise ConfigError(f"k-means needs k >= 1, got {k}")
    if x.numel() == 0:
        return torch.zeros(k, dtype=values.dtype), torch.zeros(0, dtype=torch.int64)
    ordered = torch.sort(x).values
    prefix = torch.cat((x.new_zeros(1), torch.cumsum(ordered, 0)))
    centroids = _initial_centroids(x, k, init, generator)
    edges = torch.zeros(0, dtype=torch.int64)
    for _ in range(max(1, iterations)):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        # A value equal to a midpoint goes to the lower cluster, as `_assign` does.
        cut = torch.searchsorted(ordered, midpoints, right=True)
        new_edges = torch.cat((cut.new_zeros(1), cut, cut.new_full((1,), len(ordered))))
        if torch.equal(new_edges, edges):
            break
        edges = new_edges
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centroids = torch.sort(
            torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        ).values
    return centroids.to(values.dtype), _assign(x, centroids)


def _initial_centroids(x: Tensor, k: int, init: Init, generator: torch.Generator | None) -> Tensor:
    if init == "linear":
        return torch.linspace(float(x.min()), float(x.max()), k, dtype=x.dtype)
    if init == "density":
        return torch.quantile(x, torch.linspace(0.0, 1.0, k, dtype=x.dtype))
    if init == "random":
        picks = torch.randint(0, x.numel(), (k,), generator=generator)
        return torch.sort(x[picks]).values
    raise ConfigError(f"unknown k-means init {init!r} (linear, density, random)")


def _assign(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (centroids sorted ascending)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(x, midpoints)


def cluster_weight(
    weight: Tensor,
    bits: int,
    pruned: Tensor | None = None,
    init: Init = "linear",
    iterations: int = 300,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """(codebook [2**bits], uint8 indices in the weight's shape) for one weight tensor.

    Where `pruned` is True the weight is zero: it gets index 0 and codebook[0] == 0, and the
    other 2**bits - 1 centroids cluster the remaining weights. With no pruned entry all
    2**bits centroids are free. `codebook[indices]` is the shared weight.

    Example:
        >>> w = torch.tensor([[0.0, 0.5, -0.5, 0.25]])
        >>> codebook, idx = cluster_weight(w, 2, pruned=w == 0)
        >>> codebook.tolist(), idx.tolist()
        ([0.0, -0.5, 0.25, 0.5], [[0, 3, 1, 2]])
    """
    if not 1 <= bits <= 8:
        raise ConfigError(f"k-means bits={bits} is outside 1-8 (indices are uint8)")
    flat = weight.detach().reshape(-1)
    drop = torch.zeros_like(flat, dtype=torch.bool) if pruned is None else pruned.reshape(-1)
    reserve = bool(drop.any())
    k = 2**bits - int(reserve)
    generator = torch.Generator().manual_seed(seed)
    centroids, labels = kmeans_1d(
        flat[~drop], k, "linear" if k == 1 else init, iterations, generator
    )
    indices = torch.zeros(flat.shape, dtype=torch.uint8)
    indices[~drop] = (labels + int(reserve)).to(torch.uint8)
    zero = torch.zeros(int(reserve), dtype=centroids.dtype)
    codebook = torch.cat((zero, centroids)).to(weight.dtype)
    return codebook, indices.reshape(weight.shape)


def shared_weight(codebook: Tensor, indices: Tensor, zero_code: bool) -> Tensor:
    """`codebook[indices]`; with `zero_code`, index 0 reads 0 whatever codebook[0] holds.

    Gradients flow to the codebook summed over the weights that share each entry (the
    paper's centroid update); entry 0 of a zero-coded codebook gets none, so it stays 0.
    """
    table = torch.cat((codebook.new_zeros(1), codebook[1:])) if zero_code else codebook
    return table[indices.to(torch.int64)]


# -- modules ----------------------------------------------------------------------------------


class _Clustered(nn.Module):
    """What both clustered layers share: the codebook, the indices and the gathered weight."""

    simulated = True
    codebook: nn.Parameter
    indices: Tensor
    bias: nn.Parameter | None
    zero_code: bool

    def prepare_kernels(self) -> None:
        """Gather the inference weight now (otherwise on the first call without gradients)."""
        with torch.no_grad():
            self.weight  # noqa: B018  (the property caches it)

    def dequantized_weight(self) -> Tensor:
        """The weight values the layer computes with (for counts and comparisons)."""
        with torch.no_grad():
            return self.weight.detach()

    @property
    def weight(self) -> Tensor:
        """The shared weight `codebook[indices]`.

        While training (grad enabled and a trainable codebook) it is gathered at every call so
        gradients reach the centroids; for inference it is gathered once and cached until the
        codebook or the indices change, so the layer runs as fast as the float layer.
        """
        if torch.is_grad_enabled() and self.codebook.requires_grad:
            return shared_weight(self.codebook, self.indices, self.zero_code)
        key = (
            self.codebook.data_ptr(),
            self.codebook._version,
            self.indices.data_ptr(),
            self.indices._version,
            self.zero_code,
        )
        cached = self.__dict__.get(_CACHE)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, shared_weight(self.codebook, self.indices, self.zero_code))
            self.__dict__[_CACHE] = cached
        weight: Tensor = cached[1]
        return weight


class ClusteredLinear(_Clustered):
    """A Linear layer whose weight is `codebook[indices]` (k-means weight sharing).

    Example:
        >>> layer = ClusteredLinear.from_linear(nn.Linear(8, 4), bits=2)
        >>> len(layer.codebook), layer.indices.dtype, layer(torch.ones(3, 8)).shape
        (4, torch.uint8, torch.Size([3, 4]))
    """

    def __init__(
        self, in_features: int, out_features: int, bits: int = 5, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.zero_code = False
        self.codebook = nn.Parameter(torch.zeros(2**bits))
        self.register_buffer("indices", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 5,
        pruned: Tensor | None = None,
        init: Init = "linear",
        seed: int = 0,
    ) -> ClusteredLinear:
        """Cluster `linear`'s weight (see `cluster_weight`); `linear` is not changed."""
        codebook, indices = cluster_weight(linear.weight, bits, pruned, init, seed=seed)
        layer = cls(linear.in_features, linear.out_features, bits, linear.bias is not None)
        _fill(layer, linear, codebook, indices, pruned)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"codebook={len(self.codebook)}, zero_code={self.zero_code}, "
            f"bias={self.bias is not None}"
        )


class ClusteredConv(_Clustered):
    """A Conv1d/2d/3d layer whose weight is `codebook[indices]` (k-means weight sharing).

    Example:
        >>> layer = ClusteredConv.from_conv(nn.Conv2d(3, 4, 3, padding=1), bits=3)
        >>> layer(torch.ones(1, 3, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """

    def __init__(self, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bits: int = 5) -> None:
        super().__init__()
        self.dims = len(conv.kernel_size)
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.reversed_padding = tuple(conv._reversed_padding_repeated_twice)
        self.zero_code = False
        self.codebook = nn.Parameter(torch.zeros(2**bits))
        self.register_buffer("indices", torch.zeros(conv.weight.shape, dtype=torch.uint8))
        self.bias = None if conv.bias is None else nn.Parameter(torch.zeros(conv.out_channels))

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        bits: int = 5,
        pruned: Tensor | None = None,
        init: Init = "linear",
        seed: int = 0,
    ) -> ClusteredConv:
        """Cluster `conv`'s weight (see `cluster_weight`); `conv` is not changed."""
        codebook, indices = cluster_weight(conv.weight, bits, pruned, init, seed=seed)
        layer = cls(conv, bits)
        _fill(layer, conv, codebook, indices, pruned)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            padding = 0
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return conv(
            x, self.weight.to(x.dtype), bias, self.stride, padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        shape = tuple(self.indices.shape)
        return (
            f"weight={shape}, stride={self.stride}, padding={self.padding}, "
            f"codebook={len(self.codebook)}, zero_code={self.zero_code}"
        )


def _fill(
    layer: _Clustered,
    source: nn.Module,
    codebook: Tensor,
    indices: Tensor,
    pruned: Tensor | None,
) -> None:
    weight = source.get_parameter("weight")
    with torch.no_grad():
        layer.codebook.copy_(codebook)
        layer.indices.copy_(indices)
        bias = getattr(source, "bias", None)
        if layer.bias is not None and bias is not None:
            layer.bias.copy_(bias)
    layer.zero_code = bool(pruned is not None and pruned.any())
    layer.to(device=weight.device, dtype=weight.dtype)


CLUSTERED = (ClusteredLinear, ClusteredConv)

# -- the stage --------------------------------------------------------------------------------


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
    state = clone_state(model)
    old = {name: replace_module(model, name, module) for name, module in new.items()}
    forget_masks(model, set(new))
    records: dict[str, Any] = {}
    if task is not None:
        before = task.evaluate(model)
        try:
            losses = fit(model, task, _settings(config), ctx)
        except BaseException:
            _undo(model, old, state, masks)
            raise
        records = {
            "finetune_steps": len(losses),
            "final_train_loss": losses[-1],
            f"before_finetune_{task.primary_metric}": before[task.primary_metric],
        }
    if config.float16:
        try:
            for name, layer in new.items():
                _halve_floats(name, layer)
        except ConfigError:
            _undo(model, old, state, masks)
            raise
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


def _settings(config: KMeansConfig) -> TrainSettings:
    return TrainSettings(
        epochs=config.finetune_epochs or 1.0,
        steps=config.finetune_steps,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        schedule=config.lr_schedule,
        batch_size=config.batch_size,
    )


def _undo(
    model: nn.Module, old: dict[str, nn.Module], state: dict[str, Tensor], masks: dict[str, Mask]
) -> None:
    """Put the original layers, weights and masks back (fine-tuning failed midway)."""
    for name, module in old.items():
        replace_module(model, name, module)
    with torch.no_grad():
        model.load_state_dict(state)
    clear_masks(model)
    for name, mask in masks.items():
        set_mask(model, name, mask.keep, mask.fill)
