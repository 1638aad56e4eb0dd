"""The macro NAS space and its builder: zoo points, conditions, artifacts, exact MACs, errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from netchisel.artifact.store import load, read_manifest, save
from netchisel.core.errors import ConfigError
from netchisel.core.modules import build
from netchisel.measure import count_flops
from netchisel.search.nas import (
    MOBILENET_KWARGS,
    NAS_SPACES,
    RESNET_KWARGS,
    TABULAR_KWARGS,
    macro_net,
    macro_space,
    tabular_space,
)
from netchisel.search.space import Space
from netchisel.zoo import models


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_candidate(n: int) -> dict[str, Any]:
    candidate: dict[str, Any] = {"width_mult": 1.0}
    for i in (1, 2, 3):
        candidate |= {f"s{i}_blocks": n, f"s{i}_kernel": 3}
        candidate |= {f"s{i}_op{j}": "conv" for j in range(1, n + 1)}
    return candidate


def mobilenet_candidate() -> dict[str, Any]:
    candidate: dict[str, Any] = {"width_mult": 1.0}
    for i, (blocks, expand) in enumerate(zip((1, 2, 3, 3, 2), (1, 6, 6, 6, 6), strict=True), 1):
        candidate |= {f"s{i}_blocks": blocks, f"s{i}_kernel": 3}
        for j in range(1, blocks + 1):
            candidate[f"s{i}_op{j}"] = "separable"
            candidate[f"s{i}_expand{j}"] = expand
    return candidate


def assert_in_space(space: Space, candidate: dict[str, Any]) -> None:
    """`candidate` is exactly what the space would propose: active dims only, valid values."""
    for name, dim in space.dimensions.items():
        if dim.active(candidate):
            assert candidate[name] in dim.values(), name
        else:
            assert name not in candidate, name
    assert set(candidate) <= set(space.dimensions)


def test_zoo_resnet_is_a_point_of_the_space() -> None:
    x = torch.zeros(1, 1, 32, 32)
    assert_in_space(macro_space(3), resnet_candidate(3))
    for depth, width in ((20, 16), (8, 4)):
        candidate = {**resnet_candidate((depth - 2) // 6), "width_mult": width / 16}
        ours = macro_net(**RESNET_KWARGS, **candidate)
        zoo = models.resnet(depth=depth, width=width)
        assert params(ours) == params(zoo)
        assert count_flops(ours, x).macs == count_flops(zoo, x).macs
    assert params(macro_net(**RESNET_KWARGS, **resnet_candidate(3))) == 272_186


def test_zoo_mobilenet_is_a_point_of_the_space() -> None:
    x = torch.zeros(1, 1, 32, 32)
    ours = macro_net(**MOBILENET_KWARGS, **mobilenet_candidate())
    zoo = models.mobilenet(width_mult=1.0)
    assert params(ours) == params(zoo) == 507_658
    assert count_flops(ours, x).macs == count_flops(zoo, x).macs
    assert_in_space(macro_space(5), mobilenet_candidate())
    # Below 1 the zoo rounds channels to multiples of 8: explicit channels give it exactly.
    half = {**MOBILENET_KWARGS, "channels": [8, 16, 16, 32, 48], "stem": 16}
    assert params(macro_net(**half, **mobilenet_candidate())) == params(models.mobilenet(0.5))
    near = macro_net(**MOBILENET_KWARGS, **{**mobilenet_candidate(), "width_mult": 0.5})
    assert (params(near), params(models.mobilenet(0.5))) == (178_346, 181_578)


def test_conditions_follow_block_counts_and_ops() -> None:
    space = macro_space(3)
    rng = random.Random(0)
    for _ in range(300):
        c = space.sample(rng)
        for i in (1, 2, 3):
            blocks = c[f"s{i}_blocks"]
            assert [j for j in (1, 2, 3) if f"s{i}_op{j}" in c] == list(range(1, blocks + 1))
            assert c[f"s{i}_op1"] != "skip"
            for j in range(1, blocks + 1):
                op = c[f"s{i}_op{j}"]
                assert (f"s{i}_expand{j}" in c) == (op == "separable")
                assert (f"s{i}_groups{j}" in c) == (op == "grouped")


def test_small_space_size_is_exact() -> None:
    # width 2 x per stage (1 block: conv, sep x2 expansions = 3) + (2 blocks: 3 x (3 + skip)).
    space = macro_space(
        1,
        blocks=(1, 2),
        kernels=(3,),
        ops=("conv", "separable", "skip"),
        expansions=(1, 6),
        width_mults=(0.5, 1.0),
    )
    assert space.size() == 2 * (3 + 3 * 4)
    # defaults, one stage: 2 kernels x (6 + 6 x 7 + 6 x 7^2); block ops: conv, separable x 3
    # expansions, grouped x 2 groups (6), and skip after block 1 (7)
    assert macro_space(1, width_mults=(1.0,)).size() == 2 * (6 + 6 * 7 + 6 * 49) == 684


def test_sampled_candidates_build_and_run() -> None:
    space = macro_space(3, width_mults=(0.25,))
    rng = random.Random(1)
    for _ in range(8):
        net = macro_net(**space.sample(rng), image_size=8)
        assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_macs_are_exact_by_hand() -> None:
    net = macro_net(channels=[4], strides=[1], stem=2, image_size=4, num_classes=3)
    count = count_flops(net, torch.zeros(1, 1, 4, 4))
    # stem 16*2*9, conv1 16*4*18, conv2 16*4*36, 1x1 shortcut 16*4*2, classifier 4*3
    assert count.macs == 288 + 1152 + 2304 + 128 + 12 == 3884
    assert count.uncounted_ops == ()
    assert params(net) == 285


def test_artifact_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    candidate = {"width_mult": 0.5, "s1_blocks": 2, "s1_kernel": 5, "s2_blocks": 2}
    candidate |= {"s1_op1": "grouped", "s1_groups1": 4, "s1_op2": "skip"}
    candidate |= {"s2_op1": "separable", "s2_expand1": 3, "s2_op2": "conv"}
    net = macro_net(**TABULAR_KWARGS, **candidate).eval()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(4, 1, 8, 8)
    directory = save(net, tmp_path / "net")
    manifest = read_manifest(directory)
    assert manifest["builder"]["ref"] == "netchisel.search.nas:macro_net"
    assert manifest["edits"] == []
    assert torch.equal(load(directory)(x), net(x))


def test_recipe_builder_reference_builds_the_candidate() -> None:
    kwargs = {**TABULAR_KWARGS, "s1_op1": "separable", "s2_op1": "grouped"}
    net = build("netchisel.search.nas:macro_net", kwargs)
    assert params(net) == params(macro_net(**kwargs))
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_tabular_space() -> None:
    space = tabular_space()
    candidates = list(space.candidates())
    assert len(candidates) == space.size() == 288
    first = {"width_mult": 0.5, "s1_blocks": 1, "s1_op1": "conv", "s2_blocks": 1, "s2_op1": "conv"}
    assert candidates[0] == first
    assert NAS_SPACES["tabular"] is tabular_space
    assert sorted(NAS_SPACES) == ["cells", "macro", "tabular"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"s1_op1": "dilated"}, "s1_op1: unknown op 'dilated'"),
        ({"width_mult": 0.0}, "width_mult must be > 0"),
        ({"channels": [16, 0, 64]}, "widths must be >= 1"),
        ({"stem": 0}, "widths must be >= 1"),
        ({"channels": [16, 32]}, "one stride per stage"),
        ({"s1_op1": "skip"}, "first block of a stage"),
        ({"s4_blocks": 2}, "there is no stage 4"),
        ({"s1_blocks": 2, "s1_op3": "conv"}, "stage 1 has 2 blocks"),
        ({"s1_kernel": 4}, "must be odd"),
        ({"s1_expand1": 0}, "integer >= 1"),
        ({"depth": 20}, "unknown argument 'depth'"),
        ({"act": "gelu"}, "unknown activation 'gelu'"),
        ({"image_size": 2}, "below the strides' product 4"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        macro_net(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ops": ("conv", "pool")}, "unknown or only skip"),
        ({"ops": ("skip",)}, "unknown or only skip"),
        ({"stages": 0}, "stages >= 1"),
        ({"blocks": ()}, "blocks must be non-empty"),
        ({"width_mults": (0.0,)}, "width_mults must be > 0"),
    ],
)
def test_bad_space_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        macro_space(**kwargs)
