"""Units: what one keep-decision covers, found and scored.

A unit is one dependency group of coupled channels (its root layer and every layer whose
output width it sets), one attention module's heads, or one block that can become
`nn.Identity`. Groups that may not be pruned (their channels reach the output, a grouped conv,
a layer not chosen) are reported with why, never silently dropped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.modules import sample_of
from netchisel.core.state import seeded
from netchisel.prune.importance import NEEDS, LayerStats, collect_stats
from netchisel.prune.structured.config import STAGE, StructuredConfig
from netchisel.prune.structured.graph import LAYER_TYPES, dependency_graph, run_eval, traceable
from netchisel.prune.structured.scores import SCORED_TYPES, CriterionImportance, block_score

HEAD_ATTRS = ("n_head", "num_heads", "n_heads", "num_attention_heads")
"""An attention module is one with an integer attribute of one of these names."""


@dataclass(frozen=True)
class Unit:
    """Coupled channels (one dependency group), one attention module's heads, or one block."""

    name: str  # the group's root layer, the attention module, or the block
    root: str  # the layer whose output channels Torch-Pruning is asked to prune
    members: tuple[str, ...]  # layers whose output width the unit sets (for regexes, records)
    scores: Tensor  # one per channel / head; one for a block
    head_attr: str | None = None
    head_dim: int = 1


def _matching(names: list[str], patterns: tuple[str, ...], where: str, what: str) -> set[str]:
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
    include = (
        set(names) if config.layers is None else _matching(names, config.layers, "layers", what)
    )
    return include - _matching(names, config.exclude, "exclude", what)


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
) -> tuple[list[Unit], dict[str, str]]:
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
        _matching(sorted(attention), tuple(config.per_layer), "per_layer", "attention module")
    else:
        names = [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        chosen = _chosen(names, config, "Conv/Linear layer")
        _matching(names, tuple(config.per_layer), "per_layer", "Conv/Linear layer")
    dg = dependency_graph(model, inputs)
    names_of = {m: n for n, m in model.named_modules()}
    importance = CriterionImportance(config.importance, stats)
    units: list[Unit] = []
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
            units.append(Unit(root, root, tuple(outs), scores))
            continue
        assert owner is not None
        attr = attention[owner]
        n_head = int(getattr(model.get_submodule(owner), attr))
        if len(scores) % n_head:
            skipped[owner] = f"width {len(scores)} is not a multiple of {attr}={n_head}"
            continue
        head_dim = len(scores) // n_head
        per_head = scores.reshape(n_head, head_dim).sum(dim=1)
        units.append(Unit(owner, root, (owner, *outs), per_head, attr, head_dim))
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
) -> list[Unit]:
    """Blocks that can become `nn.Identity` (output shape = input shape), scored."""
    all_names = [n for n, _ in model.named_modules() if n]
    if config.layers is None:
        pool = [n for n in all_names if _looks_like_block(model, n)]
    else:
        pool = sorted(_matching(all_names, config.layers, "layers", "module"))
    pool = [n for n in pool if n not in _matching(all_names, config.exclude, "exclude", "module")]
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
        units.append(Unit(name, name, (name,), block_score(name, block, config, stats)))
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
        run_eval(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {n: keeps[n] and n in called for n in names}


def score_units(
    model: nn.Module, inputs: tuple[Tensor, ...], config: StructuredConfig, ctx: Context
) -> tuple[list[Unit], dict[str, str]]:
    probe = copy.deepcopy(model)  # tracing and gradients touch the model; scores do not need it
    layers = {n: m for n, m in probe.named_modules() if isinstance(m, SCORED_TYPES)}
    need = NEEDS.get(config.importance)
    by_name = collect_stats(probe, layers, ctx.task, need, config.calibration_samples)
    stats = {layers[n]: s for n, s in by_name.items()}
    with seeded(ctx.seed), traceable(probe):  # seeded: the random criterion
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
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> channel_groups(net, (torch.zeros(1, 1, 8, 8),))
        {'0': ('0',), '2': ('2',)}
    """
    config = config or StructuredConfig()
    units, _ = score_units(model, inputs, config, Context(task=None, quiet=True))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return {u.root: u.members for u in sorted(units, key=lambda u: order[u.root])}
