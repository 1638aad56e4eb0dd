"""The runner's promises about its output directory: a report always sits beside the model
it describes, whatever moment a run is stopped at (Ctrl-C, kill -9), and the same command
run again completes; an output it cannot write is refused before any work."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from netchisel.artifact.store import artifact_bytes
from netchisel.cli import main

RECIPE = {
    "name": "tiny",
    "model": {"zoo": "mlp", "pretrained": False, "kwargs": {"hidden": [16]}},
    "task": {"zoo": "digits", "batch_size": 64},
    "stages": [{"finetune": {"epochs": 1, "lr": 0.01}}, {"evaluate": {"split": "test"}}],
    "profile": {"batch_size": 8, "latency": False},
}

# `netchisel ARGS` in a child process that stops itself with SIG at POINT:
# stage (after the first stage, before its measurement), commit (the reports are written in
# the staging directory, the swap has not happened), committed (just after the swap), or
# none (the test sends the signal from outside after a delay).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import netchisel.pipeline.runner as runner
    point, sig, *args = sys.argv[1:]
    die = lambda: os.kill(os.getpid(), getattr(signal, sig))
    if point == "stage":
        real_step, calls = runner._step, []
        def step(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                die()
            return real_step(*a, **k)
        runner._step = step
    import netchisel.report.render as render
    real_write, real_commit = render.write_reports, runner.commit_dir
    if point == "commit":
        render.write_reports = lambda *a: (real_write(*a), die())
    if point == "committed":
        runner.commit_dir = lambda *a: (real_commit(*a), die())
    sys.argv = ["netchisel", *args]
    from netchisel.cli import main
    main()
    """
)


def child(
    point: str, sig: str, recipe: Path, out: Path, delay: float | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", CHILD, point, sig, "run", str(recipe), "--output", str(out)]
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if delay is not None:
        time.sleep(delay)
        process.send_signal(getattr(signal, sig))
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def cli(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["netchisel", *args, "-q"]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = argv
    return 0


def described_seed(out: Path) -> int:
    """The seed of the run in `out`, after checking that its report describes its model:
    every file the report lists has the listed size and SHA-256, and nothing else is there."""
    report = json.loads((out / "report.json").read_text())
    files = report["artifact"]["files"]
    model = out / report["artifact"]["path"]
    assert sorted(p.name for p in model.iterdir()) == sorted([*files, "manifest.json"])
    for name, info in files.items():
        data = (model / name).read_bytes()
        assert {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} == info
    assert report["artifact"]["bytes"] == artifact_bytes(model)
    assert sorted(p.name for p in out.iterdir()) == [
        "model",
        "report.html",
        "report.json",
        "report.md",
    ]
    return int(report["recipe"]["seed"])


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def recipes(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Recipe A (seed 1) already run into `out`; recipe B (seed 2) about to replace it."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({**RECIPE, "seed": 1}))
    b.write_text(yaml.safe_dump({**RECIPE, "seed": 2}))
    out = tmp_path / "out"
    assert cli("run", str(a), "--output", str(out)) == 0
    assert described_seed(out) == 1
    return a, b, out


@pytest.mark.parametrize("point", ["stage", "commit"])
def test_ctrl_c_keeps_the_previous_run_and_says_so(
    recipes: tuple[Path, Path, Path], point: str
) -> None:
    _, b, out = recipes
    result = child(point, "SIGINT", b, out)
    assert result.returncode == 130
    assert result.stderr == (
        f"netchisel: interrupted: nothing written to {out} (the previous run there is intact)\n"
    )
    assert described_seed(out) == 1 and leftovers(out) == []
    assert cli("run", str(b), "--output", str(out)) == 0
    assert described_seed(out) == 2 and leftovers(out) == []


def test_ctrl_c_after_the_commit_says_the_run_is_complete(
    recipes: tuple[Path, Path, Path],
) -> None:
    _, b, out = recipes
    result = child("committed", "SIGINT", b, out)
    assert result.returncode == 130
    assert result.stderr == f"netchisel: interrupted after the run was written: {out} is complete\n"
    assert described_seed(out) == 2 and leftovers(out) == []


@pytest.mark.parametrize("point", ["stage", "commit", "committed"])
def test_kill_9_never_leaves_a_report_beside_another_model(
    recipes: tuple[Path, Path, Path], point: str
) -> None:
    _, b, out = recipes
    result = child(point, "SIGKILL", b, out)
    assert result.returncode == -signal.SIGKILL
    assert described_seed(out) == (2 if point == "committed" else 1)
    # a killed run leaves at most its hidden staging directory, which the next run removes
    assert all(name.startswith(".out.partial-") for name in leftovers(out))
    assert cli("run", str(b), "--output", str(out)) == 0
    assert described_seed(out) == 2 and leftovers(out) == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_a_signal_at_any_moment_then_the_same_command_completes(
    recipes: tuple[Path, Path, Path], sig: str
) -> None:
    _, b, out = recipes
    result = child("none", sig, b, out, delay=3.0)  # importing, training or writing
    # -SIGINT: the signal came while Python was still importing netchisel (2 s idle, more on
    # a loaded machine), before the CLI's handler exists; nothing was written then.
    assert result.returncode in (0, 130, -signal.SIGINT, -signal.SIGKILL)
    assert described_seed(out) in (1, 2)
    assert cli("run", str(b), "--output", str(out)) == 0
    assert described_seed(out) == 2 and leftovers(out) == []


def test_a_commit_killed_between_its_two_renames_is_undone(tmp_path: Path) -> None:
    # Where the file system cannot exchange two names, the old run is moved aside first;
    # a kill there leaves it as .out.old-<pid>, and the next run puts it back.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "seed": 1}))
    out = tmp_path / "out"
    assert cli("run", str(recipe), "--output", str(out)) == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.replace(out, tmp_path / f".out.old-{dead.pid}")
    (tmp_path / f".out.partial-{dead.pid}").mkdir()
    from netchisel.core.files import remove_stale

    remove_stale(out)
    assert described_seed(out) == 1 and leftovers(out) == []


def run_fails_early(capsys: pytest.CaptureFixture[str], recipe: Path, out: Path) -> str:
    """Run and return the one error line, after checking exit status 2 and that nothing
    was written beside or into the output."""
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
    inside = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    capsys.readouterr()
    code = cli("run", str(recipe), "--output", str(out))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("netchisel: error: "), err
    if before is not None:
        assert sorted(p.name for p in out.parent.iterdir()) == before
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == inside
    return err


def test_an_output_under_a_file_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "notes").write_text("a file")
    err = run_fails_early(capsys, recipe, tmp_path / "notes" / "out")
    assert f"{tmp_path / 'notes'} is a file, not a directory: choose another output" in err


def test_an_output_without_space_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 100))  # type: ignore[attr-defined]
    err = run_fails_early(capsys, recipe, tmp_path / "out")
    assert "100 B free on its disk, the model needs about " in err
    assert "free some space or choose another output" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_parent_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = run_fails_early(capsys, recipe, locked / "out")
    assert f"{locked} is not writable" in err


def test_an_earlier_run_with_other_files_in_it_is_not_replaced(
    recipes: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, b, out = recipes
    (out / "notes.txt").write_text("mine")
    err = run_fails_early(capsys, b, out)
    assert "is an earlier run with other files in it (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine"


TINY = yaml.safe_dump(RECIPE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            TINY.replace("lr: 0.01", "lr: .nan"),
            ": lr: .nan at line 14 is not a number: give a value",
        ),
        (TINY + "device: cuda\n", "recipe.device: 'cuda', but this machine has no CUDA device"),
        (
            TINY + "seed: 1\nseed: 2\n",
            ": key 'seed' is written twice (line 20 and line 21): keep one",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file, not YAML"),
    ],
    ids=["nan", "cuda", "duplicate", "binary"],
)
def test_bad_recipes_fail_before_work_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, message: str
) -> None:
    import torch

    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = tmp_path / "r.yaml"
    if isinstance(text, bytes):
        recipe.write_bytes(text)
    else:
        recipe.write_text(text)
    err = run_fails_early(capsys, recipe, tmp_path / "out")
    assert message in err and not (tmp_path / "out").exists()
