"""The macro NAS space: stages of blocks over the zoo families, and the builder of a candidate.

A network is a stem (k=3 conv-bn-act), stages of blocks, an optional 1x1 head conv, global
average pooling and a Linear. Fixed by builder kwargs: each stage's base channels and stride,
the stem and head widths, the activation, the input channels and classes. Searched, per stage
`i` (1-based) and block `j`, as in MnasNet's factorized hierarchical space (Tan et al. 2019):

- `width_mult`: multiplies the stem and every stage's channels (rounded, at least 1);
- `s{i}_blocks`: blocks in stage i; `s{i}_kernel`: their kernel size;
- `s{i}_op{j}`: the op of block j (`conv`, `separable`, `grouped`, `skip`; see `ops.py`),
  only while j <= `s{i}_blocks`; block 1 changes the shape, so it is never `skip`;
- `s{i}_expand{j}`: the expansion ratio of a `separable` block; `s{i}_groups{j}`: the groups
  of a `grouped` block (both only for that op).

`skip` and `s{i}_blocks` both shorten a stage, so some architectures have more than one
candidate; that is the price of letting each block choose its op.

The zoo models are points of the space: `resnet(depth=6n+2, width=w)` is `RESNET_KWARGS` with
n `conv` blocks per stage, and `mobilenet(1.0)` is `MOBILENET_KWARGS` (same layers, same
parameter count; `tests/search/nas/test_macro.py` checks both).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder, mark_builder
from netchisel.search.nas.ops import ACTIVATIONS, OPS, activation, conv_bn, make_block
from netchisel.search.space import Dimension, Space, categorical, integer

MACRO_REF = "netchisel.search.nas:macro_net"
_KEY = re.compile(r"s(\d+)_(blocks|kernel|op|expand|groups)(\d*)")
_STAGE_KEYS = ("blocks", "kernel")

RESNET_KWARGS: dict[str, Any] = {"channels": [16, 32, 64], "strides": [1, 2, 2], "stem": 16}
"""Fixed kwargs under which `macro_net` makes the zoo CIFAR ResNets (3 stages, w/2w/4w)."""

MOBILENET_KWARGS: dict[str, Any] = {
    "channels": [16, 24, 32, 64, 96],
    "strides": [1, 2, 2, 2, 1],
    "stem": 32,
    "head": 1280,
    "act": "relu6",
}
"""Fixed kwargs under which `macro_net` makes the zoo MobileNetV2 (`zoo.models.mobilenet`)."""


def macro_space(
    stages: int = 3,
    *,
    blocks: Sequence[int] = (1, 2, 3),
    kernels: Sequence[int] = (3, 5),
    ops: Sequence[str] = ("conv", "separable", "grouped", "skip"),
    expansions: Sequence[int] = (1, 3, 6),
    groups: Sequence[int] = (2, 4),
    width_mults: Sequence[float] = (0.5, 0.75, 1.0),
) -> Space:
    """The macro space of `stages` stages (see the module docstring for the dimensions).

    Pass the same number of `channels` and `strides` to `macro_net` when building a candidate.

    Example:
        >>> space = macro_space(2, blocks=(1,), kernels=(3,), ops=("conv", "separable"),
        ...                     expansions=(1, 6), width_mults=(1.0,))
        >>> space.size()  # per stage: conv, separable x1, separable x6
        9
    """
    if stages < 1:
        raise ConfigError(f"macro_space needs stages >= 1, got {stages}")
    for name, values in (("blocks", blocks), ("kernels", kernels), ("expansions", expansions)):
        if not values or min(values) < 1:
            raise ConfigError(f"macro_space {name} must be non-empty and >= 1, got {list(values)}")
    if not groups or min(groups) < 1:
        raise ConfigError(f"macro_space groups must be non-empty and >= 1, got {list(groups)}")
    if not width_mults or min(width_mults) <= 0:
        raise ConfigError(f"macro_space width_mults must be > 0, got {list(width_mults)}")
    unknown = [op for op in ops if op not in OPS]
    if unknown or not [op for op in ops if op != "skip"]:
        raise ConfigError(
            f"macro_space ops: unknown or only skip: {list(ops)} (known: {', '.join(OPS)})"
        )
    shaping = tuple(op for op in ops if op != "skip")
    dims: dict[str, Dimension] = {"width_mult": categorical(*width_mults)}
    for i in range(1, stages + 1):
        dims[f"s{i}_blocks"] = categorical(*blocks)
        dims[f"s{i}_kernel"] = categorical(*kernels)
        for j in range(1, max(blocks) + 1):
            needs = {f"s{i}_blocks": [b for b in blocks if b >= j]} if j > min(blocks) else {}
            dims[f"s{i}_op{j}"] = categorical(*(shaping if j == 1 else ops), when=needs)
            if "separable" in ops:
                dims[f"s{i}_expand{j}"] = categorical(
                    *expansions, when={f"s{i}_op{j}": "separable"}
                )
            if "grouped" in ops:
                dims[f"s{i}_groups{j}"] = categorical(*groups, when={f"s{i}_op{j}": "grouped"})
    return Space(dims)


@builder
def macro_net(
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] = (1, 2, 2),
    stem: int = 16,
    head: int = 0,
    act: str = "relu",
    width_mult: float = 1.0,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 32,
    **choices: Any,
) -> nn.Module:
    """Build one macro-space candidate: `macro_net(**fixed_kwargs, **candidate)`.

    `choices` are the per-stage and per-block dimensions (`s1_blocks`, `s1_kernel`, `s1_op1`,
    `s1_expand1`, `s1_groups1`, ...). Missing ones default to 1 block, kernel 3, op `conv`,
    expansion 1 and 2 groups. Global pooling makes the net input-size agnostic; `image_size`
    (the input side) must be at least the product of the strides.

    Example:
        >>> import torch
        >>> net = macro_net(channels=[8, 16], strides=[1, 2], image_size=8,
        ...                 s1_blocks=2, s1_op1="conv", s1_op2="skip", s2_op1="separable")
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    chans, strides = [int(c) for c in channels], [int(s) for s in strides]
    if not chans or len(chans) != len(strides):
        raise ConfigError(
            f"macro_net needs one stride per stage: channels {chans}, strides {strides}"
        )
    if min([*chans, stem, in_channels, num_classes]) < 1 or head < 0 or min(strides) < 1:
        raise ConfigError(
            f"macro_net widths must be >= 1 (channels={chans}, stem={stem}, head={head}, "
            f"in_channels={in_channels}, num_classes={num_classes}) and strides >= 1"
        )
    if not width_mult > 0:
        raise ConfigError(f"macro_net width_mult must be > 0, got {width_mult}")
    if act not in ACTIVATIONS:
        raise ConfigError(f"macro_net act: unknown activation {act!r} (known: relu, relu6)")
    if image_size < math.prod(strides):
        raise ConfigError(
            f"macro_net image_size {image_size} is below the strides' product "
            f"{math.prod(strides)}: lower a stride or raise image_size"
        )
    stages = _stage_choices(choices, len(chans))

    def scaled(c: int) -> int:
        return max(1, round(c * width_mult))

    prev = scaled(stem)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(*conv_bn(in_channels, prev, 3), activation(act))
    )
    for i, (base, stride, stage) in enumerate(zip(chans, strides, stages, strict=True), 1):
        out = scaled(base)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for j, block in enumerate(stage["blocks"], 1):
            if block["op"] == "skip" and j == 1:
                raise ConfigError(
                    f"macro_net s{i}_op1='skip': the first block of a stage changes its shape; "
                    "choose conv, separable or grouped"
                )
            if block["op"] != "skip":  # an identity adds nothing to the module tree
                blocks[f"b{j}"] = make_block(
                    block["op"],
                    prev,
                    out,
                    stride if j == 1 else 1,
                    stage["kernel"],
                    expand=block["expand"],
                    groups=block["groups"],
                    act=act,
                )
            prev = out
        layers[f"stage{i}"] = nn.Sequential(blocks)
    if head:
        layers["head"] = nn.Sequential(*conv_bn(prev, head, 1), activation(act))
        prev = head
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = nn.Linear(prev, num_classes)
    model = nn.Sequential(layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    kwargs = {
        "channels": chans,
        "strides": strides,
        "stem": stem,
        "head": head,
        "act": act,
        "width_mult": float(width_mult),
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
        **choices,
    }
    return mark_builder(model, MACRO_REF, kwargs)


def _stage_choices(choices: dict[str, Any], n_stages: int) -> list[dict[str, Any]]:
    """Per stage: kernel and a list of blocks (op, expand, groups), defaults filled in."""
    known = "s{i}_blocks, s{i}_kernel, s{i}_op{j}, s{i}_expand{j}, s{i}_groups{j}"
    blocks_at: dict[str, int] = {}  # key -> the block it names (0 for per-stage keys)
    for key, value in choices.items():
        match = _KEY.fullmatch(key)
        if match is None or (match[2] in _STAGE_KEYS) != (match[3] == ""):
            raise ConfigError(f"macro_net: unknown argument {key!r} (per stage: {known})")
        if not 1 <= int(match[1]) <= n_stages:
            raise ConfigError(
                f"macro_net {key}: there is no stage {match[1]} (channels gives {n_stages} stages)"
            )
        if match[2] == "op" and value not in OPS:
            raise ConfigError(f"macro_net {key}: unknown op {value!r} (known: {', '.join(OPS)})")
        if match[2] != "op" and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"macro_net {key} must be an integer >= 1, got {value!r}")
        if match[2] == "kernel" and value % 2 == 0:
            raise ConfigError(f"macro_net {key} must be odd (same padding), got {value}")
        blocks_at[key] = int(match[3] or 0)
    stages: list[dict[str, Any]] = []
    for i in range(1, n_stages + 1):
        count = choices.get(f"s{i}_blocks", 1)
        for key, j in blocks_at.items():
            if key.startswith(f"s{i}_") and j > count:
                raise ConfigError(
                    f"macro_net {key}: stage {i} has {count} blocks; "
                    f"raise s{i}_blocks or drop {key}"
                )
        blocks = [
            {
                "op": choices.get(f"s{i}_op{j}", "conv"),
                "expand": choices.get(f"s{i}_expand{j}", 1),
                "groups": choices.get(f"s{i}_groups{j}", 2),
            }
            for j in range(1, count + 1)
        ]
        stages.append({"kernel": choices.get(f"s{i}_kernel", 3), "blocks": blocks})
    return stages


TABULAR_KWARGS: dict[str, Any] = {
    "channels": [16, 32],
    "strides": [1, 2],
    "stem": 16,
    "in_channels": 1,
    "num_classes": 10,
    "image_size": 8,
}
"""Fixed `macro_net` kwargs of the tabular space: two stages on 8x8 digits (8x8 -> 4x4)."""


def tabular_space() -> Space:
    """The 288-point macro space of the tabular NAS benchmark (digits 8x8, `TABULAR_KWARGS`).

    Width multiplier 0.5 or 1; per stage 1 or 2 blocks, each `conv`, `separable` (expansion 1:
    depthwise separable) or `grouped` (2 groups), kernel 3: 2 x (3 + 3 x 3)^2 = 288.

    Example:
        >>> tabular_space().size()
        288
    """
    ops = ("conv", "separable", "grouped")
    dims: dict[str, Dimension] = {"width_mult": categorical(0.5, 1.0)}
    for i in (1, 2):
        dims[f"s{i}_blocks"] = integer(1, 2)
        dims[f"s{i}_op1"] = categorical(*ops)
        dims[f"s{i}_op2"] = categorical(*ops, when={f"s{i}_blocks": 2})
    return Space(dims)
