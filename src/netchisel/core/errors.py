"""The one exception family netchisel raises; the CLI prints its message as one line."""

from __future__ import annotations

import re


class NetChiselError(Exception):
    """Base class of every error netchisel raises on purpose.

    Example:
        >>> try:
        ...     raise ConfigError("prune.magnitude: unknown key 'sparsty' (known: sparsity, scope)")
        ... except NetChiselError as e:
        ...     print(e)
        prune.magnitude: unknown key 'sparsty' (known: sparsity, scope)
    """


class ConfigError(NetChiselError):
    """A config, recipe or argument is invalid; the message names the field and the fix."""


class ArtifactError(NetChiselError):
    """A saved artifact is missing, corrupt or not netchisel's."""


class ModelError(NetChiselError):
    """A model cannot be built, traced or rebuilt as asked."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says what was kept. Still a KeyboardInterrupt, so
    code that stops on Ctrl-C keeps stopping."""


def first_line(e: BaseException) -> str:
    r"""An exception's first line, without terminal colour codes (the ONNX exporter adds them);
    its type name when the message is empty.

    Example:
        >>> first_line(RuntimeError("\x1b[1mbad op\x1b[0m\nmore")), first_line(KeyError())
        ('bad op', 'KeyError')
    """
    lines = _ANSI.sub("", str(e)).strip().splitlines()
    return lines[0] if lines else type(e).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
