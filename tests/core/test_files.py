"""Committing a staged directory in one step, and cleaning up after killed runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from netchisel.core import files
from netchisel.core.files import commit_dir, remove_stale, staging_dir


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_commit_replaces_the_whole_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staged = staging_dir(out)
    (staged / "new.txt").write_text("new")
    commit_dir(staged, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~files.current_umask())


def test_stale_directories_of_dead_runs_are_removed_and_a_moved_run_put_back(
    tmp_path: Path,
) -> None:
    out, dead = tmp_path / "out", dead_pid()
    (tmp_path / f".out.old-{dead}").mkdir()
    (tmp_path / f".out.old-{dead}" / "report.json").write_text("{}")
    (tmp_path / f".out.partial-{dead}").mkdir()
    (tmp_path / f".out.partial-{os.getpid()}").mkdir()  # a live run's: left alone
    (tmp_path / ".other.partial-1").mkdir()  # another output's: left alone
    assert {p.name for p in remove_stale(out)} == {f".out.old-{dead}", f".out.partial-{dead}"}
    assert (out / "report.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.partial-1",
        f".out.partial-{os.getpid()}",
        "out",
    ]
    # with the output back in place, a second moved-aside copy is only removed
    (tmp_path / f".out.old-{dead}").mkdir()
    remove_stale(out)
    assert not (tmp_path / f".out.old-{dead}").exists() and (out / "report.json").exists()
