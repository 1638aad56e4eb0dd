"""The one exception family netchisel raises; the CLI prints its message as one line."""

from __future__ import annotations


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
