"""Where the zoo keeps what it computes once: `$NETCHISEL_CACHE/zoo` (else
`~/.cache/netchisel/zoo`), and the two helpers every cache entry is written and checked with.

Checkpoints (`zoo/train.py`) and generated data sets (`zoo/mnist1d.py`) both live there. Files
are written to a temp name and renamed, so a crash never leaves half a file under the real name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from netchisel.core.files import as_if_created

CACHE_ENV = "NETCHISEL_CACHE"


def cache_dir() -> Path:
    """Where zoo checkpoints and generated data live: `$NETCHISEL_CACHE/zoo`, else
    `~/.cache/netchisel/zoo`.

    Example:
        >>> cache_dir().name
        'zoo'
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(Path.home(), ".cache", "netchisel")
    return Path(root) / "zoo"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temp file beside `path`, then rename it to `path`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda tmp: tmp.write_text("hi"))
        >>> target.read_text()
        'hi'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        as_if_created(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "e"
        >>> _ = p.write_bytes(b"")
        >>> sha256_file(p)[:8]
        'e3b0c442'
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
