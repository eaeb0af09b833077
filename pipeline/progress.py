"""A Progress implementation on stderr with rich (instantiated by tasks.py, injected into stages)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar


class StderrProgress:
    """Bar per stage: count, bytes/s and ETA. Stays quiet when stderr is not a terminal unless forced."""

    def __init__(self, *, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar: RichBar | None = None
        self._task: TaskID | None = None
        self._bytes = 0

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        self.finish()
        self._bar = RichBar(
            TextColumn(f"{stage:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total)
        self._bytes = 0

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        if self._bar is not None and self._task is not None:
            self._bytes += nbytes
            self._bar.advance(self._task, count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = None
        self._task = None
