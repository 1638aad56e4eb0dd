"""`prune.structured`: remove channels, attention heads or whole residual blocks for real.

The result is an ordinary, smaller `nn.Module` (narrower Conv/Linear/BatchNorm layers, fewer
heads, `nn.Identity` where a block was), so its MACs and latency really drop and the artifact
stores it as `patch` (and `replace`) edits with no pickle.

Why Torch-Pruning, and what is ours: removing one conv filter also removes the BatchNorm
channel after it, the input channel of every layer that reads it and, through residual adds,
the channels of every layer joined to it; after a flatten it removes a block of Linear inputs,
and in attention the q/k/v rows and the o_proj columns of a head. Torch-Pruning's dependency
graph (`tp.DependencyGraph`) traces these couplings through autograd and slices every coupled
tensor consistently; rewriting it would be thousands of lines of tracing rules. Everything
Torch-Pruning leaves to its caller is here: our importance criteria (`prune/importance.py`,
plus `bn_scale`) reduced to one score per channel by a small adapter to its `Importance`
interface, our selection rules (a ratio per group or per layer regex, or one global ranking
with a floor per group), a MAC target met by measuring candidates with `count_flops`,
attention heads (the module's head count kept in step), depth (blocks replaced by
`nn.Identity`), and safety: every change happens on a copy that must run the example inputs
to the same output shapes before it replaces the model, so a failure leaves the model as it
was and names the group that broke it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError, first_line
from netchisel.core.masks import masks_of
from netchisel.core.modules import replace_module, sample_of
from netchisel.core.registry import register
from netchisel.core.state import seeded
from netchisel.measure.flops import count_flops
from netchisel.prune.importance import CRITERIA, NEEDS, LayerStats, collect_stats, get_criterion
from netchisel.prune.select import keep_global

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers whose output channels can be chosen for pruning."""
SCORED_TYPES: tuple[type[nn.Module], ...] = (*LAYER_TYPES, nn.Embedding)
"""Layers whose weights score the channels of a group (an Embedding's columns are channels)."""
HEAD_ATTRS = ("n_head", "num_heads", "n_heads", "num_attention_heads")
"""An attention module is one with an integer attribute of one of these names."""
IMPORTANCES = (*CRITERIA, "bn_scale")
_SEARCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StructuredConfig(StageConfig):
    """What to remove (channels, heads or blocks), how much, and by which criterion.

    - `granularity`: "channels" (conv filters and Linear neurons, with everything coupled to
      them), "heads" (whole attention heads of modules with an `n_head`/`num_heads` attribute
      and separate q/k/v/o Linear projections) or "blocks" (whole blocks replaced by
      `nn.Identity`; only blocks whose output has the shape of their input).
    - `ratio`: fraction removed in [0, 1): of each group's channels (local; at least this
      fraction, so a group of n keeps floor(n * (1 - ratio)), never fewer than 1), of all
      channels (global), of each attention module's heads, or of the candidate blocks.
    - `target_macs_ratio`: instead of `ratio`, prune until the MACs of one forward are at most
      this fraction of the original's (0.5 = at least 2x fewer), measured with `count_flops`;
      the smallest ratio that gets there is searched and recorded.
    - `importance`: l1, l2, taylor, random, wanda (see `prune/importance.py`; summed over every
      weight slice a channel owns) or bn_scale (|gamma| of the BatchNorms in the group).
    - `scope`: "local" (the ratio in every group; `per_layer` overrides it by regex) or "global"
      (one ranking of mean-normalised scores across groups; each keeps at least `min_keep`).
    - `layers` / `exclude`: regexes (full match) over Conv/Linear names (channels), attention
      module names (heads) or module names (blocks; default: every shape-keeping child of a
      Sequential/ModuleList that has weights). A coupled group is pruned only when every layer
      whose output it changes is chosen, so excluding one layer protects its whole group.
    - `round_to`: kept channel counts are rounded up to a multiple of this (kernels often run
      faster on multiples of 8).
    - `calibration_samples`: training samples the taylor and wanda criteria look at.
    - `input_shape`: the example input to trace when the stage has no task (float zeros).
    - `mode`: only "remove". The other pruning stages can instead freeze what they prune
      (`mode: freeze`); here that is refused with one error: removing channels is what makes
      the model smaller and faster, while a kept-but-frozen channel is still computed and
      stored, and freezing it would mean freezing every tensor coupled to it as well.

    Example:
        >>> StructuredConfig(target_macs_ratio=0.5).granularity
        'channels'
    """

    NAME: ClassVar[str] = "prune.structured"

    ratio: float = 0.5
    target_macs_ratio: float | None = None
    granularity: Literal["channels", "heads", "blocks"] = "channels"
    importance: str = "l1"
    scope: Literal["local", "global"] = "local"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    min_keep: float = 0.1
    round_to: int = 1
    calibration_samples: int = 128
    input_shape: tuple[int, ...] | None = None
    mode: str = "remove"

    def validate(self) -> None:
        if self.mode != "remove":
            raise ConfigError(
                f"{STAGE}.mode: {self.mode!r} is not supported, only 'remove': structured "
                "pruning removes channels, which is what makes the model smaller and faster; a "
                "channel kept but frozen is still computed and stored (no MAC, size or latency "
                "change). To freeze pruned weights in place use prune.unstructured, "
                "prune.iterative or prune.gradual with mode: freeze"
            )
        ratios = [("ratio", self.ratio)]
        ratios += [(f"per_layer[{k!r}]", v) for k, v in self.per_layer.items()]
        for name, value in ratios:
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"{STAGE}.{name}: {value} is not in [0, 1) (it is the fraction removed)"
                )
        target = self.target_macs_ratio
        if target is not None and not 0.0 < target <= 1.0:
            raise ConfigError(
                f"{STAGE}.target_macs_ratio: {target} is not in (0, 1] (MACs after / before)"
            )
        if target is not None and self.ratio != 0.5:
            raise ConfigError(
                f"{STAGE}.ratio: {self.ratio} and a target_macs_ratio (which searches the ratio) "
                "exclude each other: drop one of them"
            )
        if target is not None and self.per_layer:
            raise ConfigError(
                f"{STAGE}.per_layer: fixed per-layer ratios and a target_macs_ratio (which "
                "searches one ratio) exclude each other: drop one of them"
            )
        if not 0.0 < self.min_keep <= 1.0:
            raise ConfigError(f"{STAGE}.min_keep: {self.min_keep} is not in (0, 1]")
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"{STAGE}.importance: unknown {self.importance!r} (known: {', '.join(IMPORTANCES)})"
            )
        if self.importance == "bn_scale" and self.granularity == "heads":
            raise ConfigError(
                f"{STAGE}.importance: bn_scale scores the BatchNorm after a conv; attention "
                "heads have none: use l1, l2, taylor, random or wanda"
            )
        if self.per_layer and self.scope == "global":
            raise ConfigError(
                f"{STAGE}.per_layer: per-layer ratios are for local scope; global scope ranks "
                "all groups together (use min_keep to protect small layers)"
            )
        if self.per_layer and self.granularity == "blocks":
            raise ConfigError(f"{STAGE}.per_layer: blocks are removed whole; drop per_layer")
        if self.round_to < 1:
            raise ConfigError(f"{STAGE}.round_to: must be >= 1, got {self.round_to}")
        check_calibration_samples(STAGE, self.calibration_samples)
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(
                f"{STAGE}.input_shape: {list(self.input_shape)} is not a shape such as "
                "[1, 3, 32, 32]"
            )
        patterns = [("layers", p) for p in self.layers or ()]
        patterns += [("exclude", p) for p in self.exclude]
        patterns += [("per_layer", p) for p in self.per_layer]
        for where, pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{STAGE}.{where}: {pattern!r} is not a valid regex ({e})"
                ) from None


STAGE = StructuredConfig.NAME


# -- importance ---------------------------------------------------------------------------


class CriterionImportance(tp.importance.Importance):  # type: ignore[misc]
    """One of our criteria as a Torch-Pruning importance: dependency group -> score per channel.

    A channel's score is the sum of the criterion's element scores over every weight slice the
    group removes with it: the output rows of Conv/Linear layers (columns of an Embedding) and
    the input columns of the layers that read it. `bn_scale` is instead the sum of |gamma| of
    the group's BatchNorms (network slimming, Liu et al. 2017). Because it follows
    Torch-Pruning's interface, it also plugs into `tp.pruner.MetaPruner`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
        >>> dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 1, 8, 8))
        >>> group = dg.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
        >>> CriterionImportance("l1")(group).shape
        torch.Size([4])
    """

    def __init__(self, importance: str, stats: dict[nn.Module, LayerStats] | None = None) -> None:
        if importance not in IMPORTANCES:
            raise ConfigError(
                f"unknown importance {importance!r} (known: {', '.join(IMPORTANCES)})"
            )
        self.importance = importance
        self.stats = stats or {}

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        """Scores for the root channels of `group` (None when no layer in it has weights)."""
        dg = group._DG
        channels = len(group[0].idxs)
        total = torch.zeros(channels, dtype=torch.float64)
        found = False
        for item in group:
            roots = item.root_idxs
            if not item.idxs or roots is None or any(r is None for r in roots):
                continue
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            scores = self._slice_scores(item.dep.target.module, item.idxs, out)
            if scores is None:
                continue
            total.scatter_add_(0, torch.tensor(roots), scores.double().cpu())
            found = True
        return total.float() if found else None

    def _slice_scores(self, layer: Any, idxs: list[int], out: bool) -> Tensor | None:
        if self.importance == "bn_scale":
            if out and isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
                return layer.weight.detach().abs()[idxs]
            return None
        if not isinstance(layer, SCORED_TYPES):
            return None
        weight = layer.get_parameter("weight")
        element = get_criterion(self.importance)(weight, self.stats.get(layer, LayerStats()))
        if isinstance(layer, nn.Embedding):
            dim = 1  # Torch-Pruning prunes an Embedding's features, its columns
        elif isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
            dim = 1 if out else 0
        else:
            dim = 0 if out else 1
        if not out and isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            return None  # a depthwise conv's channels are counted once, by its output rows
        per_channel = element.movedim(dim, 0).reshape(element.shape[dim], -1).sum(dim=1)
        return per_channel[idxs]


# -- units: what one keep-decision covers -------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """Coupled channels (one dependency group), one attention module's heads, or one block."""

    name: str  # the group's root layer, the attention module, or the block
    root: str  # the layer whose output channels Torch-Pruning is asked to prune
    members: tuple[str, ...]  # layers whose output width the unit sets (for regexes, records)
    scores: Tensor  # one per channel / head; one for a block
    head_attr: str | None = None
    head_dim: int = 1


Plan = dict[str, Tensor]  # unit name -> keep mask over its channels / heads / the block


def _match(names: list[str], patterns: tuple[str, ...], where: str, what: str) -> set[str]:
    """Names that fully match any pattern; a pattern that matches none is an error."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if re.fullmatch(pattern, n)}
        if not hits:
            raise ConfigError(
                f"{STAGE}.{where}: pattern {pattern!r} matches no {what} (candidates: "
                f"{sample_of(names) or 'none'})"
            )
        chosen |= hits
    return chosen


def _chosen(names: list[str], config: StructuredConfig, what: str) -> set[str]:
    include = set(names) if config.layers is None else _match(names, config.layers, "layers", what)
    return include - _match(names, config.exclude, "exclude", what)


def _ratio_for(unit: _Unit, ratio: float, config: StructuredConfig) -> float:
    for pattern, value in config.per_layer.items():
        if any(re.fullmatch(pattern, m) for m in unit.members):
            return value
    return ratio


def _attention_modules(model: nn.Module) -> dict[str, str]:
    """Attention modules (name -> the attribute holding their head count)."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        for attr in HEAD_ATTRS:
            value = vars(module).get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found[name] = attr
                break
    return found


def _inside(name: str, parent: str) -> bool:
    return parent == "" or name.startswith(parent + ".")


def _owns(attention: str, outs: list[str], ins: list[str]) -> bool:
    """Whether a group is the heads of `attention`: its q/k/v (the group's outputs) are inside
    it, and the projection that reads them is inside it too (nanoGPT, timm) or beside it,
    under the same parent (Hugging Face BERT: `attention.self` and `attention.output.dense`).
    """
    parent = attention.rpartition(".")[0]
    return all(_inside(o, attention) for o in outs) and any(
        _inside(i, attention) or _inside(i, parent) for i in ins
    )


def _layer_units(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    config: StructuredConfig,
    stats: dict[nn.Module, LayerStats],
) -> tuple[list[_Unit], dict[str, str]]:
    """Channel groups (or head groups) of `model`, scored; and the groups skipped, with why."""
    heads = config.granularity == "heads"
    attention = _attention_modules(model)
    if heads:
        if not attention:
            raise ConfigError(
                f"{STAGE}: granularity 'heads' needs attention modules with an integer "
                f"{' / '.join(HEAD_ATTRS)} attribute; the model has none"
            )
        chosen = _chosen(sorted(attention), config, "attention module")
        _match(sorted(attention), tuple(config.per_layer), "per_layer", "attention module")
    else:
        names = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        chosen = _chosen(names, config, "Conv/Linear layer")
        _match(names, tuple(config.per_layer), "per_layer", "Conv/Linear layer")
    dg = _graph(model, inputs)
    names_of = {m: n for n, m in model.named_modules()}
    importance = CriterionImportance(config.importance, stats)
    units: list[_Unit] = []
    skipped: dict[str, str] = {}
    for group in dg.get_all_groups(root_module_types=list(LAYER_TYPES)):
        root = names_of[group[0].dep.target.module]
        outs: list[str] = []
        ins: list[str] = []
        for item in group:
            layer = item.dep.target.module
            if isinstance(layer, LAYER_TYPES) and layer in names_of:
                is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
                (outs if is_out else ins).append(names_of[layer])
        owner = next((a for a in attention if _owns(a, outs, ins)), None)
        if heads and owner is None:
            continue
        reason = _why_not(model, dg, group, outs, owner, chosen, heads)
        relevant = owner in chosen if heads else any(o in chosen for o in outs)
        if reason is not None:
            if relevant:
                skipped[owner if heads and owner else root] = reason
            continue
        scores = importance(group)
        if scores is None:  # only bn_scale can find nothing to score
            raise ConfigError(
                f"{STAGE}: bn_scale needs a BatchNorm after each pruned layer; the group of "
                f"{root} ({', '.join(outs)}) has none: exclude it or use importance l1"
            )
        if not heads:
            units.append(_Unit(root, root, tuple(outs), scores))
            continue
        assert owner is not None
        attr = attention[owner]
        n_head = int(getattr(model.get_submodule(owner), attr))
        if len(scores) % n_head:
            skipped[owner] = f"width {len(scores)} is not a multiple of {attr}={n_head}"
            continue
        head_dim = len(scores) // n_head
        per_head = scores.reshape(n_head, head_dim).sum(dim=1)
        units.append(_Unit(owner, root, (owner, *outs), per_head, attr, head_dim))
    if heads:
        found = {u.name for u in units} | set(skipped)
        for name in sorted(chosen - found):
            skipped[name] = "no q/k/v Linear projections whose heads one group holds"
    else:
        seen = {names_of[m] for m in dg.module2node if isinstance(m, nn.Module) and m in names_of}
        for name in sorted(chosen - seen):
            whole = next((s for s in seen if s and _inside(name, s)), None)
            skipped[name] = (
                f"part of {whole} ({type(model.get_submodule(whole)).__name__}), which the "
                "dependency graph treats as one layer"
                if whole is not None
                else "the dependency graph does not reach it (it runs without autograd, under "
                "no_grad or after .detach(), or not at all)"
            )
    return units, skipped


def _why_not(
    model: nn.Module,
    dg: Any,
    group: Any,
    outs: list[str],
    owner: str | None,
    chosen: set[str],
    heads: bool,
) -> str | None:
    """Why a dependency group may not be pruned, or None when it may."""
    for item in group:
        node = item.dep.target
        if not node.outputs and dg.is_out_channel_pruning_fn(item.dep.handler):
            return "its channels reach the model's output or an op Torch-Pruning cannot follow"
    for name in outs:
        layer = model.get_submodule(name)
        if (
            isinstance(layer, nn.modules.conv._ConvNd)
            and layer.groups > 1
            and not layer.groups == layer.in_channels == layer.out_channels
        ):
            return f"{name} is a grouped convolution (groups={layer.groups})"
    if heads:
        return None if owner in chosen else f"attention module {owner} is not chosen"
    if owner is not None:
        return f"attention heads of {owner}: use granularity 'heads'"
    if not outs:
        return "no Conv/Linear layer produces its channels"
    others = [o for o in outs if o not in chosen]
    if others:
        return f"coupled with {others[0]}, which is not chosen (a group is pruned whole)"
    return None


def _block_units(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    config: StructuredConfig,
    stats: dict[nn.Module, LayerStats],
) -> list[_Unit]:
    """Blocks that can become `nn.Identity` (output shape = input shape), scored."""
    all_names = [n for n, _ in model.named_modules() if n]
    if config.layers is None:
        pool = [n for n in all_names if _looks_like_block(model, n)]
    else:
        pool = sorted(_match(all_names, config.layers, "layers", "module"))
    pool = [n for n in pool if n not in _match(all_names, config.exclude, "exclude", "module")]
    keeps = _shape_keeping(model, inputs, pool)
    if config.layers is not None:
        for name in pool:
            if not keeps[name]:
                raise ConfigError(
                    f"{STAGE}.layers: block {name} changes the shape of its input, so it "
                    "cannot be replaced by nn.Identity: exclude it"
                )
    blocks = [n for n in pool if keeps[n]]
    if config.layers is None:  # the finest blocks: drop any that contains another
        blocks = [b for b in blocks if not any(o != b and _inside(o, b) for o in blocks)]
    if not blocks:
        raise ConfigError(
            f"{STAGE}: no block keeps the shape of its input, so none can be replaced by "
            "nn.Identity; name blocks with layers=[...]"
        )
    units = []
    for name in blocks:
        block = model.get_submodule(name)
        units.append(_Unit(name, name, (name,), _block_score(name, block, config, stats)))
    return units


def _looks_like_block(model: nn.Module, name: str) -> bool:
    parent_name, _, _ = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    module = model.get_submodule(name)
    return (
        isinstance(parent, (nn.Sequential, nn.ModuleList))
        and len(module._modules) > 0
        and any(True for _ in module.parameters())
    )


def _shape_keeping(
    model: nn.Module, inputs: tuple[Tensor, ...], names: list[str]
) -> dict[str, bool]:
    """Whether each named module, on every call, returns one tensor shaped like its input."""
    keeps = dict.fromkeys(names, True)
    called: set[str] = set()

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            called.add(name)
            same = (
                len(args) == 1
                and isinstance(args[0], Tensor)
                and isinstance(output, Tensor)
                and args[0].shape == output.shape
            )
            keeps[name] = keeps[name] and same

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        _run(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {n: keeps[n] and n in called for n in names}


def _block_score(
    name: str, block: nn.Module, config: StructuredConfig, stats: dict[nn.Module, LayerStats]
) -> Tensor:
    """Mean element score over the block's weights (bn_scale: mean |gamma| of its BatchNorms)."""
    if config.importance == "bn_scale":
        gammas = [
            m.weight.detach().abs()
            for m in block.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        ]
        if not gammas:
            raise ConfigError(
                f"{STAGE}: bn_scale scores blocks by their BatchNorms; block {name} has none: "
                "exclude it or use importance l1"
            )
        return torch.cat(gammas).mean().reshape(1)
    criterion = get_criterion(config.importance)
    total, count = 0.0, 0
    for layer in block.modules():
        if isinstance(layer, SCORED_TYPES):
            weight = layer.get_parameter("weight")
            total += float(criterion(weight, stats.get(layer, LayerStats())).double().sum())
            count += weight.numel()
    return torch.tensor([total / max(count, 1)])


# -- choosing what to keep (pure) ---------------------------------------------------------


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """How many of `size` channels (or heads) a local ratio keeps: at least `ratio` removed.

    floor(size * (1 - ratio)), at least 1, then rounded up to a multiple of `round_to` (never
    above `size`). Torch-Pruning's MetaPruner keeps the same count.

    Example:
        >>> kept_count(64, 0.3), kept_count(64, 0.3, round_to=8), kept_count(3, 0.9)
        (44, 48, 1)
    """
    keep = max(1, math.floor(size * (1.0 - ratio) + 1e-9))
    return min(size, math.ceil(keep / round_to) * round_to)


def _top(scores: Tensor, k: int) -> Tensor:
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return keep


def _choose_plan(units: list[_Unit], ratio: float, config: StructuredConfig) -> Plan:
    """The keep mask of every unit at `ratio` (scope, per_layer, min_keep, round_to applied)."""
    if config.granularity == "blocks":
        scores = torch.cat([u.scores for u in units])
        keep = _top(scores, len(units) - round(ratio * len(units)))
        return {u.name: keep[i : i + 1] for i, u in enumerate(units)}
    round_to = config.round_to if config.granularity == "channels" else 1
    if config.scope == "local":
        return {
            u.name: _top(
                u.scores, kept_count(len(u.scores), _ratio_for(u, ratio, config), round_to)
            )
            for u in units
        }
    # Raw sums grow with a layer's fan-in, so each group is ranked by its own mean first.
    normalised = {u.name: u.scores / u.scores.mean().clamp_min(1e-12) for u in units}
    total = sum(len(u.scores) for u in units)
    floor = sum(min(len(u.scores), math.ceil(config.min_keep * len(u.scores))) for u in units)
    if total - round(ratio * total) < floor:
        raise ConfigError(
            f"{STAGE}: ratio {ratio} with min_keep {config.min_keep} is impossible: every group "
            f"keeping min_keep already keeps {floor} of {total}; lower min_keep or ratio"
        )
    kept = keep_global(normalised, ratio, config.min_keep)
    return {
        u.name: _top(normalised[u.name], kept_count(int(kept[u.name].sum()), 0.0, round_to))
        if round_to > 1
        else kept[u.name]
        for u in units
    }


def _max_ratio(units: list[_Unit], config: StructuredConfig) -> float:
    """The largest ratio the scope allows (what the MAC search may go up to)."""
    if config.granularity == "blocks" or config.scope == "local":
        return 1.0 - 1e-9
    total = sum(len(u.scores) for u in units)
    floor = sum(min(len(u.scores), math.ceil(config.min_keep * len(u.scores))) for u in units)
    return (total - floor) / total


# -- surgery ------------------------------------------------------------------------------


def _run(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """One forward in eval mode without grad (BatchNorm statistics untouched); modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(*inputs)
    finally:
        for module, mode in modes:
            module.training = mode


def _graph(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """Torch-Pruning's dependency graph of `model`, or a ModelError naming where tracing failed.

    The layer named is the innermost one still running when the forward raised; Torch-Pruning's
    own hooks are removed if it fails (it leaves them on the model otherwise).
    """
    running: list[str] = []
    done: list[str] = []
    before = {m: set(m._forward_hooks) for m in model.modules()}
    handles = []
    for n, m in model.named_modules():
        if n:
            handles.append(m.register_forward_pre_hook(lambda *_, name=n: running.append(name)))
            handles.append(m.register_forward_hook(lambda *_, name=n: done.append(running.pop())))
    finished: list[bool] = []
    handles.append(model.register_forward_hook(lambda *_: finished.append(True)))
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=lambda m, x: m(*x), verbose=False
            )
    except Exception as e:
        for module, keys in before.items():  # Torch-Pruning's hooks, left behind by the raise
            for key in set(module._forward_hooks) - keys:
                del module._forward_hooks[key]
        if finished:
            where = "reading the autograd graph of its outputs"
            fix = "wrap the model so that it returns only tensors"
        else:
            if running:
                where = f"in layer {running[-1]}"
            elif done:
                where = f"in the model's own forward, after layer {done[-1]}"
            else:
                where = "before its first layer"
            fix = "check that the model runs on the example inputs"
        raise ModelError(
            f"{STAGE}: Torch-Pruning cannot trace the model (failed {where}: "
            f"{type(e).__name__}: {first_line(e)}); {fix}, or prune it with "
            "prune.unstructured, which needs no graph"
        ) from e
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad (tracing follows autograd); flags and modes restored."""
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grads.get(n, True))
        for n, m in model.named_modules():
            if n in modes:
                m.training = modes[n]


def _apply(
    model: nn.Module, inputs: tuple[Tensor, ...], units: list[_Unit], plan: Plan, blocks: bool
) -> None:
    """Prune `model` in place to `plan` (no checks; `_build` checks)."""
    if blocks:
        for unit in units:
            if not bool(plan[unit.name].all()):
                replace_module(model, unit.name, nn.Identity())
        return
    with _traceable(model):
        dg = _graph(model, inputs)
        for unit in units:
            keep = plan[unit.name]
            if bool(keep.all()):
                continue
            dropped = (~keep).nonzero().flatten().tolist()
            idxs = [h * unit.head_dim + j for h in dropped for j in range(unit.head_dim)]
            root = model.get_submodule(unit.root)
            prune_out = dg.get_pruner_of_module(root).prune_out_channels
            dg.get_pruning_group(root, prune_out, idxs).prune()
            if unit.head_attr is not None:
                attention = model.get_submodule(unit.name)
                setattr(attention, unit.head_attr, int(keep.sum()))
                if isinstance(vars(attention).get("all_head_size"), int):  # Hugging Face's
                    setattr(attention, "all_head_size", int(keep.sum()) * unit.head_dim)  # noqa: B010


def _shapes(output: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_flatten(output)[0] if isinstance(t, Tensor)]


def _build(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    units: list[_Unit],
    plan: Plan,
    blocks: bool,
    expected: list[tuple[int, ...]],
) -> nn.Module:
    """A pruned copy of `model` that runs the inputs to the original output shapes.

    When it does not, each pruned unit is tried alone to name the one that breaks the model.
    """
    pruned = copy.deepcopy(model)
    try:
        _apply(pruned, inputs, units, plan, blocks)
        got = _shapes(_run(pruned, inputs))
        if got != expected:
            raise ModelError(f"output shapes {got} differ from the original {expected}")
        return pruned
    except ModelError as e:
        if str(e).startswith(STAGE):
            raise
        error: Exception = e
    except Exception as e:
        error = e
    for unit in units:
        if bool(plan[unit.name].all()):
            continue
        alone = {
            u.name: plan[u.name] if u is unit else torch.ones_like(plan[u.name]) for u in units
        }
        trial = copy.deepcopy(model)
        try:
            _apply(trial, inputs, units, alone, blocks)
            if _shapes(_run(trial, inputs)) == expected:
                continue
        except Exception as e:
            error = e
        what = "removing block" if blocks else "pruning the group of"
        raise ModelError(
            f"{STAGE}: {what} {unit.name} ({', '.join(unit.members)}) breaks the model's forward "
            f"pass ({type(error).__name__}: {error}); the model uses its width where the "
            f"dependency graph cannot see (a fixed reshape or size attribute): exclude it, "
            f"e.g. exclude=[{unit.members[-1]!r}]"
        ) from error
    raise ModelError(
        f"{STAGE}: the pruned model no longer runs ({type(error).__name__}: {error}); "
        "exclude the layers involved or lower the ratio"
    ) from error


def _adopt(model: nn.Module, pruned: nn.Module) -> None:
    """Make `model` (the caller's object) the pruned model, in one step that cannot fail."""
    state = dict(pruned.__dict__)
    model.__dict__.clear()
    model.__dict__.update(state)


# -- the stage ----------------------------------------------------------------------------


def _example_inputs(model: nn.Module, config: StructuredConfig, ctx: Context) -> tuple[Tensor, ...]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if ctx.task is not None:
        return tuple(t.to(device) for t in ctx.task.example_inputs(batch_size=1))
    if config.input_shape is not None:
        return (torch.zeros(config.input_shape, device=device),)
    raise ConfigError(
        f"{STAGE}: needs example inputs to trace the model: give the stage a task, or set "
        "input_shape (e.g. [1, 3, 32, 32])"
    )


def _score_units(
    model: nn.Module, inputs: tuple[Tensor, ...], config: StructuredConfig, ctx: Context
) -> tuple[list[_Unit], dict[str, str]]:
    probe = copy.deepcopy(model)  # tracing and gradients touch the model; scores do not need it
    layers = {n: m for n, m in probe.named_modules() if isinstance(m, SCORED_TYPES)}
    need = NEEDS.get(config.importance)
    by_name = collect_stats(probe, layers, ctx.task, need, config.calibration_samples)
    stats = {layers[n]: s for n, s in by_name.items()}
    with seeded(ctx.seed), _traceable(probe):  # seeded: the random criterion
        if config.granularity == "blocks":
            return _block_units(probe, inputs, config, stats), {}
        return _layer_units(probe, inputs, config, stats)


def channel_groups(
    model: nn.Module, inputs: tuple[Tensor, ...], config: StructuredConfig | None = None
) -> dict[str, tuple[str, ...]]:
    """The prunable channel groups: root layer -> the layers whose output width it sets.

    One keep-decision covers a whole group, so a per-layer policy has one value per root;
    `per_layer: {re.escape(root): ratio}` sets it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> channel_groups(net, (torch.zeros(1, 1, 8, 8),))
        {'0': ('0',), '2': ('2',)}
    """
    config = config or StructuredConfig()
    units, _ = _score_units(model, inputs, config, Context(task=None, quiet=True))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return {u.root: u.members for u in sorted(units, key=lambda u: order[u.root])}


def _search(
    units: list[_Unit],
    config: StructuredConfig,
    macs_of: Callable[[Plan], int],
    base: int,
    ctx: Context,
) -> tuple[float, int]:
    """The smallest ratio whose plan has MACs <= target * base, by bisection over the ratio.

    MACs never grow with the ratio, and the plan is piecewise constant in it, so only ratios
    that give a new plan are measured. Returns the ratio and the number measured.
    """
    assert config.target_macs_ratio is not None
    limit = config.target_macs_ratio * base
    if base <= limit:
        return 0.0, 0
    cache: dict[tuple[tuple[str, tuple[bool, ...]], ...], int] = {}

    def measure(ratio: float) -> int:
        plan = _choose_plan(units, ratio, config)
        key = tuple((n, tuple(bool(b) for b in k.tolist())) for n, k in sorted(plan.items()))
        if key not in cache:
            cache[key] = macs_of(plan)
        return cache[key]

    lo, hi = 0.0, _max_ratio(units, config)
    steps = 1 + math.ceil(math.log2(hi / _SEARCH_TOLERANCE))
    with ctx.progress("searching the ratio for the MAC target", total=steps) as advance:
        reached = measure(hi)
        advance(1)
        if reached > limit:
            raise ConfigError(
                f"{STAGE}.target_macs_ratio: {config.target_macs_ratio} is out of reach: pruning "
                f"as far as allowed leaves {reached / base:.3f} of the MACs; choose more layers, "
                "lower min_keep or raise the target"
            )
        while hi - lo > _SEARCH_TOLERANCE:
            mid = (lo + hi) / 2
            if measure(mid) <= limit:
                hi = mid
            else:
                lo = mid
            advance(1)
    return hi, len(cache)


def _widths(model: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


@register(StructuredConfig)
def prune_structured(model: nn.Module, config: StructuredConfig, ctx: Context) -> nn.Module:
    """Remove the least important channels, heads or blocks, so the model really shrinks.

    Works on a copy: scores every unit, chooses what to keep (at `ratio`, or at the smallest
    ratio that meets `target_macs_ratio`), lets Torch-Pruning cut the coupled tensors, checks
    the copy still runs the example inputs to the same output shapes, and only then makes
    `model` the pruned one (its submodules are new objects: hold the model, not its
    children). Records MACs before/after (one example, exact), the ratio, channels kept per
    layer, heads kept per attention module, blocks removed and groups left alone.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        >>> ctx = Context(task=None, quiet=True)
        >>> _ = prune_structured(net, StructuredConfig(ratio=0.5, input_shape=(1, 3, 8, 8)), ctx)
        >>> net[0].out_channels, net[5].in_features, ctx.records["macs_after"]
        (4, 4, 3896)
    """
    if masks_of(model):
        raise ConfigError(
            f"{STAGE}: the model carries masks of {len(masks_of(model))} tensors from an "
            "earlier stage; run structured pruning before unstructured pruning"
        )
    inputs = _example_inputs(model, config, ctx)
    try:
        expected = _shapes(_run(model, inputs))
    except Exception as e:
        shapes = [list(t.shape) for t in inputs]
        raise ConfigError(
            f"{STAGE}: the model does not run on the example inputs of shape {shapes} "
            f"({type(e).__name__}: {first_line(e)}); fix the task or input_shape"
        ) from e
    base = count_flops(model, inputs).macs
    units, skipped = _score_units(model, inputs, config, ctx)
    if not units:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:4])
        raise ConfigError(
            f"{STAGE}: nothing to prune among the chosen layers ({reasons or 'none found'})"
        )
    blocks = config.granularity == "blocks"

    def macs_of(plan: Plan) -> int:
        return count_flops(_build(model, inputs, units, plan, blocks, expected), inputs).macs

    ratio, measured = config.ratio, 0
    if config.target_macs_ratio is not None:
        ratio, measured = _search(units, config, macs_of, base, ctx)
    plan = _choose_plan(units, ratio, config)
    pruned = _build(model, inputs, units, plan, blocks, expected)
    after = count_flops(pruned, inputs).macs
    before_w, after_w = _widths(model), _widths(pruned)
    record: dict[str, Any] = {
        "granularity": config.granularity,
        "ratio": ratio,
        "macs_before": base,
        "macs_after": after,
        "macs_ratio": after / base if base else 1.0,
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "channels": {
            n: [w, after_w[n]] for n, w in before_w.items() if n in after_w and after_w[n] != w
        },
        "skipped": skipped,
        "search_measurements": measured,
    }
    if config.granularity == "heads":
        record["heads"] = {u.name: [len(u.scores), int(plan[u.name].sum())] for u in units}
    if blocks:
        record["removed_blocks"] = [u.name for u in units if not bool(plan[u.name].all())]
    ctx.record(**record)
    _adopt(model, pruned)
    return model
