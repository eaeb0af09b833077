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
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(_jobs(spool))
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
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(_jobs(spool))
            with pytest.raises(StorageError) as raised:
                list(writer.results())
    message = str(raised.value)
    assert "\n" not in message and f"{tmp_path}/dest/metalinks/a" in message and "check the destination" in message


def test_a_killed_child_is_one_line_and_one_still_running_is_stopped_by_its_pid(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, b"x") for key in KEYS)
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(_jobs(spool))
            os.kill(writer.pid, signal.SIGKILL)
            with pytest.raises(StorageError, match=r"^the background writer \(pid \d+\) was killed by signal 9; run"):
                list(writer.results())
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(_jobs(spool))
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
    with storage.write_in_background(spool.shared_fd()) as writer:
        writer.send(jobs)
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
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(jobs)
            with pytest.raises(
                StorageError, match=r"^spool: torrents/past/the/end.torrent is truncated in the spool file$"
            ):
                list(writer.results())


def test_the_wait_tells_what_the_child_has_written(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    keys = [f"metalinks/d{i % 7}/{i}.meta4" for i in range(3000)]
    told: list[tuple[int, int]] = []
    with Spool() as spool:
        spool.add_all(make_artifact(key, b"m" * (i % 50 + 1)) for i, key in enumerate(keys))
        jobs = [(spool.key(number), *spool.extent(number)) for number in range(len(keys))]
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(jobs)
            results = list(writer.results(lambda objects, nbytes: told.append((objects, nbytes))))
    assert len(results) == len(keys)
    assert told and all(objects >= 0 and nbytes >= 0 for objects, nbytes in told)
    assert sum(objects for objects, _ in told) == len(keys)
    assert sum(nbytes for _, nbytes in told) == sum(i % 50 + 1 for i in range(len(keys)))


def test_results_are_read_across_cut_records(tmp_path: Path) -> None:
    """The child's buffer goes out 64 KiB at a time: whole records are read, and a cut one's head is kept."""
    from pipeline.storage.background import _RESULT, _Results

    pairs = [(10, '"ab"'), (200, '"' + "e" * 40 + '"')] * 5
    data = b"".join(_RESULT.pack(size, 1.5, len(etag)) + etag.encode() for size, etag in pairs)
    path = tmp_path / "results"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        results = _Results(fd)
        seen = []
        for cut in (0, 7, 20, 21, 70, 71, 150, len(data)):
            os.pwrite(fd, data[:cut], 0)
            seen.append(results.records(3))
        seen.append(results.records(10))
    finally:
        os.close(fd)
    # records of 24 and 62 bytes (a 20-byte head, then the ETag) end at 24, 86, 110, 172 …; 3 taken at most
    assert [len(batch) for batch in seen] == [0, 0, 0, 0, 1, 0, 2, 3, 4]
    assert [record for batch in seen for record in batch] == [(size, etag, 1.5) for size, etag in pairs]
    assert results.taken == 10


def test_the_child_writes_jobs_as_they_are_sent_and_ends_only_when_told(tmp_path: Path) -> None:
    """… and a flush asked between them makes no result."""
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, key.encode()) for key in KEYS)
        jobs = _jobs(spool)
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send(jobs[:1])
            writer.flush()
            first = tmp_path / "dest" / KEYS[0]
            deadline = time.monotonic() + 10
            # created in place: the file exists before its bytes are in
            while not (first.exists() and first.read_bytes() == KEYS[0].encode()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert first.read_bytes() == KEYS[0].encode()  # written before the other jobs are sent
            time.sleep(0.2)
            assert writer.pid and _alive(writer.pid)  # waiting for more, not finished
            assert not (tmp_path / "dest" / KEYS[1]).exists()
            writer.send(jobs[1:])
            results = list(writer.results())  # no job follows: the child ends
            with pytest.raises(ValueError, match="no job follows"):
                writer.send(jobs[:1])
    assert writer.count == len(KEYS) == len(results)
    for key, (size, etag, _) in zip(KEYS, results, strict=True):
        info = storage.head(key)
        assert info is not None and (size, etag) == (info.size, info.etag)
        assert (tmp_path / "dest" / key).read_bytes() == key.encode()


def test_many_jobs_are_appended_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job records of one `send` are written out a chunk at a time (a million-file run sends ~540,000 pages
    at once: ~40 MB of records held whole), and the child writes every object."""
    from pipeline.storage import background

    monkeypatch.setattr(background, "_JOBS_CHUNK", 100)
    appended: list[int] = []
    real = background._pwrite_all
    monkeypatch.setattr(
        background, "_pwrite_all", lambda fd, data, at: appended.append(len(data)) or real(fd, data, at)
    )
    keys = [f"browse/d{i:03d}/index.html" for i in range(40)]
    storage = LocalStorage(tmp_path / "dest")
    with Spool() as spool:
        spool.add_all(make_artifact(key, key.encode()) for key in keys)
        with storage.write_in_background(spool.shared_fd()) as writer:
            writer.send((spool.key(number), *spool.extent(number)) for number in range(len(keys)))
            results = list(writer.results())
    assert len(results) == len(keys) and all((tmp_path / "dest" / key).read_bytes() == key.encode() for key in keys)
    record = background._JOB.size + len(keys[0])
    assert len(appended) > 1 and max(appended) < 100 + record


def test_the_child_reads_a_flush_where_it_was_asked(tmp_path: Path) -> None:
    """A flush comes between the jobs sent before it and those after, in one read of the jobs file or across two."""
    from pipeline.storage.background import _FLUSH, _JOB, _Job, _job_batches

    def job(offset: int, key: str) -> bytes:
        return _JOB.pack(offset, 3, len(key)) + key.encode()

    records = job(0, "a") + job(3, "b") + _JOB.pack(_FLUSH, 0, 0) + job(6, "c") + _JOB.pack(_FLUSH, 0, 0)
    path = tmp_path / "jobs"
    path.write_bytes(records)
    fd = os.open(path, os.O_RDONLY)
    wait, wake = os.pipe()
    os.close(wake)  # no job follows
    idles: list[int] = []
    try:
        batches = list(_job_batches(fd, wait, lambda: idles.append(1)))
    finally:
        os.close(fd)
        os.close(wait)
    assert batches == [[_Job(0, 3, "a"), _Job(3, 3, "b")], None, [_Job(6, 3, "c")], None]
    assert idles == [1]
