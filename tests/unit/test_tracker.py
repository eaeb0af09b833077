"""pipeline.tracker: the whitelist file opentracker reads, and its reload signal."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.tracker import update_whitelist, whitelist_text

A, B = "a" * 40, "0123456789abcdef0123456789abcdef01234567"


def test_whitelist_is_sorted_unique_and_checked() -> None:
    assert whitelist_text([B, A, B]) == f"{B}\n{A}\n".encode()  # "0…" sorts before "a…"
    assert whitelist_text([]) == b""
    with pytest.raises(ValueError, match="infohash"):
        whitelist_text(["ABC"])


def test_written_atomically_readable_and_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "tracker" / "whitelist.txt"
    assert update_whitelist(path, [A, B])
    assert path.read_bytes() == whitelist_text([A, B]) and path.stat().st_mode & 0o777 == 0o644
    assert not update_whitelist(path, [B, A])  # same list: not rewritten, nobody signalled
    assert update_whitelist(path, [A])
    assert path.read_bytes() == f"{A}\n".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["whitelist.txt"]  # no temp file left


def test_unwritable_whitelist_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the tracker whitelist"):
        update_whitelist(tmp_path / "file" / "whitelist.txt", [A])


def test_the_tracker_is_sent_sighup_when_the_list_changes(tmp_path: Path) -> None:
    marker = tmp_path / "hup"
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(marker)!r}).write_text('hup'), sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n"
        )],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pid_file = tmp_path / "opentracker.pid"
        pid_file.write_text(f"{child.pid}\n")
        assert update_whitelist(tmp_path / "whitelist.txt", [A], pid_file=pid_file)
        assert child.wait(timeout=10) == 0
        assert marker.read_text() == "hup"
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.parametrize("content", ["", "0", "-1", "1", "not a pid", "999999999"])
def test_a_stale_or_bad_pid_file_is_a_warning_not_a_failure(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "opentracker.pid"
    pid_file.write_text(content)
    with caplog.at_level(logging.WARNING, logger="pipeline.tracker"):
        assert update_whitelist(tmp_path / "whitelist.txt", [A], pid_file=pid_file)
    assert "could not tell the tracker" in caplog.text  # and this process, still here, got no SIGHUP
