"""What every format shares: exact artifact round trips (old class refs included), the
kernel-layout cache, FLOP counts of the true shape, one torch.compile graph."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import netchisel as nc
from netchisel.artifact.trust import RENAMED
from netchisel.quantize.formats import (
    ClusteredConv,
    ClusteredLinear,
    DynamicInt8Linear,
    Int4WeightOnlyLinear,
    Int8Embedding,
    Int8WeightOnlyLinear,
    PackedConv2d,
    PackedLinear,
    StaticInt8Conv2d,
    StaticInt8Linear,
)
from netchisel.quantize.primitives import QuantSpec


@pytest.mark.parametrize(
    "make",
    [
        lambda lin: Int8WeightOnlyLinear.from_float(lin),
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=64),
        lambda lin: DynamicInt8Linear.from_float(lin),
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
        lambda lin: PackedLinear.from_float(lin, QuantSpec(3, False, "group", 64)),
    ],
)
def test_artifact_round_trip_is_exact_and_stores_integers(tmp_path, make):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    net[0] = make(net[0])
    x = torch.randn(4, 128)
    net(x)  # a forward first: the kernel-layout cache must not end up in the manifest
    path = nc.save(net, tmp_path / "m")
    loaded = nc.load(path)
    assert type(loaded[0]) is type(net[0])
    assert torch.equal(loaded(x), net.eval()(x))
    stored = load_file(str(path / "model.safetensors"))
    int_bytes = sum(
        t.numel()
        for k, t in stored.items()
        if k.startswith("0.") and t.dtype in (torch.int8, torch.uint8)
    )
    assert (
        int_bytes
        == {
            Int8WeightOnlyLinear: 64 * 128,
            Int4WeightOnlyLinear: 64 * 128 // 2,
            DynamicInt8Linear: 64 * 128,
            PackedLinear: 64 * 128 * 3 // 8,
        }[type(net[0])]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=32),
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
    ],
)
def test_kernel_cache_follows_loaded_weights(make):
    torch.manual_seed(0)
    a, b = make(nn.Linear(64, 16)), make(nn.Linear(64, 16))
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = a(x)
        a.load_state_dict(b.state_dict())
        assert not torch.equal(a(x), before)
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "make, op",
    [
        (lambda lin: Int8WeightOnlyLinear.from_float(lin), "aten._weight_int8pack_mm"),
        (lambda lin: Int4WeightOnlyLinear.from_float(lin, 32), "aten._weight_int4pack_mm_for_cpu"),
        (lambda lin: DynamicInt8Linear.from_float(lin), "aten._int_mm"),
        (lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"), "quantized.linear_dynamic"),
        (lambda lin: PackedLinear.from_float(lin, QuantSpec(3, False, "group", 32)), "aten.mm"),
    ],
)
def test_flops_are_the_matmul_of_the_true_shape_and_no_setup_work(make, op):
    layer = make(nn.Linear(64, 48))
    count = nc.count_flops(layer, torch.zeros(5, 64))
    assert count.uncounted_ops == ()
    assert count.macs == 5 * 64 * 48
    assert count.flops_by_op[op] >= 2 * 5 * 64 * 48


@pytest.mark.parametrize(
    "make",
    [
        Int8WeightOnlyLinear.from_float,
        lambda lin: Int4WeightOnlyLinear.from_float(lin, group_size=32),
        DynamicInt8Linear.from_float,
        lambda lin: DynamicInt8Linear.from_float(lin, "per_tensor"),
    ],
)
def test_a_built_kernel_layout_keeps_torch_compile_in_one_graph(make):
    # Reading storage and versions (the eager cache check) would split the graph at each layer.
    torch.manual_seed(0)
    layer = make(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    with torch.inference_mode():
        eager = layer(x)  # builds the layout
        torch._dynamo.reset()
        explained = torch._dynamo.explain(layer)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    with torch.inference_mode():
        assert torch.equal(torch.compile(layer)(x), eager)


EXAMPLES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor] | None]] = {
    "Int8WeightOnlyLinear": (lambda: Int8WeightOnlyLinear.from_float(nn.Linear(32, 16)), None),
    "Int8Embedding": (
        lambda: Int8Embedding.from_float(nn.Embedding(10, 8)),
        lambda: torch.tensor([[1, 2, 9]]),
    ),
    "Int4WeightOnlyLinear": (
        lambda: Int4WeightOnlyLinear.from_float(nn.Linear(32, 16), group_size=32),
        None,
    ),
    "DynamicInt8Linear": (lambda: DynamicInt8Linear.from_float(nn.Linear(32, 16)), None),
    "PackedLinear": (
        lambda: PackedLinear.from_float(nn.Linear(32, 16), QuantSpec(3, False, "group", 16)),
        None,
    ),
    "PackedConv2d": (
        lambda: PackedConv2d.from_float(nn.Conv2d(2, 4, 3), QuantSpec(2, False)),
        lambda: torch.randn(1, 2, 5, 5),
    ),
    "ClusteredLinear": (lambda: ClusteredLinear.from_linear(nn.Linear(32, 16), bits=3), None),
    "ClusteredConv": (
        lambda: ClusteredConv.from_conv(nn.Conv2d(2, 4, 3), bits=3),
        lambda: torch.randn(1, 2, 5, 5),
    ),
    "StaticInt8Linear": (
        lambda: StaticInt8Linear.from_float(nn.Linear(32, 16), input_scale=0.02),
        lambda: torch.rand(2, 32),
    ),
    "StaticInt8Conv2d": (
        lambda: StaticInt8Conv2d.from_float(nn.Conv2d(2, 4, 3), input_scale=0.02),
        lambda: torch.rand(1, 2, 5, 5),
    ),
}
MOVED = sorted((old, new) for old, new in RENAMED.items() if old.startswith("netchisel.quantize."))


def test_every_moved_format_class_has_an_example() -> None:
    assert sorted(new.rpartition(":")[2] for _, new in MOVED) == sorted(EXAMPLES)


@pytest.mark.parametrize(("old", "new"), MOVED)
def test_an_artifact_naming_a_class_by_its_old_ref_still_loads(
    tmp_path: Path, old: str, new: str
) -> None:
    make, inputs = EXAMPLES[new.rpartition(":")[2]]
    net = nn.Sequential(make()).eval()
    x = inputs() if inputs is not None else torch.randn(2, 32)
    path = nc.save(net, tmp_path / "m")
    manifest = path / "manifest.json"
    text = manifest.read_text()
    assert json.dumps(new) in text
    manifest.write_text(text.replace(json.dumps(new), json.dumps(old)))  # as the release wrote it
    loaded = nc.load(path)
    assert type(loaded[0]) is type(net[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
