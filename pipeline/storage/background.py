"""A local destination's new objects written by a child process while the run builds and renders.

A full build's content (a `.torrent` and a `.meta4` a package) is two million small files at a million
packages, and creating them costs the kernel about as much as rendering the pages costs Python (~60 us an
object on ext4, ~0.1 ms a page). Keys that no publication names yet can be written at any time before the
index: this child (`main`: the parent's pid, the root, then the spool, jobs, wake-up and results files'
descriptors) creates them from the spool file as the parent builds them, and dies with the parent. An object
that replaces one the destination holds (a flat snapshot's changed file) still waits for the parent's
publish, after the pages: a run that fails before it changes nothing a publication reaches.

Jobs and results are fixed-size records in unlinked temporary files (no pipe a stalled reader could fill):
a job is the spool offset and size and the key; a result is the written object's size, mtime and ETag. The
parent appends jobs as it builds (`BackgroundWrite.send`) and then writes a byte to a pipe the child waits on
when it has done every job so far (a full pipe is left full: one byte wakes the child); closing the pipe
(`BackgroundWrite.end`) tells it that no job follows. Both read and write the jobs file at offsets of their
own (the descriptor, and its offset, are shared). A job at offset -1 (`BackgroundWrite.flush`, sent once the
content is all sent) has the child flush what it wrote to the disk while the parent signs and renders, and
makes no result.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, NoReturn, Protocol, runtime_checkable

from pipeline.errors import PipelineError, StorageError
from pipeline.forked import die_with_parent
from pipeline.scratch import temporary_file
from pipeline.spool import read_exact, read_runs

_JOB = struct.Struct("<qqI")  # spool offset, size, key length; the key follows (UTF-8, surrogates passed)
_FLUSH = -1  # a job's offset that asks the child to flush to the disk what it wrote (`BackgroundWrite.flush`)
_RESULT = struct.Struct("<qdI")  # size, mtime, ETag length; the ETag follows (ASCII)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); from pipeline.storage.background import main; "
    "sys.exit(main(sys.argv[2:]))"
)
WAIT_S = 0.005  # how often `BackgroundWrite.take` looks for results (and at the child) while it waits
_READY_MAX = 1 << 14  # results read ahead of those taken
_JOBS_CHUNK = 1 << 20  # job records appended at once


Written = tuple[int, str, float | None]  # an object's size, ETag and mtime


class BackgroundWrite:
    """The child writing the objects `send` gives it (`count` so far); `take` and `results` give what each
    write made as the child reports it, in job order (no keys: the caller has them, and a million of them
    held here would cost ~100 MB)."""

    def __init__(
        self, process: subprocess.Popen[bytes], jobs: int, wake: int, results: BinaryIO, errors: BinaryIO
    ) -> None:
        self._process = process
        self.count = 0
        self._jobs = jobs
        self._jobs_end = 0
        self._wake: int | None = wake
        self._counter = _Results(results.fileno())
        self._errors = errors

    @property
    def pid(self) -> int:
        return self._process.pid

    def send(self, jobs: Iterable[tuple[str, int, int]]) -> None:
        """More jobs: (key, offset, size) in the spool file, whose bytes are written there already."""
        if self._wake is None:
            raise ValueError("the background writer was told that no job follows")
        records = bytearray()
        for key, offset, size in jobs:
            name = key.encode("utf-8", "surrogatepass")
            records += _JOB.pack(offset, size, len(name)) + name
            self.count += 1
            if len(records) >= _JOBS_CHUNK:  # a million-file run's pages at once would be ~40 MB of records
                self._append(records)
                records = bytearray()
        if records:
            self._append(records)

    def _append(self, records: bytearray) -> None:
        """Append job records to the jobs file, then wake the child."""
        assert self._wake is not None
        try:
            _pwrite_all(self._jobs, records, self._jobs_end)
        except OSError as exc:
            raise StorageError(
                f"the background writer's jobs: cannot write ({exc.strerror}); free space in TMPDIR"
            ) from exc
        self._jobs_end += len(records)
        with contextlib.suppress(BlockingIOError, BrokenPipeError):  # full: a wake-up is pending; gone: it died
            os.write(self._wake, b"j")

    def flush(self) -> None:
        """Have the child flush what it has written to the disk (`os.sync`) once it has written every job sent so
        far, while this process goes on: a durable write after it (the index, the pointer) then finds little
        left to flush. No result is made for it."""
        self._append(bytearray(_JOB.pack(_FLUSH, 0, 0)))

    def end(self) -> None:
        """No job follows: the child ends when it has done those sent."""
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None

    def take(self, count: int, written: Callable[[int, int], None] | None = None) -> Iterator[Written]:
        """The size, ETag and mtime of each of the next `count` objects, in job order, as the child writes them
        (each waited for, looking every WAIT_S); StorageError (one line) if the child ends without writing them.
        `written(objects, bytes)`: told as they come, so that a long wait shows progress."""
        while count > 0:
            batch = self._counter.records(count)
            if batch:
                count -= len(batch)
                if written is not None:
                    written(len(batch), sum(size for size, _, _ in batch))
                yield from batch
                continue
            code = self._process.poll()
            if code is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(WAIT_S)
            elif not self._counter.available():  # it ended, and wrote no more
                self._fail(code)

    def results(self, written: Callable[[int, int], None] | None = None) -> Iterator[Written]:
        """`take` of every object not taken yet, once no job follows (said here); then the child's end."""
        self.end()
        yield from self.take(self.count - self._counter.taken, written)
        code = self._process.wait()
        if code != 0:
            self._fail(code)

    def wait(self) -> None:
        """No job follows; the child's end, once every result is taken (StorageError if it failed)."""
        for _ in self.results():
            raise ValueError("the background writer's results were not all taken")

    def _fail(self, code: int) -> NoReturn:
        """StorageError (one line) for a child that ended with `code` before writing what it was sent."""
        if code < 0:
            pid = self._process.pid
            raise StorageError(f"the background writer (pid {pid}) was killed by signal {-code}; run again")
        if code != 0:
            self._errors.seek(0)
            lines = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            raise StorageError(lines[-1] if lines else f"the background writer exited with status {code}; run again")
        raise StorageError("the background writer ended before writing every object it was sent; run again")

    def stop(self) -> None:
        """Kill the child (by its pid) if it still runs, and reap it."""
        self.end()
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()


class _Results:
    """The results the child has written so far (its buffer goes out 64 KiB at a time, and before it waits
    for jobs: a record may be cut), read from the results file at its descriptor where the last read ended."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._at = 0
        self._tail = b""
        self._ready: list[Written] = []
        self.taken = 0

    def available(self) -> int:
        """Results written and not taken yet (read 1 MiB at a time)."""
        while chunk := os.pread(self._fd, 1 << 20, self._at):
            self._at += len(chunk)
            records, self._tail = _whole_records(_RESULT, self._tail + chunk)
            self._ready.extend(
                (size, etag.decode("ascii"), None if math.isnan(modified) else modified)
                for (size, modified, _), etag in records
            )
            if len(self._ready) >= _READY_MAX:
                break
        return len(self._ready)

    def records(self, most: int) -> list[Written]:
        """Up to `most` results written and not taken yet (none: none is written yet)."""
        if not self._ready:
            self.available()
        batch, self._ready = self._ready[:most], self._ready[most:]
        self.taken += len(batch)
        return batch


@runtime_checkable
class WritesInBackground(Protocol):
    """A storage whose new objects a child process can write from the spool file (a local folder)."""

    def write_in_background(self, spool_fd: int) -> AbstractContextManager[BackgroundWrite]:
        """`background_writes` into this storage."""
        ...


@contextmanager
def background_writes(root: Path, spool_fd: int) -> Iterator[BackgroundWrite]:
    """Start the child on the spool file open as `spool_fd`; it writes the jobs `send` gives it as they come.
    Stopped when the block ends, whether or not its results were read."""
    with (
        temporary_file("the background writer's jobs") as jobs,
        temporary_file("the background writer's results") as results,
        temporary_file("the background writer's errors") as errors,
    ):
        wait, wake = os.pipe2(os.O_CLOEXEC)
        try:
            os.set_blocking(wake, False)
            fds = (spool_fd, jobs.fileno(), wait, results.fileno())
            try:
                process = subprocess.Popen(
                    # this module from the package the run imported (not whichever `pipeline` the child would find)
                    [sys.executable, "-c", _CHILD, _PACKAGE_ROOT, str(os.getpid()), str(root), *map(str, fds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors.fileno(),
                    pass_fds=fds,
                )
            except OSError as exc:
                os.close(wake)
                raise StorageError(f"{sys.executable}: cannot start the background writer ({exc.strerror})") from exc
        finally:
            os.close(wait)
        writer = BackgroundWrite(process, jobs.fileno(), wake, results, errors)
        try:
            yield writer
        finally:
            writer.stop()


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Job(NamedTuple):
    offset: int
    size: int
    key: str


def _whole_records(head: struct.Struct, data: bytes) -> tuple[list[tuple[tuple[Any, ...], bytes]], bytes]:
    """The whole records at the start of `data` (each a `head` whose last field is the length of the bytes that
    follow it): each head's fields and those bytes; and the rest of `data`, a cut record's start."""
    records = []
    at = 0
    while at + head.size <= len(data):
        fields = head.unpack_from(data, at)
        end = at + head.size + fields[-1]
        if end > len(data):
            break
        records.append((fields, data[at + head.size : end]))
        at = end
    return records, data[at:]


def _job_batches(jobs: int, wait: int, idle: Callable[[], None]) -> Iterator[list[_Job] | None]:
    """The jobs the parent has sent, a read of the jobs file at a time (None where it asked for a flush, between
    the jobs before and after it); between reads that find nothing new, `idle()`, then wait for a byte on the
    pipe `wait`, until the parent closes it (and nothing new is left)."""
    at, tail, ended = 0, b"", False
    while True:
        chunk = os.pread(jobs, 1 << 20, at)
        if not chunk:
            if ended:
                if tail:
                    raise PipelineError("the background writer's jobs end in a cut record; run again")
                return
            idle()
            ended = not os.read(wait, 4096)  # b"": the parent said no job follows (or died)
            continue
        at += len(chunk)
        records, tail = _whole_records(_JOB, tail + chunk)
        batch: list[_Job] = []
        for (offset, size, _), key in records:
            if offset == _FLUSH:
                if batch:
                    yield batch
                    batch = []
                yield None
            else:
                batch.append(_Job(offset, size, key.decode("utf-8", "surrogatepass")))
        if batch:
            yield batch


def main(argv: Sequence[str]) -> int:
    """The child: `PARENT_PID ROOT SPOOL_FD JOBS_FD WAKE_FD RESULTS_FD`."""
    parent, root, spool_fd, jobs_fd, wake_fd, results_fd = argv
    die_with_parent(int(parent))  # a killed run leaves no writer behind
    from pipeline.storage.local import LocalStorage

    storage = LocalStorage(Path(root))
    spool = int(spool_fd)
    try:
        with open(int(results_fd), "wb", buffering=1 << 16) as results:
            for batch in _job_batches(int(jobs_fd), int(wake_fd), results.flush):  # the parent may wait for them
                if batch is None:
                    results.flush()
                    os.sync()  # the parent goes on meanwhile; its durable writes' own sync is then short
                    continue
                for job, data in read_runs(partial(read_exact, spool), batch):
                    info = storage.put(job.key, data, content_type="", cache_control="")
                    etag = info.etag.encode("ascii")
                    modified = math.nan if info.modified is None else info.modified
                    results.write(_RESULT.pack(info.size, modified, len(etag)) + etag)
    except PipelineError as exc:  # a write, or the spool file
        sys.stderr.write(" ".join(str(exc).split()) + "\n")  # the one line the parent raises
        return 1
    return 0
