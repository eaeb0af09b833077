"""Hash every file of the snapshot once: v1 piece SHA-1s and the whole-file SHA-256 in the same read.

Each file is read exactly once; the SHA-256 of the whole file and the SHA-1 of each BitTorrent v1 piece
are computed from the same bytes. Files are spread over workers, largest first, in batches so that
per-file dispatch overhead stays small.

How a file is read: into a reused buffer, or, in a worker process and for a file of MAP_MIN_BYTES or
more, mapped a window at a time (the hashes read the page cache in place, without the copy a read makes:
~7 % less CPU over the bench corpus). A file truncated while it is mapped kills the worker that maps it
(SIGBUS), never the run: the pool reports the dead worker, and the run names the file that changed in one
line. The run's own process (`workers=1`, or inputs too small for a pool) always reads.

Where the workers run is a seam: any `concurrent.futures.Executor` (made by an `ExecutorFactory`,
chosen where the run starts: pipeline/executors.py) receives `hash_batch` calls; the default is a
local pool of processes, one per core, the other a Dask cluster. Only the caller sees the results (and
writes the state cache).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import itertools
import logging
import mmap
import multiprocessing
import os
import stat
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager
from io import FileIO

from pipeline.errors import SnapshotError
from pipeline.model import FileEntry, HashedFile, NullProgress, Progress

log = logging.getLogger(__name__)

MIN_PIECE_SIZE = 16 * 1024
MAX_PIECE_SIZE = 16 * 1024 * 1024
MAX_PIECES = 1024

# Read buffer, reused for every file of a process. Measured single-process on ~520 MB of mixed files:
# 256 KiB 707 MB/s, 1 MiB 711 MB/s, 4 MiB 676 MB/s. Every piece size up to 1 MiB divides it; larger
# pieces are hashed incrementally across reads.
READ_BUFFER_SIZE = 1024 * 1024

# A worker maps a file of this size or more instead of reading it (smaller ones: one read costs less than a
# map and an unmap), MAP_WINDOW bytes at a time (or one piece, when pieces are larger): a window's pages
# count in the worker's RSS while it is mapped. A window holds whole pieces (piece sizes are powers of two).
MAP_MIN_BYTES = 1024 * 1024
MAP_WINDOW = 8 * 1024 * 1024

# Below these, hash in-process: starting the pool costs ~45-80 ms (forkserver + 2 workers), and
# in-process hashing runs ~650 MB/s / ~13,000 small files/s on one core. Measured break-even: about
# 1,200 small files or ~60 MB.
POOL_MIN_FILES = 1500
POOL_MIN_BYTES = 64 * 1024 * 1024

# Files are sent to the workers in batches (largest files first) of at most this many files or
# bytes, so that a batch of tiny files costs one round trip instead of hundreds.
BATCH_MAX_FILES = 128
BATCH_MAX_BYTES = 16 * 1024 * 1024
# Files of this size or more are sent first, largest first; smaller ones (their order matters little to
# the pool's balance) go in the table's order, so that no order of a million files is sorted.
FIRST_BYTES = READ_BUFFER_SIZE
# Batches sent to the executor and not yet taken back: enough to keep a cluster's workers busy
# (a Dask cluster's are not counted here), few enough that jobs and results never pile up.
IN_FLIGHT = 64

# How many sha256 mismatches one error message lists before "… and N more".
MAX_REPORTED_MISMATCHES = 20


def piece_size_for(size: int) -> int:
    """The smallest power of two >= 16 KiB giving at most 1,024 pieces, capped at 16 MiB (DESIGN 5)."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    piece = MIN_PIECE_SIZE
    while piece < MAX_PIECE_SIZE and piece * MAX_PIECES < size:
        piece *= 2
    return piece


# (index in the input, repo path, source path, expected size)
_Job = tuple[int, str, str, int]
# (index in the input, sha256 hex, concatenated piece SHA-1s)
_Result = tuple[int, str, bytes]

_worker_buffer: bytearray | None = None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _hash_one(path: str, source: str, size: int, buffer: bytearray, *, mapped: bool = False) -> tuple[str, bytes]:
    """Read `source` once; return (sha256 hex, piece SHA-1s). Raises SnapshotError if it changed. `mapped`:
    map it instead when it is MAP_MIN_BYTES or more (worker processes only: see the module's text)."""
    piece_size = piece_size_for(size)
    try:
        raw = open(source, "rb", buffering=0)
    except OSError as err:
        raise SnapshotError(
            f"{path}: cannot open {source}: {err.strerror or err}; check the snapshot and re-run"
        ) from err
    try:
        try:
            before = os.fstat(raw.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise SnapshotError(f"{path}: {source} is not a regular file; check the snapshot and re-run")
            if before.st_size != size:
                raise SnapshotError(
                    f"{path}: size is {before.st_size}, expected {size}: the file changed since the scan; "
                    "wait for the mirror sync to finish and re-run"
                )
            if mapped and size >= MAP_MIN_BYTES:
                total, sha256, pieces = _hash_mapped(path, raw.fileno(), size, piece_size)
            else:
                total, sha256, pieces = _hash_read(raw, size, piece_size, buffer)
            after = os.fstat(raw.fileno())
            # rsync replaces a file by renaming a new one over it: our descriptor still reads the old
            # inode, so compare it with what the path names now.
            now = os.stat(source)
        except OSError as err:
            raise SnapshotError(
                f"{path}: cannot read {source}: {err.strerror or err}; check the snapshot and re-run"
            ) from err
    finally:
        raw.close()
    if _identity(before) != _identity(after) or _identity(after) != _identity(now):
        raise SnapshotError(f"{path}: changed while it was hashed; wait for the mirror sync to finish and re-run")
    if total != size:
        found = f"more than {size}" if total > size else str(total)
        raise SnapshotError(
            f"{path}: read {found} bytes, expected {size}: the file changed since the scan; "
            "wait for the mirror sync to finish and re-run"
        )
    return sha256, pieces


def _hash_read(raw: FileIO, size: int, piece_size: int, buffer: bytearray) -> tuple[int, str, bytes]:
    """(bytes read, sha256 hex, piece SHA-1s) of `raw` read through `buffer`, at most one byte past `size` (so
    that growth is seen)."""
    whole = hashlib.sha256()
    digests: list[bytes] = []
    piece = hashlib.sha1()
    filled = 0
    total = 0
    view = memoryview(buffer)
    sha1 = hashlib.sha1
    limit = size + 1
    while total < limit:
        n = raw.readinto(view[: min(len(view), limit - total)])
        if not n:
            break
        total += n
        chunk = view[:n]
        whole.update(chunk)
        offset = 0
        while offset < n:
            take = min(piece_size - filled, n - offset)
            if filled == 0 and take == piece_size:
                digests.append(sha1(chunk[offset : offset + take]).digest())
            else:
                piece.update(chunk[offset : offset + take])
                filled += take
                if filled == piece_size:
                    digests.append(piece.digest())
                    piece = sha1()
                    filled = 0
            offset += take
    if filled:
        digests.append(piece.digest())
    return total, whole.hexdigest(), b"".join(digests)


def _hash_mapped(path: str, fd: int, size: int, piece_size: int) -> tuple[int, str, bytes]:
    """(size, sha256 hex, piece SHA-1s) of the file `fd`, mapped a window at a time. Growth is seen by the
    caller's fstat (the size is part of a file's identity); a file already shorter than a window's end is
    refused when mapped, one cut while mapped by the kernel (SIGBUS)."""
    whole = hashlib.sha256()
    sha1 = hashlib.sha1
    digests: list[bytes] = []
    window = max(MAP_WINDOW, piece_size)
    for start in range(0, size, window):
        length = min(window, size - start)
        try:
            # MAP_POPULATE: the window's pages are mapped in one call, not one fault per 64 KiB
            mapping = mmap.mmap(
                fd, length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=start
            )
        except ValueError as err:  # the file ends before the window does
            raise SnapshotError(
                f"{path}: changed while it was hashed ({err}); wait for the mirror sync to finish and re-run"
            ) from err
        with mapping, memoryview(mapping) as view:
            whole.update(view)
            for offset in range(0, length, piece_size):
                with view[offset : offset + piece_size] as piece:
                    digests.append(sha1(piece).digest())
    return size, whole.hexdigest(), b"".join(digests)


def hash_batch(jobs: Sequence[_Job]) -> list[_Result]:
    """Worker entry point: hash a batch of files with this process's reused buffer."""
    global _worker_buffer
    if _worker_buffer is None:
        _worker_buffer = bytearray(READ_BUFFER_SIZE)
    buffer = _worker_buffer
    return [(index, *_hash_one(path, source, size, buffer, mapped=True)) for index, path, source, size in jobs]


def _batches(files: Sequence[FileEntry]) -> Iterator[list[_Job]]:
    """Jobs grouped into batches, made as they are sent: the files of FIRST_BYTES or more first, largest
    first (the pool's tail then holds only small files), then the others in their order. What is held
    meanwhile is a size a file and the large files' order, not a job a file (~300 bytes at a million)."""
    sizes = array("q", (entry.size for entry in files))
    large = sorted((index for index, size in enumerate(sizes) if size >= FIRST_BYTES), key=lambda i: -sizes[i])
    small = (index for index, size in enumerate(sizes) if size < FIRST_BYTES)
    current: list[_Job] = []
    current_bytes = 0
    for index in itertools.chain(large, small):
        entry = files[index]
        current.append((index, entry.path, os.fspath(entry.source), entry.size))
        current_bytes += entry.size
        if len(current) >= BATCH_MAX_FILES or current_bytes >= BATCH_MAX_BYTES:
            yield current
            current = []
            current_bytes = 0
    if current:
        yield current


# workers -> a context manager giving the Executor that runs `hash_batch` (entered only when the
# files are worth a pool: see POOL_MIN_FILES)
ExecutorFactory = Callable[[int], AbstractContextManager[Executor]]


def _forkserver() -> multiprocessing.context.ForkServerContext:
    # forkserver: workers are forked from a clean single-threaded server, never from a parent that
    # may hold threads or locks (fork), and start faster than spawn (~45 ms for two). Like spawn, it
    # re-imports the entry script as __mp_main__ in the workers (unless `skip_main_script_in_workers` marked it):
    # scripts need the __main__ guard.
    context = multiprocessing.get_context("forkserver")
    # the server imports this module once, so each worker it forks has it (its first batch came ~40 ms later
    # when every worker imported it on its own); __main__ is the server's default preload
    context.set_forkserver_preload(["__main__", __name__])
    return context


def skip_main_script_in_workers() -> None:
    """For a command-line process whose main module is a script that nothing sent to a worker comes from
    (invoke's console script, under `invoke release`): have multiprocessing leave it out of the local pool's
    processes. The pool runs this package's functions only (`hash_batch`, the Debian scan's parse). Otherwise
    the pool's server imports the script, and with it invoke (~0.11 s of a core), before it forks the first
    worker: on the bench corpus the first file was hashed ~0.09 s after the scan, ~0.04 s without it. A main
    module whose spec names it `__main__` (as `python -c` gives) is one multiprocessing imports nowhere."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


@contextmanager
def local_pool(workers: int) -> Iterator[Executor]:
    """The default executor: `workers` local processes."""
    context = _forkserver()
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield pool
    finally:
        _stop_process_helpers()


def start_local_pool_early() -> None:
    """Start the server the local pool forks its workers from, and return without waiting for it: it starts
    Python and imports what the workers need (~0.08 s; ~0.2 s when the entry script is imported too, see
    `skip_main_script_in_workers`) while this process goes on. A run that will hash every file calls it before
    it walks the tree; the pool then finds the server ready, and stops it when it is done
    (`_stop_process_helpers`)."""
    from multiprocessing import forkserver

    _forkserver()
    forkserver.ensure_running()


def _hash_in_pool(files: Sequence[FileEntry], workers: int, executor: ExecutorFactory) -> Iterator[_Result]:
    batches = _batches(files)
    with executor(workers) as pool:
        # at most IN_FLIGHT batches sent and not yet taken back: the jobs and results held stay bounded (the
        # others keep the workers busy while the caller takes a batch's results)
        sent: dict[Future[list[_Result]], list[_Job]] = {}

        def send(count: int) -> None:
            for batch in itertools.islice(batches, count):
                sent[pool.submit(hash_batch, batch)] = batch

        send(IN_FLIGHT)
        try:
            while sent:
                done, _ = wait(sent, return_when=FIRST_COMPLETED)
                for future in done:
                    batch = sent.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool as err:
                        raise _worker_died(files, [batch, *sent.values()]) from err
                    yield from results
                send(len(done))
        finally:
            for future in sent:
                future.cancel()


def _worker_died(files: Sequence[FileEntry], in_flight: Iterable[Sequence[_Job]]) -> SnapshotError:
    """The one line for a hashing worker that died: killed, out of memory, or SIGBUS (a file truncated while
    the worker had it mapped). A file of the batches in flight that is no longer as scanned is named."""
    jobs = [job for batch in in_flight for job in batch]
    for index, path, source, size in jobs:
        try:
            st = os.stat(source)
        except OSError as err:
            return SnapshotError(
                f"{path}: cannot stat {source} ({err.strerror or err}) after a hashing worker died; "
                "check the snapshot and re-run"
            )
        if st.st_size != size or st.st_mtime_ns != files[index].mtime_ns:
            return SnapshotError(
                f"{path}: changed while it was hashed (now {st.st_size} bytes, {size} when scanned) and the "
                "hashing worker reading it died; wait for the mirror sync to finish and re-run"
            )
    first = jobs[0][1] if jobs else "?"
    return SnapshotError(
        f"{first}: a hashing worker process died (killed, or out of memory?) while the pool hashed this file and "
        f"{max(len(jobs) - 1, 0)} others, all still as scanned; re-run"
    )


def _stop_process_helpers() -> None:
    """Stop the forkserver and resource tracker the pool started (~25 MB of RSS that would otherwise
    idle through the rest of the run). CPython's own stop methods are private: where they are missing,
    the helpers simply live until the process exits, as multiprocessing intends. Other live children
    (an in-process Dask LocalCluster's workers, say) share the resource tracker: stopping it would wait
    for them, so then both helpers are left running."""
    from multiprocessing import forkserver, resource_tracker

    if multiprocessing.active_children():
        log.debug("other child processes share the multiprocessing helpers: left running")
        return

    for helper in (getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            try:
                stop()
            except (OSError, RuntimeError) as exc:
                log.debug("could not stop a multiprocessing helper: %s", exc)


def iter_hashed(
    files: Sequence[FileEntry],
    *,
    workers: int = 2,
    progress: Progress | None = None,
    executor: ExecutorFactory = local_pool,
) -> Iterator[HashedFile]:
    """Hash `files` (each read once), yielding one HashedFile per entry as it is done (any order).

    Nothing is kept once yielded: the caller stores the piece hashes and drops them, so memory does not
    grow with the snapshot. Raises SnapshotError if a file cannot be read, differs in size from its
    entry, or changes while it is hashed.
    """
    sink: Progress = progress if progress is not None else NullProgress()
    total_bytes = sum(entry.size for entry in files)
    sink.start("hash", total=len(files), unit="files")
    # `workers` sizes the local pool; another executor (a Dask cluster) brings its own workers. Below the
    # thresholds, hashing here beats any executor's start-up or round trips.
    parallel = workers > 1 or executor is not local_pool
    use_pool = parallel and len(files) >= 2 and (len(files) >= POOL_MIN_FILES or total_bytes >= POOL_MIN_BYTES)
    if use_pool:
        log.debug("hashing %d files, %d bytes, with %d workers", len(files), total_bytes, workers)
        results: Iterable[_Result] = _hash_in_pool(files, workers, executor)
    else:
        log.debug("hashing %d files, %d bytes, in-process", len(files), total_bytes)
        buffer = bytearray(READ_BUFFER_SIZE)
        results = (
            (index, *_hash_one(entry.path, os.fspath(entry.source), entry.size, buffer))
            for index, entry in enumerate(files)
        )
    for index, sha256, pieces in results:
        entry = files[index]
        yield HashedFile(entry=entry, sha256=sha256, piece_size=piece_size_for(entry.size), pieces=pieces)
        sink.advance(1, entry.size)
    sink.finish()


def hash_files(
    files: Sequence[FileEntry],
    *,
    workers: int = 2,
    progress: Progress | None = None,
    verify_expected: bool = True,
    executor: ExecutorFactory = local_pool,
) -> tuple[HashedFile, ...]:
    """Hash `files` (each read once) and return one HashedFile per entry, in input order.

    Raises SnapshotError if a file cannot be read, differs in size from its entry, changes while it
    is hashed, or (all of them, in one message) if its SHA-256 differs from the repository metadata.
    """
    files = tuple(files)  # one object per entry while they are ordered by identity (a FileTable makes new ones)
    position = {id(entry): index for index, entry in enumerate(files)}
    hashed = sorted(
        iter_hashed(files, workers=workers, progress=progress, executor=executor), key=lambda h: position[id(h.entry)]
    )
    if verify_expected:
        check_expected((item.entry, item.sha256) for item in hashed)
    return tuple(hashed)


def check_expected(found: Iterable[tuple[FileEntry, str]]) -> None:
    """Raise one SnapshotError naming every file whose SHA-256 differs from the repository metadata."""
    mismatches = [
        f"{entry.path}: SHA-256 {sha256} != repository metadata SHA-256 {entry.expected_sha256}"
        for entry, sha256 in found
        if entry.expected_sha256 is not None and sha256 != entry.expected_sha256.lower()
    ]
    if mismatches:
        shown = mismatches[:MAX_REPORTED_MISMATCHES]
        more = len(mismatches) - len(shown)
        if more:
            shown.append(f"… and {more} more")
        raise SnapshotError("; ".join(shown) + "; re-sync the mirror")
