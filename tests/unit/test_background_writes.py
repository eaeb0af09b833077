"""pipeline.storage.background: a child process writes a local destination's new objects from the spool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import StorageError
from pipeline.objects import make_artifact
from pipeline.spool import Spool
from pipeline.storage.background import WritesInBackground
from pipeline.storage.local import LocalStorage

KEYS = ["torrents/tools/café/résumé #1 100%.tar.gz.torrent", "metalinks/a/b.meta4", "torrents/a/b.torrent"]


def _jobs(spool: Spool) -> list[tuple[str, int, int]]:
    return [(spool.key(number), *spool.extent(number)) for number in range(len(KEYS))]


def test_the_child_writes_each_object_from_the_spool_and_reports_its_etag(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    assert isinstance(storage, WritesInBackground)
    with Spool() as spool:
        spool.add_all(make_artifact(key, key.encode() * (i + 1)) for i, key in enumerate(KEYS))
        with storage.write_in_background(spool.shared_fd(), _jobs(spool)) as writer:
            results = list(writer.results())
    for i, (key, (size, etag, modified)) in enumerate(zip(KEYS, results, strict=True)):
        assert (tmp_path / "dest" / key).read_bytes() == key.encode() * (i + 1)
        info = storage.head(key)
        assert info is not None and (size, etag, modified) == (info.size, info.etag, info.modified)


def test_a_write_the_child_cannot_make_is_one_line_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "metalinks").write_text("a file where a directory goes")
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, b"x") for key in KEYS)
        with storage.write_in_background(spool.shared_fd(), _jobs(spool)) as writer:
            with pytest.raises(StorageError) as raised:
                list(writer.results())
    message = str(raised.value)
    assert "\n" not in message and f"{tmp_path}/dest/metalinks/a" in message and "check the destination" in message


def test_a_killed_child_is_one_line_and_one_still_running_is_stopped_by_its_pid(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, b"x") for key in KEYS)
        with storage.write_in_background(spool.shared_fd(), _jobs(spool)) as writer:
            os.kill(writer.pid, signal.SIGKILL)
            with pytest.raises(StorageError, match=r"^the background writer \(pid \d+\) was killed by signal 9; run"):
                list(writer.results())
        with storage.write_in_background(spool.shared_fd(), _jobs(spool)) as writer:
            pid = writer.pid
        # left unread: the block's end killed and reaped it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


_PARENT = """
import sys, time
from pathlib import Path
from pipeline.objects import make_artifact
from pipeline.spool import Spool
from pipeline.storage.local import LocalStorage
storage = LocalStorage(Path(sys.argv[1]))
with Spool() as spool:
    spool.add_all(make_artifact(f"torrents/d{i % 100}/f{i}.torrent", b"x") for i in range(50_000))
    jobs = [(spool.key(n), *spool.extent(n)) for n in range(50_000)]
    with storage.write_in_background(spool.shared_fd(), jobs) as writer:
        print(writer.pid, flush=True)
        time.sleep(60)
"""


def test_the_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "dest")], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any((tmp_path / "dest").rglob("*.torrent")):
            time.sleep(0.01)  # until the child writes (it checks its parent once, as it starts)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child)
    written = sum(1 for path in (tmp_path / "dest").rglob("*.torrent"))
    assert written < 50_000  # killed midway, not finished


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie (not yet reaped by init) is dead
    except FileNotFoundError:
        return False


def test_a_spool_entry_the_child_cannot_read_whole_is_one_line(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, b"x") for key in KEYS)
        jobs = [*_jobs(spool)[:2], ("torrents/past/the/end.torrent", 10_000, 5)]
        with storage.write_in_background(spool.shared_fd(), jobs) as writer:
            with pytest.raises(
                StorageError, match=r"^spool: torrents/past/the/end.torrent is truncated in the spool file$"
            ):
                list(writer.results())
