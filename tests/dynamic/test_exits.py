from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.dynamic.chain import plan_chain
from netchisel.dynamic.exits import EarlyExitModel
from netchisel.dynamic.heads import make_head
from netchisel.zoo.models import resnet
from tests.dynamic._nets import Calls, conv_chain


def _model(backbone: nn.Module, exits: list[str], x: torch.Tensor) -> EarlyExitModel:
    chain = plan_chain(backbone, exits, (x[:2],))
    classes = chain.output.shape[-1]
    torch.manual_seed(1)
    heads = [make_head(f, classes, 1, n) for f, n in zip(chain.features, exits, strict=True)]
    return EarlyExitModel(
        backbone, heads, chain.steps, chain.exit_after, [], num_classes=classes
    ).eval()


def _median_threshold(model: EarlyExitModel, x: torch.Tensor) -> float:
    with torch.no_grad():
        probs = model.all_outputs(x)[0].softmax(-1).amax(-1)
    return float(probs.median())


def test_batched_exits_regroup_and_the_rest_get_the_original_outputs_exactly() -> None:
    net = conv_chain().eval()
    x = torch.randn(64, 1, 8)
    model = _model(net, ["1"], x)
    model.set_thresholds([_median_threshold(model, x)])
    with torch.no_grad():
        reference = net(x)
        heads = model.all_outputs(x)[0]
        later = Calls(net[2]), Calls(net[5])
        out, taken = model.exiting(x)
    stayed = taken == 1
    # torch's median of 64 is the 32nd value: 32 are strictly above it and leave, 32 stay.
    assert int((taken == 0).sum()) == 32 and int(stayed.sum()) == 32
    assert torch.equal(out[stayed], reference[stayed])
    assert torch.equal(out[~stayed], heads[~stayed])
    # The later layers ran once, on the 33 that stayed only.
    assert [(c.calls, c.samples) for c in later] == [(1, 32), (1, 32)]


def test_batch_one_returns_at_the_first_sure_exit() -> None:
    net = conv_chain().eval()
    x = torch.randn(16, 1, 8)
    model = _model(net, ["1", "3"], x)
    model.set_thresholds([0.0, 0.0])  # every sample is sure at the first exit
    second, last = Calls(net[2]), Calls(net[5])
    with torch.no_grad():
        for i in range(4):
            out, taken = model.exiting(x[i : i + 1])
            assert taken.tolist() == [0]
            assert torch.equal(out, model.heads[0](net[1](net[0](x[i : i + 1]))))
    assert (second.calls, last.calls) == (0, 0)
    model.set_thresholds([1.0, 1.0])  # never: batch 1 runs through, equal to the original
    heads = [Calls(head) for head in model.heads]
    with torch.no_grad():
        out, taken = model.exiting(x[:1])
    assert (second.calls, last.calls) == (1, 1)
    assert [h.calls for h in heads] == [0, 0]  # exits that never fire do not run their heads
    assert taken.tolist() == [2] and torch.equal(out, net(x[:1]))


def test_forward_at_batch_one_is_exiting_without_its_bookkeeping() -> None:
    net = conv_chain().eval()
    x = torch.randn(32, 1, 8)
    model = _model(net, ["1", "3"], x)
    threshold = _median_threshold(model, x)
    model.set_thresholds([threshold, threshold])
    second = Calls(net[2])
    with torch.no_grad():
        one_by_one = [model.exiting(x[i : i + 1]) for i in range(32)]
        second.calls = second.samples = 0
        singles = torch.cat([model(x[i : i + 1]) for i in range(32)])
    assert torch.equal(singles, torch.cat([out for out, _ in one_by_one]))  # bit for bit
    taken = torch.cat([t for _, t in one_by_one])
    assert 0 < int((taken == 0).sum()) < 32  # some leave at the first exit, some do not
    # The second step ran once per sample that did not leave at the first exit.
    assert second.calls == int((taken > 0).sum()) and second.samples == second.calls


def test_outputs_keep_the_original_order_through_two_exits() -> None:
    net = resnet(depth=8, width=4).eval()
    x = torch.randn(32, 1, 16, 16)
    model = _model(net, ["layer1", "layer2"], x)
    with torch.no_grad():
        outs = model.all_outputs(x)
        sure = [z.softmax(-1).amax(-1) for z in outs[:2]]
    model.set_thresholds([float(sure[0].quantile(0.75)), float(sure[1].quantile(0.5))])
    with torch.no_grad():
        out, taken = model.exiting(x)
        reference = net(x)
    counts = torch.bincount(taken, minlength=3).tolist()
    assert counts[0] == 8 and sum(counts) == 32 and counts[2] > 0
    for k in range(2):
        assert torch.equal(out[taken == k], outs[k][taken == k])
    # BatchNorm in eval mode and regrouped batches: the same numbers as the whole batch.
    assert torch.equal(out[taken == 2], reference[taken == 2])


def test_training_mode_forward_is_the_backbone() -> None:
    net = conv_chain()
    x = torch.randn(4, 1, 8)
    model = _model(net, ["1"], x).train()
    assert torch.equal(model(x), net(x))


def test_thresholds_are_checked() -> None:
    x = torch.randn(4, 1, 8)
    model = _model(conv_chain(), ["1"], x)
    with pytest.raises(ConfigError, match=r"thresholds\[0\] = 1.5 is outside \[0, 1\]"):
        model.set_thresholds([1.5])
    with pytest.raises(ConfigError, match="2 thresholds for 1 exits"):
        model.set_thresholds([0.5, 0.5])
    with pytest.raises(ConfigError, match="criterion 'margin' is not one of"):
        EarlyExitModel(conv_chain(), [], [], [], [], criterion="margin")


def test_save_load_keeps_heads_thresholds_and_exits(tmp_path: Path) -> None:
    net = resnet(depth=8, width=4).eval()
    x = torch.randn(16, 1, 16, 16)
    model = _model(net, ["layer1"], x)
    model.set_thresholds([_median_threshold(model, x)])
    model.exit_fractions = [0.5, 0.5]
    loaded = nc.load(nc.save(model, tmp_path / "ee"))
    assert isinstance(loaded, EarlyExitModel)
    assert loaded.thresholds == model.thresholds
    assert loaded.exit_names == ["layer1"] and loaded.exit_fractions == [0.5, 0.5]
    with torch.no_grad():
        a, taken_a = model.exiting(x)
        b, taken_b = loaded.exiting(x)
    assert torch.equal(taken_a, taken_b) and torch.equal(a, b)
    assert int((taken_a == 0).sum()) == 8  # above the (lower) median of 16


def test_an_in_place_step_after_an_exit_leaves_the_heads_feature_as_inference_sees_it() -> None:
    # torchvision's VGG: BatchNorm, then ReLU(inplace=True). all_outputs (training,
    # calibration) gave the head the feature after the ReLU had overwritten it; the real
    # forward gives it the feature before: the thresholds were calibrated on other logits.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 3)
    ).eval()
    model = EarlyExitModel(net, [nn.Linear(8, 3)], ["0", "1", "2", "3"], [1], [0.0]).eval()
    x = torch.randn(16, 4)
    with torch.no_grad():
        early, taken = model.exiting(x)  # threshold 0: everything leaves at the exit
        assert taken.tolist() == [0] * 16
        assert torch.equal(model.all_outputs(x)[0], early)
        assert (model.features(x)[0] < 0).any()  # the feature before the ReLU
    model.train()  # joint training: the in-place ReLU no longer breaks the head's backward
    outs = model.all_outputs(x)
    sum(o.sum() for o in outs).backward()  # type: ignore[union-attr]
    assert model.heads[0].weight.grad is not None
