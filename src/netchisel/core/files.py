"""File permissions for what netchisel writes through temporary files.

`tempfile.mkdtemp` and `mkstemp` create owner-only entries (0700 / 0600), and safetensors
writes owner-only files too, so an artifact renamed into place from them could be read by
nobody else: not a serving container running as another user, not a colleague. Everything
written is given the permissions a plain `open` or `mkdir` would give, under the umask.
"""

from __future__ import annotations

import os
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
