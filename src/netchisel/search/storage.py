"""Where a study lives, and how an interrupted one is picked up again without losing trials.

- one process: SQLite, `study.db` in the output directory;
- several local workers (`--workers N`): a journal file, `study.journal`, which Optuna
  recommends over SQLite for concurrent writers;
- several machines: `--storage postgresql://user@host/db` (or any SQLAlchemy URL), each
  machine running the same command.

A local search holds an exclusive lock on `search.lock` while it runs, so when a new run gets
the lock, every trial still marked RUNNING belongs to a process that died (kill -9, power
loss). Those trials are marked FAIL, tagged `interrupted`, and their parameters queued
again. Remote storages cannot use a file lock; there Optuna's heartbeat finds dead workers'
trials (a trial whose heartbeat is older than the grace period is failed) and
`RetryHeartbeatStaleTrialCallback` queues them again.
"""

from __future__ import annotations

import fcntl
import os
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from netchisel.core.errors import ConfigError, first_line

SQLITE_FILE = "study.db"
JOURNAL_FILE = "study.journal"
LOCK_FILE = "search.lock"
HEARTBEAT_SECONDS = 20
CONNECT_ATTEMPTS = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


SCHEMES = ("postgresql", "mysql", "sqlite", "journal")


def storage_url(output: Path, storage: str | None, workers: int) -> str:
    """The storage URL a search uses: the given one, or a file in the output directory.

    A search that already has a journal keeps it, also with one worker; SQLite is for one
    process only, so a SQLite search cannot be continued with several workers.

    Example:
        >>> storage_url(Path("/tmp/run"), None, 1)
        'sqlite:////tmp/run/study.db'
        >>> storage_url(Path("/tmp/run?v=2#b"), None, 1)  # escaped: the file stays inside
        'sqlite:////tmp/run%3Fv%3D2%23b/study.db'
    """
    if storage:
        scheme = storage.split(":", 1)[0].split("+", 1)[0]
        if ("://" not in storage and not storage.startswith("journal:")) or scheme not in SCHEMES:
            raise ConfigError(
                f"--storage {_redact(storage)}: unsupported; give one of "
                "postgresql://user:password@host/db, mysql://..., sqlite:///path/study.db "
                "or journal:/path/study.journal"
            )
        return storage
    out = output.resolve()
    if (out / SQLITE_FILE).exists():
        if workers > 1:
            raise ConfigError(
                f"{out} holds a one-process SQLite study: continue it without --workers, or "
                "start the parallel search in a new output"
            )
        return sqlite_url(out / SQLITE_FILE)
    if (out / JOURNAL_FILE).exists() or workers > 1:
        return f"journal:{out / JOURNAL_FILE}"
    return sqlite_url(out / SQLITE_FILE)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file, its path percent-escaped: SQLAlchemy unescapes it,
    and unescaped, a `?` or `#` in a directory name would start the URL's query or fragment
    (the database would land in a parent directory), a `{` would break Optuna's URL template.

    Example:
        >>> sqlite_url(Path("/tmp/a b/study.db"))
        'sqlite:////tmp/a%20b/study.db'
    """
    return "sqlite:///" + urllib.parse.quote(str(path), safe="/")


def is_local(url: str) -> bool:
    """Whether the storage is a file this machine owns (SQLite or journal)."""
    return url.startswith(("sqlite:", "journal:"))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for the URL; an unreachable one is one clear error.

    `postgresql://` uses psycopg 3 (`postgresql+psycopg://`), the driver netchisel installs.
    """
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    remote = not is_local(url)
    for attempt in range(CONNECT_ATTEMPTS if remote else 1):
        try:
            return _rdb_storage(url, remote)
        except Exception as e:  # SQLAlchemy raises many types; all mean "cannot use this URL"
            # Machines starting together race to create the tables (a unique violation, or
            # PostgreSQL's "relation ... already exists"); the loser retries.
            raced = any(word in str(e).lower() for word in ("unique", "already exists"))
            if attempt + 1 < (CONNECT_ATTEMPTS if remote else 1) and raced:
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = first_line(e)[:200]
            raise ConfigError(f"storage {_redact(url)} is unreachable: {reason}") from None
    raise AssertionError("unreachable")


def _rdb_storage(url: str, remote: bool) -> RDBStorage:
    with warnings.catch_warnings():  # heartbeats and their retry are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True} if remote else None,
            heartbeat_interval=HEARTBEAT_SECONDS if remote else None,
            grace_period=3 * HEARTBEAT_SECONDS if remote else None,
            heartbeat_stale_trial_callback=(
                RetryHeartbeatStaleTrialCallback(max_retry=3) if remote else None
            ),
        )


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
    return url


@contextmanager
def search_lock(output: Path) -> Iterator[None]:
    """Hold the output directory's lock; a second search on it is one clear error."""
    output.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (output / LOCK_FILE).open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another search is running in {output}: wait for it, or choose another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of a dead local run and queue their parameters again.

    Only call this while holding `search_lock`: then no live process owns those trials.
    Returns the numbers of the trials requeued.
    """
    storage = study._storage
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        requeued.append(trial.number)
    return requeued


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that count toward the budget: not the interrupted ones (retried)."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {
        t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)
    }
    return [
        t
        for t in trials
        if not (
            t.state == TrialState.FAIL and (t.user_attrs.get("interrupted") or t.number in retried)
        )
    ]


def describe(url: str) -> dict[str, Any]:
    """What the report says about the storage (no password)."""
    return {"url": _redact(url), "local": is_local(url)}
