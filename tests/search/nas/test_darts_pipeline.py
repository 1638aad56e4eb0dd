"""The founding pipeline: a DARTS spec searches, derives, trains, quantizes and ships; a
broken spec fails before the search, with one line and nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

import netchisel as nc
from netchisel.core.errors import ConfigError
from netchisel.core.task import Task, classification_task
from netchisel.quantize.formats.static_int8 import StaticInt8Weight
from netchisel.search.nas import cell_net
from netchisel.search.nas.darts_pipeline import TRACE_FILE, is_darts_spec, run_darts
from netchisel.zoo.mnist1d import mnist1d_splits
from tests.e2e.test_cli import cli

MACRO, CELLS = "netchisel.search.nas:macro_net", "netchisel.search.nas:cell_net"
EXAMPLE = Path(__file__).parents[3] / "examples" / "search" / "darts_mnist1d.yaml"


def small_mnist1d() -> Task:
    """MNIST-1D cut to 192 train / 64 val / 64 test sequences, so a whole run takes seconds."""
    sizes = {"train": 192, "val": 64, "test": 64}
    splits = {
        k: TensorDataset(*(t[:n] for t in mnist1d_splits()[k].tensors)) for k, n in sizes.items()
    }
    return classification_task(splits, batch_size=32, name="mnist1d_small")  # type: ignore[arg-type]


def tiny_spec() -> dict[str, Any]:
    """The shipped example, shrunk to seconds: 2 epochs of 3 steps, a 4-wide net."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["task"] = {"builder": "tests.search.nas.test_darts_pipeline:small_mnist1d"}
    data["darts"] = {
        "epochs": 2,
        "steps_per_epoch": 3,
        "nodes": 2,
        "width": 4,
        "reductions": 1,
        "batch_size": 32,
        "eigen_iterations": 2,
        "ops": ["sep3", "max3", "skip"],
        "seed": 0,
    }
    data["recipe"]["model"]["kwargs"]["width"] = 6
    data["recipe"]["stages"][0]["finetune"]["steps"] = 5
    data["recipe"]["profile"] = {"batch_size": 1, "latency": False}
    return data


def test_the_example_is_a_darts_spec() -> None:
    assert is_darts_spec(EXAMPLE)
    assert not is_darts_spec(EXAMPLE.parent / "hpo_mlp.yaml")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One run of the tiny spec (the CLI routes a `darts:` spec to this same function)."""
    tmp = tmp_path_factory.mktemp("darts")
    spec = tmp / "darts.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec()))
    out = tmp / "run"
    run = run_darts(spec, output=out, quiet=True)
    return out, run


def test_search_derive_train_int8_ship(shipped: tuple[Path, Any]) -> None:
    out, run = shipped
    trace = json.loads((out / TRACE_FILE).read_text())
    assert [r["epoch"] for r in trace["trace"]] == [0, 1]
    assert trace["candidate"] == run.search.candidate
    assert len(trace["alpha_history"]) == 2
    # The shipped model is the derived genotype at the recipe's width; each conv and linear
    # is int8 or named, with its reason, in the stage's record.
    float_net = cell_net(**(run.search.candidate | run.search.net_kwargs | {"width": 6}))
    loaded = nc.load(out / "model")
    int8 = [m for m in loaded.modules() if isinstance(m, StaticInt8Weight)]
    convs = [m for m in float_net.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    record = next(s for s in run.run.report["steps"] if s["name"] == "quantize.static_int8")
    assert len(int8) == record["records"]["quantized_layers"] >= 1
    floats = record["records"]["float_layers"]
    assert len(int8) + len(floats) == len(convs)
    assert all("output is never used" in why for why in floats), floats  # dead code only
    x = torch.randn(3, 1, 40)
    assert loaded(x).shape == (3, 10)
    names = [s["name"] for s in run.run.report["steps"]]
    assert names[-2:] == ["quantize.static_int8", "evaluate"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {}}, "darts spec: unknown key 'space'"),
        ({"darts": {"epoch": 3}}, "darts: unknown field 'epoch'"),
        ({"darts": {"order": 3}}, "DartsConfig order must be 1 or 2, got 3"),
        ({"recipe": {"model": "cnn", "stages": []}}, "must place the derived network"),
        (
            {"recipe": {"model": {"builder": "x:y", "kwargs": "$candidate"}, "stages": ["nope"]}},
            "unknown stage 'nope'",
        ),
        ({"task": "imagenet"}, "imagenet"),
        ({"darts": {"steps_per_epoch": 1.5}}, "DartsConfig steps_per_epoch must be an integer"),
        ({"darts": {"ops": "conv3"}}, "DartsConfig ops must be a list of op names"),
        (
            {"recipe": {"model": {"builder": MACRO, "kwargs": "$candidate"}, "stages": []}},
            "macro_net: unknown argument 'normal1_in1'",
        ),
        (
            {"recipe": {"model": {"builder": CELLS, "kwargs": "$candidate"}, "task": "digits32"}},
            "recipe.task 'digits32' differs from task",
        ),
    ],
)
def test_a_broken_spec_fails_before_the_search(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = tiny_spec() | change
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as info:
        run_darts(data, output=tmp_path / "run", quiet=True)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "run").exists()


def test_the_cli_routes_a_darts_spec_and_refuses_study_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "darts.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec() | {"darts": {"epoch": 1}}))
    code, _, err = cli(capsys, "search", str(spec), "--trials", "3")
    assert code == 2 and err.strip() == (
        "netchisel: error: --trials: a DARTS spec runs one search, in one process"
    )
    code, _, err = cli(capsys, "search", str(spec), "--output", str(tmp_path / "run"))
    assert code == 2 and "darts: unknown field 'epoch'" in err
    assert not (tmp_path / "run").exists()


def test_running_again_replaces_the_earlier_run(shipped: tuple[Path, Any]) -> None:
    out, _ = shipped
    before = (out / TRACE_FILE).stat().st_mtime_ns
    run_darts(tiny_spec(), output=out, quiet=True)
    assert (out / TRACE_FILE).stat().st_mtime_ns > before
    assert sorted(p.name for p in out.iterdir()) == [
        TRACE_FILE,
        "model",
        "report.html",
        "report.json",
        "report.md",
    ]


def test_a_foreign_output_is_refused_before_the_search(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="is not empty and is not a netchisel run"):
        run_darts(tiny_spec(), output=tmp_path, quiet=True)
    assert time.perf_counter() - started < 5
