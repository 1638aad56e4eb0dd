"""A dynamic model's plain attributes come from the manifest, which is hostile data: values
that disagree with the model (a width above 1, an exit past the last step, top-k above the
experts) are refused at load in one line, not met at the first forward."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.errors import ArtifactError
from netchisel.core.task import classification_task
from netchisel.dynamic import EarlyExitConfig, WidthConfig
from netchisel.dynamic.moe_costs import measure_routing
from netchisel.dynamic.moe_layer import MoEFeedForward, make_expert
from netchisel.dynamic.moe_model import MoEModel
from tests.dynamic._nets import conv_chain, labelled_by


def _edited(path: Path, attr: str, value: Any) -> None:
    """Set every `attr` in the manifest's described attributes to `value`."""
    manifest = json.loads((path / "manifest.json").read_text())
    hits = 0

    def walk(node: Any) -> None:
        nonlocal hits
        if isinstance(node, dict):
            if attr in node.get("attrs", {}):
                node["attrs"][attr] = value
                hits += 1
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(manifest)
    assert hits, attr
    (path / "manifest.json").write_text(json.dumps(manifest))


def _width(tmp: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 16, 2),
    )  # fmt: skip
    x = torch.randn(64, 1, 4, 4)
    data = TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())
    task = classification_task({"train": data, "val": data}, batch_size=16)
    config = WidthConfig(widths=(0.5, 1.0), steps=3, gate_steps=3, max_drop=100.0)
    return nc.save(nc.dynamic_(net, config, task), tmp / "width")


def _exits(tmp: Path) -> Path:
    net = conv_chain()
    config = EarlyExitConfig(exits=("1",), steps=3, max_drop=100.0)
    return nc.save(nc.dynamic_(net, config, labelled_by(net)), tmp / "exits")


def _moe(tmp: Path) -> Path:
    torch.manual_seed(0)
    layer = MoEFeedForward(nn.Linear(4, 2), [make_expert(4, 8, 4, nn.ReLU())] * 2, None)
    net = nn.Sequential(layer, nn.Linear(4, 3))
    data = TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    routing = measure_routing(net, classification_task({"val": data}, batch_size=4))
    return nc.save(MoEModel(net, ["0"], routing), tmp / "moe")


def _routing(**row: Any) -> dict[str, Any]:
    """A routing record as the manifest stores it (tagged dicts), its one layer's row
    edited."""
    counts = {"tokens": 10, "load": [5, 5], "kept": [5, 5], "dropped": 0, "router_entropy": 0.6}
    layers = {"__dict__": {"0": {"__dict__": {**counts, **row}}}}
    return {"__dict__": {"split": "val", "samples": 10, "layers": layers}}


CASES: list[tuple[Callable[[Path], Path], str, Any, str]] = [
    (_width, "widths", [5.0, 1.0], r"widths\[0\] = 5.0 is outside \(0, 1\]"),
    (_width, "widths", [1.0, 0.5], "widths must increase"),
    (_width, "widths", [0.5], "one channel count per width"),
    (_width, "fixed_width", 7, "fixed_width 7 is not an index"),
    (_exits, "exit_after", [9], r"exit_after \[9\] is not steps' indices"),
    (_exits, "thresholds", [3.0], r"thresholds\[0\] = 3.0 is outside"),
    (_exits, "exit_fractions", [1.0], "one share per path"),
    (_exits, "steps", ["0", "1", "os", "3", "4", "5"], "step 'os' is not a module of the back"),
    (_exits, "steps", ["0", "1", "__class__", "3", "4", "5"], "step '__class__' is not a mod"),
    (_exits, "steps", ["0", "1", "", "3", "4", "5"], "step '' is not a module of the backbone"),
    (_moe, "top_k", 5, "top_k = 5 is more than experts = 2"),
    (_moe, "capacity_factor", -1.0, "capacity"),
    (_moe, "gating", "os.system", "gating 'os.system' is not one of"),
    # What a manifest could set and nothing checked before (refused at load now, each one
    # line; loaded, they failed at the first forward or gave absurd expected MACs):
    (_width, "steps", ["os", "1", "4"], "step 'os' of kind 'conv' is not such a"),
    (_width, "kinds", ["conv", "os.system", "linear"], "'os.system'"),
    (_width, "kinds", ["linear", "norm", "linear"], "step '0' of kind"),
    (
        _width,
        "channels_out",
        [[-4, 8], [4, 8], [2, 2]],
        r"step '0': channel counts \[-4, 8\] are not prefixes of its 8 channels",
    ),
    (
        _width,
        "channels_in",
        [[1, 1], [4, 8], [64, 1280]],
        r"step '4': channel counts \[64, 1280\] are not prefixes of its 128",
    ),
    (
        _width,
        "channels_in",
        [[1, 1], [3, 8], [64, 128]],
        r"narrow BatchNorms of \[4\] channels for widths of \[3\]",
    ),
    (_width, "gate_bias", float("nan"), "gate_bias must be a finite number, got nan"),
    (_width, "gate_bias", "x", "gate_bias must be a finite number, got 'x'"),
    (_width, "width_fractions", [-1.0, 2.0], r"width_fractions \[-1.0, 2.0\] are not 2 shares"),
    (_exits, "exit_fractions", [-1.0, 2.0], r"exit_fractions \[-1.0, 2.0\] are not 2 shares"),
    (_exits, "exit_fractions", [0.5, 0.25], r"are not 2 shares in \[0, 1\] adding up to 1"),
    (_exits, "num_classes", -3, "num_classes must be >= 2, got -3"),
    (_exits, "exit_after", [True], r"exit_after \[True\] is not steps' indices"),
    (_moe, "dropout", 5.0, r"dropout must be in \[0, 1\), got 5.0"),
    (_moe, "track_entropy", "yes", "track_entropy must be a bool, got 'yes'"),
    (_moe, "layers", ["os"], r"layers \['os'\] are not the model's MoE layers \['0'\]"),
    (_moe, "routing", _routing(kept=[5, -5]), "routing of '0' needs tokens, dropped"),
    (_moe, "routing", _routing(load=[5]), "2 non-negative counts in load and kept"),
    (_moe, "routing", _routing(router_entropy="x"), "routing of '0' needs"),
]


@pytest.mark.parametrize(("make", "attr", "value", "message"), CASES)
def test_a_hostile_attribute_is_refused_at_load(
    make: Callable[[Path], Path], attr: str, value: Any, message: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    nc.load(path)  # as saved: loads
    _edited(path, attr, value)
    with pytest.raises(ArtifactError, match=message) as err:
        nc.load(path)
    assert "\n" not in str(err.value)
