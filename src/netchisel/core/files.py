"""Writing results so that a reader never sees half of them, with the usual permissions.

A run's output directory is built in a staging directory beside it and put in place in one
rename (`commit_dir`); a run killed on the way leaves only a hidden staging directory, which
the next run removes (`remove_stale`).

`tempfile.mkdtemp` and `mkstemp` create owner-only entries (0700 / 0600), and safetensors
writes owner-only files too, so an artifact renamed into place from them could be read by
nobody else: not a serving container running as another user, not a colleague. Everything
written is given the permissions a plain `open` or `mkdir` would give, under the umask.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def as_if_created(path: Path) -> None:
    """Give `path` (and, for a directory, everything in it) the usual permissions: 0777 for
    directories and 0666 for files, less the umask.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> as_if_created(d)
        >>> oct(d.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())
        True
    """
    mask = current_umask()
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def staging_dir(target: Path) -> Path:
    """A new, empty directory beside `target` (same file system, so a rename commits it).

    Example:
        >>> import tempfile
        >>> staging_dir(Path(tempfile.mkdtemp()) / "out").name.startswith(".out.partial-")
        True
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}{_PARTIAL}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def commit_dir(staged: Path, target: Path) -> None:
    """Put the directory `staged` in place of `target` in one step, then remove the old one.

    Where the file system can exchange two names atomically (Linux renameat2), `target` is
    never missing; elsewhere it is missing between two renames, and a run killed there
    leaves the old directory as `.<name>.old-<pid>`, which `remove_stale` puts back.
    Ctrl-C is held back while the names change, so the swap is whole or not at all.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "out").mkdir(); staged = staging_dir(root / "out")
        >>> _ = (staged / "new.txt").write_text("new")
        >>> commit_dir(staged, root / "out")
        >>> sorted(p.name for p in root.iterdir()), (root / "out" / "new.txt").read_text()
        (['out'], 'new')
    """
    as_if_created(staged)
    with sigint_held():
        if not target.exists():
            os.replace(staged, target)
            return
        if _exchange(staged, target):
            old = staged  # the exchange left the previous directory under the staged name
        else:
            old = target.parent / f".{target.name}{_OLD}{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(target: Path) -> list[Path]:
    """Clean up after runs on `target` that were killed: remove their staging directories,
    and put back a previous `target` that a killed commit had moved aside. Directories of
    live processes are left alone. Returns what was removed or restored.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / ".out.partial-999999999").mkdir()
        >>> [p.name for p in remove_stale(root / "out")], list(root.iterdir())
        (['.out.partial-999999999'], [])
    """
    if not target.parent.is_dir():
        return []
    prefix = f".{target.name}"
    handled = []
    for entry in sorted(target.parent.iterdir()):
        rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        kind = next((k for k in (_PARTIAL, _OLD) if rest.startswith(k)), None)
        if kind is None or not rest[len(kind) :].isdigit() or _alive(int(rest[len(kind) :])):
            continue
        if kind == _OLD and not target.exists():
            os.replace(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        handled.append(entry)
    return handled


_PARTIAL = ".partial-"
_OLD = ".old-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid <= 2**22  # another user's process; an impossible pid is nobody's
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold SIGINT back inside the block; a Ctrl-C pressed there arrives after it.

    Example:
        >>> with sigint_held():
        ...     pass
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
