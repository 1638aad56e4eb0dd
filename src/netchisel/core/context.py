"""Context: what every stage gets besides the model and its config. No global state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from netchisel.core.task import Task


@dataclass
class Context:
    """The task, the teacher (the original model), device, seed, work directory, progress.

    Example:
        >>> ctx = Context(task=None, quiet=True)
        >>> ctx.device
        'cpu'
    """

    task: Task | None
    teacher: nn.Module | None = None
    device: str = "cpu"
    seed: int = 0
    workdir: Path = field(default_factory=lambda: Path("."))
    quiet: bool = False
    records: dict[str, Any] = field(default_factory=dict)
    # Called by `fit` after each pass over the train split with (epochs done, model); a search
    # uses it to report intermediate scores to Optuna's pruners (and may raise TrialPruned).
    on_epoch: Callable[[int, nn.Module], None] | None = None

    def record(self, **values: Any) -> None:
        """Attach numbers or notes to the current stage's entry in the report."""
        self.records.update(values)

    def require_task(self, stage: str) -> Task:
        """The task, or a clear error naming the stage that needs one."""
        from netchisel.core.errors import ConfigError

        if self.task is None:
            raise ConfigError(f"stage {stage!r} needs a task: add 'task:' to the recipe")
        return self.task

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar (nothing when quiet); yields a function that advances it."""
        if self.quiet:
            yield lambda n: None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            handle = bar.add_task(description, total=total)
            yield lambda n: bar.advance(handle, n)
