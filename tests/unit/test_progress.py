from __future__ import annotations

import io

from rich.console import Console

from pipeline.progress import StderrProgress


def last_line(out: io.StringIO, word: str) -> str:
    """The bar as last drawn (rich redraws it in place with carriage returns and cursor codes)."""
    return [part for part in out.getvalue().replace("\r", "\n").splitlines() if word in part][-1]


def test_the_rate_is_bytes_reported_not_items_counted() -> None:
    out = io.StringIO()
    progress = StderrProgress(console=Console(file=out, force_terminal=True, width=120, color_system=None))
    progress.start("hash", 5)
    for _ in range(5):
        progress.advance(1, nbytes=4_000_000)
    progress.finish()
    line = last_line(out, "files")
    assert "5/5 files" in line
    unit = line.split("files", 1)[1].split()[1]
    assert unit in ("MB/s", "GB/s"), line  # 20 MB in a moment; 5 items would have shown as "5 B/s"-ish


def test_a_stage_without_bytes_shows_no_rate() -> None:
    out = io.StringIO()
    progress = StderrProgress(console=Console(file=out, force_terminal=True, width=120, color_system=None))
    progress.start("upload", 3, unit="objects")
    progress.advance(3)
    progress.finish()
    assert "/s" not in last_line(out, "objects")
