"""Units: what one keep-decision covers, found and scored.

A unit is one dependency group of coupled channels (its root layer and every layer whose
output width it sets), one attention module's heads, or one block that can become
`nn.Identity`. Groups that may not be pruned (their channels reach the output, a grouped conv,
a layer not chosen) are reported with why, never silently dropped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, first_line
from netchisel.core.modules import sample_of
from netchisel.core.state import seeded
from netchisel.prune.importance import NEEDS, LayerStats, collect_stats, get_criterion
from netchisel.prune.structured.attention import (
    HEAD_ATTRS,
    Layout,
    attention_layouts,
    head_scores,
    tie_key,
    unsupported_reason,
)
from netchisel.prune.structured.config import STAGE, StructuredConfig
from netchisel.prune.structured.graph import (
    GroupTooLarge,
    bounded_groups,
    dependency_graph,
    guarded_mapping,
    is_layer,
    layer_types,
    run_eval,
    traceable,
)
from netchisel.prune.structured.scores import SCORED_TYPES, CriterionImportance, block_score


@dataclass(frozen=True)
class Unit:
    """Coupled channels (one dependency group), one attention module's heads, or one block."""

    name: str  # the group's root layer, the attention module, or the block
    root: str  # the layer whose output channels Torch-Pruning is asked to prune
    members: tuple[str, ...]  # layers whose output width the unit sets (for regexes, records)
    scores: Tensor  # one per channel / head; one for a block
    head_attr: str | None = None
    head_dim: int = 1
    layout: Layout | None = None  # heads netchisel cuts itself (`attention.py`), not the graph
    # Root channels that are all of some coupled layer's channels (a concat then a slice maps
    # only part of the root onto it, as in GhostNet): a plan keeps at least one of each.
    covers: tuple[tuple[int, ...], ...] = ()
    # Attention modules cut with the same keep mask as this one (T5's shared position bias)
    tied: tuple[tuple[str, Layout], ...] = ()


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
    """Attention modules (name -> the attribute holding their head count) that are left to
    the dependency graph (those of `attention_layouts` are cut by hand)."""
    found: dict[str, str] = {}
    layouts = attention_layouts(model)
    for name, module in model.named_modules():
        if any(name == n or _inside(name, n) or _inside(n, name) for n in layouts):
            continue  # cut by hand, or a block holding such an attention module
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
    layouts = attention_layouts(model)
    units: list[Unit] = []
    skipped: dict[str, str] = {}
    if heads:
        if not attention and not layouts:
            raise ConfigError(
                f"{STAGE}: granularity 'heads' needs attention modules (q/k/v projections, "
                f"a fused qkv, nn.MultiheadAttention, or an integer {' / '.join(HEAD_ATTRS)} "
                "attribute); the model has none"
            )
        every = sorted({*attention, *layouts})
        chosen = _chosen(every, config, "attention module")
        _matching(every, tuple(config.per_layer), "per_layer", "attention module")
        units = _layout_units(model, layouts, chosen, config, stats)
        if not any(a in chosen for a in attention):
            return units, skipped
    else:
        names = [n for n, m in model.named_modules() if is_layer(m)]
        chosen = _chosen(names, config, "Conv/Linear layer")
        _matching(names, tuple(config.per_layer), "per_layer", "Conv/Linear layer")
    # q/k/v of the layouts cut by hand are heads, not channels; their groups are not even
    # built (tracing them through rotary embeddings and repeat_kv takes minutes)
    projections = {p: a for a, lay in layouts.items() for p in lay.inputs}
    if not heads:
        for proj, holder in projections.items():
            if proj in chosen:
                skipped[proj] = f"attention heads of {holder}: use granularity 'heads'"
    dg = dependency_graph(model, inputs)
    names_of = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(p) for p in projections]
    importance = CriterionImportance(config.importance, stats)
    within = sorted(a for a in attention if a in chosen) if heads else None
    for root, group in _groups(dg, tuple(layer_types(model)), ignored, names_of, within):
        if isinstance(group, str):  # Torch-Pruning failed to follow this root's channels
            inside = next((a for a in attention if _inside(root, a)), None)
            if heads and inside is not None:
                skipped[inside] = group
            elif root in chosen:
                skipped[root] = group
            continue
        outs: list[str] = []
        ins: list[str] = []
        for item in group:
            layer = item.dep.target.module
            if is_layer(layer) and layer in names_of:
                is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
                (outs if is_out else ins).append(names_of[layer])
        owner = next((a for a in attention if _owns(a, outs, ins)), None)
        if heads and owner is None:
            continue
        reason = _why_not(model, dg, group, outs, ins, owner, chosen, heads)
        relevant = owner in chosen if heads else any(o in chosen for o in outs)
        if reason is not None:
            if relevant:
                skipped[owner if heads and owner else root] = reason
            continue
        try:
            scores = importance(group)
        except IndexError:  # Torch-Pruning mapped the channels past a layer's width
            if relevant:
                skipped[root] = (
                    "the dependency graph maps its channels beyond a coupled layer's width "
                    "(a transpose or reshape it cannot follow)"
                )
            continue
        if scores is None:  # only bn_scale can find nothing to score
            raise ConfigError(
                f"{STAGE}: bn_scale needs a BatchNorm after each pruned layer; the group of "
                f"{root} ({', '.join(outs)}) has none: exclude it or use importance l1"
            )
        if not heads:
            units.append(Unit(root, root, tuple(outs), scores, covers=_covers(dg, group)))
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
        found = {u.name for u in units} | set(skipped) | set(layouts)
        for name in sorted(chosen - found):
            skipped[name] = unsupported_reason(model.get_submodule(name)) or (
                "no q/k/v Linear projections whose heads one group holds"
            )
    else:
        seen = {names_of[m] for m in dg.module2node if isinstance(m, nn.Module) and m in names_of}
        for name in sorted(chosen - seen - set(skipped)):
            whole = next((s for s in seen if s and _inside(name, s)), None)
            skipped[name] = (
                f"part of {whole} ({type(model.get_submodule(whole)).__name__}), which the "
                "dependency graph treats as one layer"
                if whole is not None
                else "the dependency graph does not reach it (it runs without autograd, under "
                "no_grad or after .detach(), or not at all)"
            )
    return units, skipped


def _groups(
    dg: Any,
    types: tuple[type[nn.Module], ...],
    ignored: list[nn.Module],
    names_of: Any,
    within: list[str] | None = None,
) -> Iterator[tuple[str, Any]]:
    """(root name, group) per dependency group, as `tp.DependencyGraph.get_all_groups` finds
    them (each layer's output channels once, groups with an ignored layer left out); a root
    whose group Torch-Pruning fails to build gives (root name, why) instead of ending all.
    With `within`, only roots inside those modules (the attention modules, for heads)."""
    visited: set[nn.Module] = set()
    limit = 4 * len(dg.module2node) + 64
    for module in list(dg.module2node):
        if module in ignored or not isinstance(module, types) or module in visited:
            continue
        if within is not None and not any(_inside(names_of[module], w) for w in within):
            continue
        pruner = dg.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        width = pruner.get_out_channels(module)
        why = None
        try:
            with bounded_groups(limit):
                group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except GroupTooLarge as e:
            why = (
                f"Torch-Pruning's group of its channels does not close ({e}): the graph maps "
                "them through ops it cannot follow (rotary embeddings, shifted windows)"
            )
        except (IndexError, ValueError, ZeroDivisionError, KeyError) as e:
            why = (
                "Torch-Pruning cannot follow its channels through the graph "
                f"({type(e).__name__}: {first_line(e)})"
            )
        if why is not None:
            yield names_of[module], why
            continue
        outs = [
            item.dep.target.module
            for item in group
            if dg.is_out_channel_pruning_fn(item.dep.handler)
        ]
        visited.update(m for m in outs if isinstance(m, nn.Module))
        if not any(m in ignored for m in outs):
            yield names_of[module], group


def _covers(dg: Any, group: Any) -> tuple[tuple[int, ...], ...]:
    """The root-channel sets that map onto the whole of a coupled layer, when smaller than
    the root's channels (removing all of one would leave that layer with no channel)."""
    width = len(group[0].idxs)
    found: set[tuple[int, ...]] = set()
    for item in group:
        roots = item.root_idxs
        if not dg.is_out_channel_pruning_fn(item.dep.handler) or not roots or None in roots:
            continue
        module = item.dep.target.module
        pruner = dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
        channels = pruner.get_out_channels(module) if pruner is not None else None
        subset = tuple(sorted(set(roots)))
        if channels and len(set(item.idxs)) >= channels and len(subset) < width:
            found.add(subset)
    return tuple(sorted(found))


def _layout_units(
    model: nn.Module,
    layouts: dict[str, Layout],
    chosen: set[str],
    config: StructuredConfig,
    stats: dict[nn.Module, LayerStats],
) -> list[Unit]:
    """Head units of the attention modules netchisel cuts itself, scored per head (per
    key/value group with grouped-query attention)."""
    criterion = get_criterion(config.importance)

    name_of = {m: n for n, m in model.named_modules()}

    def score(layer: nn.Module, weight: Tensor) -> Tensor:
        if NEEDS.get(config.importance) and layer not in stats:
            raise ConfigError(
                f"{STAGE}.importance: {config.importance} needs the input statistics of "
                f"{name_of[layer]} ({type(layer).__name__}), which are collected for Linear, "
                "Conv and Embedding layers only: use l1, l2 or random for these heads"
            )
        return criterion(weight.detach(), stats.get(layer, LayerStats()))

    groups: dict[str, list[str]] = {}
    for name in sorted(layouts):
        if name in chosen:
            groups.setdefault(tie_key(model, name) or name, []).append(name)
    units = []
    for names in groups.values():
        first, layout = names[0], layouts[names[0]]
        if any(layouts[n].units != layout.units for n in names):
            continue  # tied modules of different shapes: never seen, not cut
        scores = torch.stack([head_scores(model, layouts[n], score) for n in names]).sum(0)
        members = tuple(m for n in names for m in (n, *layouts[n].inputs, layouts[n].o))
        tied = tuple((n, layouts[n]) for n in names[1:])
        units.append(Unit(first, first, members, scores, None, layout.head_dim, layout, tied=tied))
    return units


def _why_not(
    model: nn.Module,
    dg: Any,
    group: Any,
    outs: list[str],
    ins: list[str],
    owner: str | None,
    chosen: set[str],
    heads: bool,
) -> str | None:
    """Why a dependency group may not be pruned, or None when it may."""
    outputs: set[Any] = getattr(dg, "netchisel_outputs", set())
    for item in group:
        node = item.dep.target
        if dg.is_out_channel_pruning_fn(item.dep.handler) and (
            not node.outputs or node.grad_fn in outputs
        ):
            return "its channels reach the model's output or an op Torch-Pruning cannot follow"
    for name in (*outs, *ins):
        layer = model.get_submodule(name)
        if (
            isinstance(layer, nn.modules.conv._ConvNd)
            and layer.groups > 1
            and not layer.groups == layer.in_channels == layer.out_channels
        ):  # channels would have to leave every group alike; Torch-Pruning's slicing does not
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
    with seeded(ctx.seed), traceable(probe), guarded_mapping():  # seeded: the random criterion
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
