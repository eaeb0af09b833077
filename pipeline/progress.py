"""A Progress implementation on stderr with rich (instantiated by tasks.py, injected into stages)."""

from __future__ import annotations

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar
from rich.text import Text


class ByteRateColumn(ProgressColumn):
    """Bytes per second from the bytes the stage reported (`advance(nbytes=…)`), not from the item count
    the bar counts (rich's TransferSpeedColumn would show 5 files a second as "5 B/s"); blank when a
    stage reports no bytes."""

    def render(self, task: Task) -> Text:
        nbytes = int(task.fields.get("bytes", 0))
        elapsed = task.finished_time if task.finished else task.elapsed
        if not nbytes or not elapsed:
            return Text("")
        return Text(f"{filesize.decimal(int(nbytes / elapsed))}/s", style="progress.data.speed")


class StderrProgress:
    """Bar per stage: count, bytes/s (of the bytes reported) and ETA. Stays quiet when stderr is not a
    terminal unless forced."""

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
            ByteRateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total, bytes=0)
        self._bytes = 0

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        if self._bar is not None and self._task is not None:
            self._bytes += nbytes
            self._bar.update(self._task, advance=count, bytes=self._bytes)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = None
        self._task = None
