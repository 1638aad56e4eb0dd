"""Two "machines" (processes with their own output directories) share one PostgreSQL study.

The test starts its own PostgreSQL cluster on 127.0.0.1 in a temp directory (initdb runs as
the `postgres` user) and stops it afterwards. Without PostgreSQL it is skipped, except on CI
(CI=true), where a missing PostgreSQL is a failure: this path must be tested for real.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from tests.search._dashboard import dashboard_get
from tests.search.test_study import spec_with

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb = PG_BIN / "initdb" if (PG_BIN / "initdb").exists() else shutil.which("initdb")
    if initdb is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the PostgreSQL storage: install postgresql-15")
        pytest.skip("PostgreSQL 15 is not installed")
    bin_dir = Path(initdb).parent
    root = Path(tempfile.mkdtemp(prefix="netchisel-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True}
    subprocess.run(
        _as_postgres(str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres"), **run
    )  # type: ignore[call-overload]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}"
    pg_ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        _as_postgres(
            pg_ctl, "-D", str(data), "-o", options, "-w", "start", "-l", str(root / "log")
        ),
        **run,
    )  # type: ignore[call-overload]
    try:
        subprocess.run(
            _as_postgres(
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "netchisel",
            ),
            **run,  # type: ignore[arg-type]
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/netchisel"
    finally:
        subprocess.run(
            _as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop"), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_machines_share_a_postgres_study(postgres_url: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec_with(name="shared", trials=6)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def machine(name: str) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "netchisel.cli",
            "search",
            str(spec_file),
            "-q",
            "--output",
            str(tmp_path / name),
            "--storage",
            postgres_url,
        ]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    machines = [machine("a"), machine("b")]
    for process in machines:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err

    storage = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    # each machine stops once the shared count is reached: at most one extra trial each
    assert 6 <= len(trials) <= 7
    assert all(t.state.name == "COMPLETE" for t in trials)
    # both machines did work, and each trial's artifact is on the machine that ran it
    ran_on = {
        t.number: [m for m in ("a", "b") if (tmp_path / m / t.user_attrs["artifact"]).is_dir()]
        for t in trials
    }
    assert all(len(where) == 1 for where in ran_on.values())
    assert {where[0] for where in ran_on.values()} == {"a", "b"}
    # the storage stays readable by optuna-dashboard
    status, body = dashboard_get(storage, "/api/studies")
    assert status.startswith("200")
    (summary,) = body["study_summaries"]
    assert summary["study_name"] == "shared"
    _, detail = dashboard_get(storage, f"/api/studies/{summary['study_id']}")
    assert len(detail["trials"]) == len(trials)
