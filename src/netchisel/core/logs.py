"""Quieting other libraries' import-time log noise."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# torchao, imported by transformers and by the static int8 flow, logs that its CUDA-only
# libraries are missing and that torch deprecated one of its calls: noise on a CPU machine.
TORCHAO_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the named loggers inside the block; their levels are restored after.

    Example:
        >>> with quiet_loggers("torchao"):
        ...     logging.getLogger("torchao").level
        40
    """
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
