"""dynamic.width on models that are not chains: residual adds, depthwise convs, models we did
not write (torchvision), and the ones it must refuse (concatenations, channel shuffles)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task, classification_task
from netchisel.dynamic.width import WidthConfig, dynamic_width
from netchisel.dynamic.width_masking import check_prefixes
from netchisel.dynamic.width_model import WidthModel, width_macs
from netchisel.dynamic.width_plan import _proved, plan_slimmable
from netchisel.dynamic.width_slim import SlimPlan, cuttable, plan_width
from netchisel.measure.flops import count_flops
from netchisel.zoo.models.vision import resnet
from tests.dynamic.test_hostile_manifests import _edited

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from _torchvision import torchvision

WIDTHS = [0.25, 0.5, 1.0]


def _plan_macs(model: nn.Module, plan: SlimPlan, x: torch.Tensor, k: int) -> int:
    """Conv/linear MACs at width index k from the plan's channel counts and each layer's
    output positions (an independent formula, not the counter)."""
    positions: dict[str, int] = {}
    hooks = [
        model.get_submodule(p).register_forward_hook(
            lambda m, _, out, p=p: positions.__setitem__(p, math.prod(out.shape[2:]))
        )
        for p in plan.steps
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    total = 0
    for j in plan.weights:
        layer = model.get_submodule(plan.steps[j])
        c_in, c_out = plan.channels_in[j][k], plan.channels_out[j][k]
        kernel = math.prod(getattr(layer, "kernel_size", (1,)))
        per_group = 1 if getattr(layer, "groups", 1) > 1 else c_in
        total += c_out * per_group * kernel * positions[plan.steps[j]]
    return total


def test_the_zoo_resnet_at_half_width_is_the_half_width_resnet() -> None:
    torch.manual_seed(0)
    net = resnet(depth=8, width=8).eval()
    x = torch.randn(2, 1, 8, 8)
    plan = plan_width(net, WIDTHS, x)
    # Every layer of a stage keeps the same prefix, so the residual adds stay aligned.
    assert {tuple(plan.channels_out[j]) for j, s in enumerate(plan.steps) if "layer2" in s} == {
        (4, 8, 16)
    }
    model = WidthModel(net, plan, WIDTHS, nn.Identity())
    check_prefixes(model, x)
    macs, _, static = width_macs(model, x)
    assert macs[-1] == static == count_flops(net, x[:1]).macs
    assert macs[1] == count_flops(resnet(depth=8, width=4), x[:1]).macs  # kept(0.5, 8) = 4
    assert macs[0] == count_flops(resnet(depth=8, width=2), x[:1]).macs


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_torchvision_models_slim_exactly(name: str) -> None:
    torch.manual_seed(0)
    net = getattr(torchvision().models, name)(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = plan_width(net, WIDTHS, x)
    model = WidthModel(net, plan, WIDTHS, nn.Identity()).eval()
    check_prefixes(model, x)  # each width is the full model with the cut channels zeroed
    macs, _, static = width_macs(model, x)
    # The counter's conv/linear MACs are the plan's: the narrow layers really run narrow.
    for k in range(len(WIDTHS)):
        counted = count_flops(_At(model, k), x[:1])
        layers = sum(
            counted.macs_by_module[f"model.backbone.{plan.steps[j]}"] for j in plan.weights
        )
        assert layers == _plan_macs(net, plan, x[:1], k)
    assert macs[0] < 0.1 * static and macs[1] < 0.3 * static and macs[2] == static
    if name == "mobilenet_v2":  # depthwise convs keep what they are given
        dw = [j for j, s in enumerate(plan.steps) if getattr(net.get_submodule(s), "groups", 1) > 1]
        assert dw and all(plan.channels_in[j] == plan.channels_out[j] for j in dw)


class _At(nn.Module):
    def __init__(self, model: WidthModel, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.run_width(x, self.k)


def test_channel_shuffles_and_concatenations_are_refused_in_one_line() -> None:
    torch.manual_seed(0)
    net = torchvision().models.shufflenet_v2_x0_5(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ModelError) as err:
        check_prefixes(WidthModel(net, plan_width(net, WIDTHS, x), WIDTHS, nn.Identity()), x)
    message = str(err.value)
    assert message.startswith("dynamic.width: ") and "\n" not in message
    # The first layer after a channel shuffle (stage2.0 ends with one) is named.
    assert message.startswith(
        "dynamic.width: at width 0.25 stage2.1.branch2.0 (Conv2d) does not read the first "
        "channels of what it reads in the full model with the cut channels zeroed"
    )


def _quadrants(n: int = 240, seed: int = 0) -> Task:
    """(N, 1, 8, 8) noise with one quadrant brighter; the label is that quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    for q in range(4):
        rows, cols = divmod(q, 2)
        x[y == q, :, 4 * rows : 4 * rows + 4, 4 * cols : 4 * cols + 4] += 1.5
    third = n // 3
    splits = {
        name: TensorDataset(x[i * third : (i + 1) * third], y[i * third : (i + 1) * third])
        for i, name in enumerate(("train", "val", "test"))
    }
    return classification_task(splits, batch_size=32)


def test_the_stage_on_a_resnet_trains_gates_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = resnet(depth=8, width=8, num_classes=4)
    task = _quadrants()
    ctx = Context(task, quiet=True)
    config = WidthConfig(
        widths=(0.5, 1.0),
        steps=80,
        lr=0.01,
        distill_from="widest",  # the resnet is untrained: the labels teach
        gate_steps=20,
        calibrate_norms=64,
        max_drop=100.0,
    )
    model = dynamic_width(net, config, ctx)
    r = ctx.records
    assert r["reordered"] is False  # not a chain: the channels keep their order
    assert (
        r["macs_per_width"][1] == r["static_macs"] == count_flops(net, torch.zeros(1, 1, 8, 8)).macs
    )
    assert (
        r["macs_per_width"][0]
        == count_flops(resnet(depth=8, width=4, num_classes=4), torch.zeros(1, 1, 8, 8)).macs
    )
    assert min(r["width_accuracy"]) > 40.0  # 4 classes: 25% by chance
    x = torch.cat([b[0] for b in task.loader("test")])
    model.eval()
    with torch.no_grad():
        out = model(x)
    saved = nc.save(model, tmp_path / "resnet_width")
    loaded = nc.load(saved).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
        loaded.fixed_width = 0  # no gate: the narrow width's own MACs
        assert count_flops(loaded, x[:1]).macs == r["macs_per_width"][0]


def test_a_loaded_plan_that_does_not_fit_the_forward_fails_in_one_line(tmp_path: Path) -> None:
    """An edited manifest whose channel counts are prefixes of each layer (so they load) but
    not what the forward gives: the first narrow run names the layer instead of a shape error
    from inside torch."""
    torch.manual_seed(0)
    net = resnet(depth=8, width=8)
    x = torch.randn(2, 1, 8, 8)
    model = WidthModel(net, plan_width(net, [0.5, 1.0], x), [0.5, 1.0], nn.Linear(64, 2))
    path = nc.save(model, tmp_path / "w")
    j = model.steps.index("layer1.0.conv1")
    edited = [list(c) for c in model.channels_out]
    edited[j] = [3, 8]  # a prefix of its 8 channels, but bn1 reads 4 at width 0.5
    _edited(path, "channels_out", edited)
    loaded = nc.load(path).eval()
    loaded.fixed_width = 0
    with pytest.raises(ConfigError) as err, torch.no_grad():
        loaded(x)
    assert str(err.value) == (
        "dynamic.width: at width 0.5 layer1.0.bn1 reads 3 channels where the plan says 4: "
        "the plan does not fit this model's forward"
    )


def test_a_bert_slims_whole_heads_and_its_ffn_not_its_residual_stream(tmp_path: Path) -> None:
    """Cutting every layer fails (LayerNorm reads the residual stream); one module's children
    at a time, a BERT's query/key/value drop whole heads (16 of 32 channels, head size 16),
    its FFN keeps half its hidden units, and what writes the residual stream stays whole."""
    transformers = pytest.importorskip("transformers")
    from tests.dynamic.test_layer_exits import _bert, _ids, _labelled

    net = _bert()
    x = _ids(2)
    plan = plan_slimmable(net, [0.5, 1.0], x)
    out = dict(zip(plan.steps, plan.channels_out, strict=True))
    layer = "bert.encoder.layer.0."
    for name in ("query", "key", "value"):
        assert out[f"{layer}attention.self.{name}"] == [16, 32]
    assert out[f"{layer}intermediate.dense"] == [32, 64]
    assert out[f"{layer}attention.output.dense"] == out[f"{layer}output.dense"] == [32, 32]
    # At width 0.25 (8 channels) a head cannot be cut in half: only the FFN is.
    narrow = plan_slimmable(net, [0.25, 1.0], x)
    quarter = dict(zip(narrow.steps, narrow.channels_out, strict=True))
    assert f"{layer}attention.self.query" not in quarter
    assert quarter[f"{layer}intermediate.dense"] == [16, 64]
    # The untrained BERT's attention is nearly uniform, so on its own weights cutting the
    # query alone (which leaves the heads mismatched) looks exact; random weights refuse it.
    q = f"{layer}attention.self.query"
    with pytest.raises(ModelError, match="sliced model's outputs are not the full one's"):
        _proved(net, [0.5, 1.0], x, frozenset(cuttable(net, x)) - {q})
    # The stage end to end: half the MACs at width 0.5, saved and loaded bit for bit.
    task = _labelled(net, _ids(180))
    ctx = Context(task, quiet=True)
    config = WidthConfig(widths=(0.5, 1.0), steps=30, lr=1e-3, gate_steps=10, max_drop=100.0)
    model = dynamic_width(net, config, ctx)
    macs = ctx.records["macs_per_width"]
    assert macs[1] == ctx.records["static_macs"] and macs[0] < 0.55 * macs[1]
    ids = torch.cat([b[0] for b in task.loader("test")])
    path = nc.save(model, tmp_path / "bert_width")
    loaded = nc.load(path, trust=[transformers.BertForSequenceClassification]).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.eval()(ids))


def test_a_vit_slims_whole_heads_beside_its_output_projection() -> None:
    """A ViT's attention holds q, k, v and the output projection as siblings: the group
    without its last member is tried, so whole heads are dropped there too."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    net = transformers.ViTForImageClassification(config).eval()
    plan = plan_slimmable(net, [0.5, 1.0], torch.randn(2, 1, 8, 8))
    out = dict(zip(plan.steps, plan.channels_out, strict=True))
    read = dict(zip(plan.steps, plan.channels_in, strict=True))
    attention = [s for s in plan.steps if ".attention." in s]
    assert {s.rpartition(".")[2] for s in attention} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    for s in attention:
        if s.endswith("o_proj"):
            assert read[s] == [16, 32] and out[s] == [32, 32]  # two of four heads read
        else:
            assert out[s] == [16, 32]
