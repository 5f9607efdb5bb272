"""Progress bars for long runs, shown only on a terminal (rich, on stderr)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Task:
    """One bar; a no-op when progress is disabled."""

    def __init__(self, progress: RichProgress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def done(self) -> None:
        if self._progress is not None and self._task is not None:
            total = self._progress.tasks[self._task].total
            self._progress.update(self._task, completed=total)


class Progress:
    """``with Progress(enabled=...) as bar: task = bar.add("Reading", total=n, unit="bytes")``.

    Shown only when enabled and stderr is a terminal; otherwise every call is a no-op.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._progress: RichProgress | None = None
        if enabled and sys.stderr.isatty():
            self._progress = RichProgress(
                TextColumn("{task.description:<11}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, *, total: int, unit: str) -> Task:
        if self._progress is None:
            return Task(None, None)
        task = self._progress.add_task(f"{description} ({unit})", total=max(total, 1))
        return Task(self._progress, task)
