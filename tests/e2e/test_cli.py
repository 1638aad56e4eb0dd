"""The CLI as a user meets it: run a recipe, profile its artifact, re-render, break things."""

from __future__ import annotations

import io
import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from netchisel.artifact.store import artifact_bytes, load
from netchisel.cli import main
from netchisel.measure import count_flops

RECIPE = {
    "name": "tiny",
    "model": {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [32, 16]}},
    "task": {"zoo": "digits", "batch_size": 64},
    "stages": [{"finetune": {"epochs": 3, "lr": 0.01}}, {"evaluate": {"split": "test"}}],
    "profile": {"batch_size": 16, "repeats": 3, "warmup": 1},
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `netchisel ARGS` in-process through the console-script entry point."""
    argv = sys.argv
    sys.argv = ["netchisel", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    from netchisel.pipeline.runner import run_recipe

    run_recipe(recipe, output=root / "out", quiet=True)
    return root / "out"


def test_run_writes_artifact_and_reports(run_dir: Path) -> None:
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "model",
        "report.html",
        "report.json",
        "report.md",
    ]
    report = json.loads((run_dir / "report.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert names == ["original", "finetune", "evaluate"]
    trained = report["steps"][1]["metrics"]["accuracy"]
    assert trained > report["steps"][0]["metrics"]["accuracy"] + 50  # from chance to trained
    assert report["steps"][2]["records"]["test_accuracy"] > 85.0
    # The size in the report is the size of the files on disk.
    files = sum(p.stat().st_size for p in (run_dir / "model").iterdir())
    assert (
        report["steps"][-1]["profile"]["bytes_on_disk"]
        == files
        == artifact_bytes(run_dir / "model")
    )
    html = (run_dir / "report.html").read_text()
    assert html.count("<svg") >= 3 and "<script" not in html and "http" not in html.split("<svg")[0]


def test_report_flops_equal_a_fresh_count_of_the_artifact(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    model = load(run_dir / "model")
    flops = count_flops(model, torch.zeros(16, 1, 8, 8)).flops
    # mlp 64-32-16-10: 2*MACs + biases + 2 ReLUs, for a batch of 16.
    macs = 64 * 32 + 32 * 16 + 16 * 10
    assert flops == 16 * (2 * macs + (32 + 16 + 10) + (32 + 16))
    assert report["steps"][-1]["profile"]["flops"] == flops


def test_profile_cli_agrees_with_the_report(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(
        capsys, "profile", str(run_dir / "model"), "--batch-size", "16", "--json", "--repeats", "3"
    )
    assert code == 0
    measured = json.loads(out)
    final = json.loads((run_dir / "report.json").read_text())["steps"][-1]["profile"]
    for key in ("params", "params_nonzero", "flops", "macs", "bytes_on_disk", "bytes_in_memory"):
        assert measured[key] == final[key], key


def test_profile_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "profile", "cnn", "--batch-size", "2", "--no-latency")
    assert code == 0
    assert "FLOPs" in out and "energy per sample (estimate)" in out and "uncounted ops" in out


def test_report_command_rerenders(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "report.md").unlink()
    code, out, _ = cli(capsys, "report", str(run_dir))
    assert code == 0 and (run_dir / "report.md").exists() and "report.html" in out
    assert "ms (p10-p90)" in out
    # every step's latency shows its spread: "median (p10-p90)"
    assert len(re.findall(r"\d+\.\d{3} \(\d+\.\d{3}-\d+\.\d{3}\)", out)) == 3


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import netchisel

    assert cli(capsys, "--version") == (0, f"netchisel {netchisel.__version__}\n", "")


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "info")
    data = json.loads(out)
    assert code == 0 and data["torch"].startswith("2.") and "finetune" in data["stages"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yaml"], "recipe missing.yaml does not exist"),
        (["profile", "no/such/dir"], "is not a zoo name"),
        (["profile", "cnn", "--input-shape", "1,a"], "--input-shape '1,a'"),
        (["report", "."], "has no report.json"),
        (["profile", "cnn", "--input-shape", "1,3,32,32"], "RuntimeError: Given groups=1"),
        (["profile", "cnn", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["profile", "cnn", "--input-shape", "0,1,32,32"], "every size must be >= 1"),
        (["profile", "cnn", "--input-shape", "1,,32,32"], "expected numbers like 1,3,32,32"),
    ],
)
def test_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("netchisel: error: ") and message in err


def test_bad_recipe_and_corrupt_artifact(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**RECIPE, "stages": [{"finetune": {"epoch": 2}}]}))
    code, _, err = cli(capsys, "run", str(bad), "--output", str(tmp_path / "never"))
    assert code == 2 and "unknown key 'epoch'" in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (run_dir / "model").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code, _, err = cli(capsys, "profile", str(broken))
    assert code == 2 and "is corrupt" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (  # a runtime error names the stage that raised it, and the pattern as written
            {"stages": [{"factorize.svd": {"layers": [r"no\.such"]}}]},
            r"stages[0] factorize.svd: include pattern 'no\.such' matches no layer",
        ),
        (  # the model does not fit the task's inputs: said before any stage runs
            {"model": {"zoo": "cnn", "pretrained": False}},
            "the model cannot run on the task's inputs (16x1x8x8): ",
        ),
    ],
)
def test_runtime_mistakes_are_one_line_naming_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, object], message: str
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, **changes}))
    code, _, err = cli(capsys, "run", str(recipe), "--output", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    code, _, err = cli(capsys, "run", str(tmp_path))
    assert code == 2 and f"recipe {tmp_path} is a directory: give one YAML file in it" in err


def test_warnings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    changes = {
        "model": {"zoo": "cnn", "pretrained": False},
        "task": {"zoo": "digits32"},
        "stages": [{"quantize.dynamic_int8": {}}],
        "profile": {"batch_size": 4, "repeats": 2, "warmup": 1},
    }
    recipe.write_text(yaml.safe_dump({**RECIPE, **changes}))
    code, _, err = cli(capsys, "run", str(recipe), "--output", str(tmp_path / "out"), "-q")
    assert code == 0, err
    assert err == (
        "netchisel: warning: quantize.dynamic_int8: no kernel for these layers, they stay in "
        "float: features.conv1 (Conv2d), features.conv2 (Conv2d), features.conv3 (Conv2d) "
        "(quantize.static_int8 covers convolutions; embeddings: true stores tables as int8)\n"
    )


def test_an_artifact_is_a_model_source(run_dir: Path, tmp_path: Path) -> None:
    from netchisel.pipeline.recipe import parse_recipe
    from netchisel.pipeline.runner import run_recipe

    recipe = parse_recipe(
        {
            "model": {"artifact": str(run_dir / "model")},
            "stages": [],
            "profile": {"batch_size": 4, "latency": False},
        }
    )
    result = run_recipe(recipe, output=tmp_path / "again", quiet=True)
    (step,) = result.report["steps"]
    assert step["metrics"] == {} and result.report["task"] is None
    macs = 64 * 32 + 32 * 16 + 16 * 10
    assert step["profile"]["flops"] == 4 * (2 * macs + (32 + 16 + 10) + (32 + 16))
    same = load(tmp_path / "again" / "model")
    original = load(run_dir / "model")
    for a, b in zip(same.state_dict().values(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_output_that_is_not_a_run_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    code, _, err = cli(capsys, "run", str(recipe), "--output", str(mine))
    assert code == 2 and "is not empty and is not a netchisel run" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_the_demo_prunes_distills_and_quantizes(tmp_path: Path) -> None:
    # The demo's own stages, on an untrained width-4 CNN: the reference CNN is not trained here.
    from netchisel.pipeline.recipe import parse_recipe
    from netchisel.pipeline.runner import run_recipe
    from netchisel.zoo import models

    raw = yaml.safe_load(resources.files("netchisel").joinpath("recipes/demo.yaml").read_text())
    assert raw["model"] == "cnn" and raw["task"] == "digits32"
    raw["model"] = {"zoo": "cnn", "pretrained": False, "kwargs": {"width": 4}}
    stages = {name: options for entry in raw["stages"] for name, options in entry.items()}
    assert stages["distill"] == {"epochs": 3, "lr": 0.003, "temperature": 4, "alpha": 0.5}
    del stages["distill"]["epochs"]
    stages["distill"]["steps"] = 2
    stages["quantize.static_int8"]["calibration_samples"] = 32
    raw["profile"] = {"batch_size": 4, "latency": False}
    result = run_recipe(parse_recipe(raw, "demo"), output=tmp_path / "demo", quiet=True)
    steps = result.report["steps"]
    assert [s["name"] for s in steps] == [
        "original",
        "evaluate",
        "prune.structured",
        "distill",
        "evaluate",
        "quantize.static_int8",
        "evaluate",
    ]
    assert steps[3]["records"]["steps"] == 2
    params = [s["profile"]["params"] for s in steps]
    # Half the channels of every conv: the width-2 CNN's shape.
    width_2 = sum(p.numel() for p in models.cnn(width=2).parameters())
    assert params[0] == sum(p.numel() for p in models.cnn(width=4).parameters())
    assert params[2] == params[3] == width_2
    disk = [s["profile"]["bytes_on_disk"] for s in steps]
    assert disk[5] < disk[3] < disk[0]  # a model this small is mostly its manifest


def test_an_unknown_demo_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "demo", "--model", "vgg")
    assert code == 2 and err == "netchisel: error: --model 'vgg': the demos are cnn, resnet\n"


def _summary_at(width: int, report: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """What `_print_summary` prints on a terminal `width` columns wide."""
    from rich.console import Console

    import netchisel.cli

    console = Console(width=width, file=io.StringIO())
    monkeypatch.setattr(netchisel.cli, "console", console)
    netchisel.cli._print_summary(report, Path("out"))
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_the_summary_fits_80_columns_and_shows_nonzero_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.report.test_render import _pruned_then_tested

    report = _pruned_then_tested()
    report["steps"][1]["name"] = "prune.unstructured_long_name"  # a wide step column too
    out = _summary_at(80, report, monkeypatch)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    assert "1,000 (nz 100)" in out and "97.25 (test)" in out  # the evaluate row's test split
    assert "Latency: eager backend, 2 threads" in out
    wide = _summary_at(160, report, monkeypatch)  # room for every column
    assert "1.250 (1.000-1.500)" in wide and "µJ est." in wide and "FLOPs" in wide


def test_the_summary_of_a_run_names_the_test_split_at_80_columns(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    out = _summary_at(80, report, monkeypatch)
    assert max(len(line) for line in out.splitlines()) <= 80
    test_accuracy = report["steps"][2]["records"]["test_accuracy"]
    row = next(line for line in out.splitlines() if "evaluate" in line)
    assert f"{test_accuracy:.4g} (test)" in row
    assert "(nz" not in out  # nothing was pruned
