from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline import hashing
from pipeline.errors import SnapshotError
from pipeline.hashing import hash_files, piece_size_for
from pipeline.model import FileEntry

GOLDEN = Path(__file__).parent.parent / "golden" / "piece_sizes.json"
KiB = 1024
MiB = 1024 * KiB


def make_entry(root: Path, rel: str, data: bytes, expected_sha256: str | None = None) -> FileEntry:
    source = root / rel
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    st = source.stat()
    return FileEntry(path=rel, source=source, size=st.st_size, mtime_ns=st.st_mtime_ns, expected_sha256=expected_sha256)


def reference(data: bytes) -> tuple[str, int, bytes]:
    """sha256, piece size, pieces computed the obvious way over the whole content."""
    piece = piece_size_for(len(data))
    pieces = b"".join(hashlib.sha1(data[i : i + piece]).digest() for i in range(0, len(data), piece))
    return hashlib.sha256(data).hexdigest(), piece, pieces


def test_piece_size_golden_table() -> None:
    table = json.loads(GOLDEN.read_text())["table"]
    assert len(table) >= 20
    for size, piece in table.items():
        assert piece_size_for(int(size)) == piece, size


@pytest.mark.parametrize("size", [0, 1, 2**14, 2**24, 2**24 + 1, 2**30, 17 * 2**30, 2**40, 12345678901])
def test_piece_size_rules(size: int) -> None:
    piece = piece_size_for(size)
    assert piece & (piece - 1) == 0
    assert 16 * KiB <= piece <= 16 * MiB
    if piece < 16 * MiB:
        assert -(-size // piece) <= 1024
    if piece > 16 * KiB:
        assert -(-size // (piece // 2)) > 1024  # the next smaller power of two gives too many pieces


def test_piece_size_rejects_negative() -> None:
    with pytest.raises(ValueError):
        piece_size_for(-1)


SIZES = [0, 1, 16 * KiB - 1, 16 * KiB, 16 * KiB + 1, 3 * MiB + 17, 16 * MiB + 1]


@pytest.mark.parametrize("buffer_size", [hashing.READ_BUFFER_SIZE, 5000, 40 * KiB])
def test_pieces_and_sha256_match_hashlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer_size: int) -> None:
    # Small odd buffers make pieces straddle reads; the default exercises whole pieces per read.
    monkeypatch.setattr(hashing, "READ_BUFFER_SIZE", buffer_size)
    rng = random.Random(1)
    entries = [make_entry(tmp_path, f"pool/f{size}.deb", rng.randbytes(size)) for size in SIZES]
    hashed = hash_files(entries, workers=1)
    assert [h.entry for h in hashed] == entries
    for entry, h in zip(entries, hashed, strict=True):
        sha256, piece, pieces = reference(entry.source.read_bytes())
        assert (h.sha256, h.piece_size, h.pieces) == (sha256, piece, pieces), entry.path
    assert hashed[0].pieces == b"" and hashed[0].piece_size == 16 * KiB
    assert hashed[-1].piece_size == 32 * KiB


def spy_pool(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of files each time the process pool is used."""
    calls: list[int] = []
    real = hashing._hash_in_pool

    def spy(files: Sequence[FileEntry], workers: int, executor: Any) -> Iterator[Any]:
        calls.append(len(files))
        return real(files, workers, executor)

    monkeypatch.setattr(hashing, "_hash_in_pool", spy)
    return calls


def test_small_inputs_are_hashed_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [make_entry(tmp_path, f"p/{i}", b"x" * 1000) for i in range(100)]
    pool_calls = spy_pool(monkeypatch)
    hash_files(entries, workers=2)
    assert pool_calls == []


@pytest.fixture
def force_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the process pool even for the few small files of a unit test (decided in the parent)."""
    monkeypatch.setattr(hashing, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(hashing, "POOL_MIN_BYTES", 1)


@pytest.mark.usefixtures("force_pool")
def test_parallel_equals_serial_and_keeps_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    sizes = [rng.choice([0, 1, 100, 20_000, 70_000, 300_000]) for _ in range(90)] + [5 * MiB, 2 * MiB]
    rng.shuffle(sizes)
    entries = [make_entry(tmp_path, f"pool/{i:03d}.deb", rng.randbytes(size)) for i, size in enumerate(sizes)]
    monkeypatch.setattr(hashing, "BATCH_MAX_FILES", 7)  # several batches per worker
    pool_calls = spy_pool(monkeypatch)
    serial = hash_files(entries, workers=1)
    assert pool_calls == []
    parallel = hash_files(entries, workers=2)
    assert pool_calls == [len(entries)]
    assert parallel == serial
    assert [h.entry.path for h in parallel] == [e.path for e in entries]


@pytest.mark.usefixtures("force_pool")
def test_any_executor_plugs_in_and_gives_the_same_results(tmp_path: Path) -> None:
    """The executor seam: batches go to whatever Executor the factory gives (here threads), same results."""
    rng = random.Random(3)
    entries = [make_entry(tmp_path, f"pool/{i:03d}.deb", rng.randbytes(rng.choice([0, 10, 70_000]))) for i in range(40)]
    entered: list[int] = []
    submitted: list[int] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    @contextmanager
    def threads(workers: int) -> Iterator[Executor]:
        entered.append(workers)
        with Counting(max_workers=1) as pool:  # one thread: hash_batch reuses one buffer per process
            yield pool

    serial = hash_files(entries, workers=1)
    via_threads = tuple(
        sorted(hashing.iter_hashed(entries, workers=3, executor=threads), key=lambda h: entries.index(h.entry))
    )
    assert entered == [3] and sum(submitted) == len(entries)
    assert via_threads == serial


@pytest.mark.usefixtures("force_pool")
def test_batches_are_sent_a_few_at_a_time_large_files_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most IN_FLIGHT batches are out at once (a million files' jobs are never all queued); files of
    FIRST_BYTES or more go first, largest first, then the others in their order; the results are the same."""
    monkeypatch.setattr(hashing, "BATCH_MAX_FILES", 2)
    monkeypatch.setattr(hashing, "IN_FLIGHT", 3)
    monkeypatch.setattr(hashing, "FIRST_BYTES", 50_000)
    sizes = [10, 60_000, 0, 90_000, 20, 70_000, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130]
    entries = [make_entry(tmp_path, f"pool/{i:03d}.deb", bytes([i]) * size) for i, size in enumerate(sizes)]
    yielded: set[str] = set()
    most_out: list[int] = []
    sent: list[list[str]] = []

    class Bounded(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            taken = sum(1 for batch in sent if yielded.issuperset(batch))
            sent.append([job[1] for job in args[0]])
            most_out.append(len(sent) - taken)  # sent and not yet wholly given back, this one included
            return super().submit(fn, *args, **kwargs)

    @contextmanager
    def threads(workers: int) -> Iterator[Executor]:
        with Bounded(max_workers=1) as pool:  # one thread: hash_batch reuses one buffer per process
            yield pool

    hashed = []
    for item in hashing.iter_hashed(entries, workers=2, executor=threads):
        hashed.append(item)
        yielded.add(item.entry.path)
    assert max(most_out) <= 3 and len(sent) == 9
    order = [path for batch in sent for path in batch]
    assert order[:3] == ["pool/003.deb", "pool/005.deb", "pool/001.deb"]  # the large ones, largest first
    assert order[3:] == [e.path for e in entries if e.size < 50_000]  # then the rest, in their order
    assert sorted(hashed, key=lambda h: entries.index(h.entry)) == list(hash_files(entries, workers=1))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        self.calls.append(("start", stage, total, unit))

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        self.calls.append(("advance", count, nbytes))

    def finish(self) -> None:
        self.calls.append(("finish",))


@pytest.mark.usefixtures("force_pool")
@pytest.mark.parametrize("workers", [1, 2])
def test_progress(tmp_path: Path, workers: int) -> None:
    count = 70 if workers == 2 else 3
    entries = [make_entry(tmp_path, f"p/{i}", b"x" * i) for i in range(count)]
    progress = Recorder()
    hash_files(entries, workers=workers, progress=progress)
    assert progress.calls[0] == ("start", "hash", count, "files")
    assert progress.calls[-1] == ("finish",)
    advances = progress.calls[1:-1]
    assert len(advances) == count
    assert sum(a[1] for a in advances) == count  # type: ignore[misc]
    assert sum(a[2] for a in advances) == sum(range(count))  # type: ignore[misc]


def test_expected_sha256_mismatches_are_collected(tmp_path: Path) -> None:
    good = make_entry(tmp_path, "pool/good.deb", b"good", hashlib.sha256(b"good").hexdigest())
    bad1 = make_entry(tmp_path, "pool/bad1.deb", b"one", expected_sha256="0" * 64)
    bad2 = make_entry(tmp_path, "pool/bad2.deb", b"two", expected_sha256="f" * 64)
    with pytest.raises(SnapshotError) as info:
        hash_files([bad1, good, bad2], workers=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("pool/bad1.deb: SHA-256 ")
    assert f"{hashlib.sha256(b'two').hexdigest()} != repository metadata SHA-256 {'f' * 64}" in message
    assert "pool/bad2.deb" in message and "pool/good.deb" not in message
    assert message.endswith("re-sync the mirror")


def test_many_mismatches_are_truncated(tmp_path: Path) -> None:
    entries = [make_entry(tmp_path, f"pool/{i:02d}.deb", b"%d" % i, expected_sha256="0" * 64) for i in range(25)]
    with pytest.raises(SnapshotError) as info:
        hash_files(entries, workers=1)
    message = str(info.value)
    assert "pool/19.deb" in message and "pool/20.deb" not in message
    assert "and 5 more; re-sync the mirror" in message


def test_expected_sha256_uppercase_accepted(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "a.deb", b"a", expected_sha256=hashlib.sha256(b"a").hexdigest().upper())
    assert hash_files([entry])[0].sha256 == hashlib.sha256(b"a").hexdigest()


def test_size_differs_from_scan(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "pool/grown.deb", b"0123456789")
    entry.source.write_bytes(b"0123456789abc")
    with pytest.raises(SnapshotError, match=r"^pool/grown\.deb: .*changed since the scan"):
        hash_files([entry], workers=1)


def test_file_grows_during_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_entry(tmp_path, "pool/growing.deb", b"x" * 50_000)
    real_fstat = os.fstat

    def fstat_then_append(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        with open(entry.source, "ab") as f:  # appended after the first fstat, before reading
            f.write(b"more")
        monkeypatch.setattr(os, "fstat", real_fstat)
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_append)
    with pytest.raises(SnapshotError, match=r"^pool/growing\.deb: "):
        hash_files([entry], workers=1)


def test_file_touched_while_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_entry(tmp_path, "pool/touched.deb", b"y" * 70_000)
    real_fstat = os.fstat

    def fstat_then_touch(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        os.utime(entry.source, ns=(entry.mtime_ns + 10**9, entry.mtime_ns + 10**9))
        monkeypatch.setattr(os, "fstat", real_fstat)
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_touch)
    with pytest.raises(SnapshotError, match=r"^pool/touched\.deb: changed while it was hashed"):
        hash_files([entry], workers=1)


def test_file_replaced_by_rename_while_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rsync's way: a new file renamed over the old one; the open descriptor still reads the old inode."""
    entry = make_entry(tmp_path, "pool/renamed.deb", b"old" * 10_000)
    real_fstat = os.fstat

    def fstat_then_replace(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        fresh = entry.source.with_name(".renamed.deb.tmp")
        fresh.write_bytes(b"new" * 10_000)
        os.replace(fresh, entry.source)
        monkeypatch.setattr(os, "fstat", real_fstat)
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_replace)
    with pytest.raises(SnapshotError, match=r"^pool/renamed\.deb: changed while it was hashed"):
        hash_files([entry], workers=1)


def test_missing_file_names_path(tmp_path: Path) -> None:
    entry = FileEntry(path="pool/gone.deb", source=tmp_path / "gone.deb", size=3, mtime_ns=0)
    with pytest.raises(SnapshotError, match=r"^pool/gone\.deb: cannot open"):
        hash_files([entry], workers=1)


@pytest.mark.usefixtures("force_pool")
def test_error_in_pool_worker_names_path(tmp_path: Path) -> None:
    entries = [make_entry(tmp_path, f"p/{i:03d}", b"z" * 100) for i in range(70)]
    entries[33] = FileEntry(path="p/bad", source=entries[33].source, size=99, mtime_ns=0)
    with pytest.raises(SnapshotError, match=r"^p/bad: "):
        hash_files(entries, workers=2)


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    entry = FileEntry(path="d", source=tmp_path / "d", size=0, mtime_ns=0)
    with pytest.raises(SnapshotError, match=r"^d: "):
        hash_files([entry], workers=1)


def test_empty_input() -> None:
    assert hash_files([], workers=2) == ()


MAPPED_SIZES = [0, 1, 40 * KiB, 64 * KiB, 64 * KiB + 1, 200 * KiB + 5, 3 * MiB + 17, 16 * MiB + 1]


def test_a_worker_maps_large_files_with_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's batch (`hash_batch`, run here) maps files of MAP_MIN_BYTES or more a window at a time; the
    results are those of reading. Small windows make pieces and windows meet in every way."""
    monkeypatch.setattr(hashing, "MAP_MIN_BYTES", 40 * KiB)
    monkeypatch.setattr(hashing, "MAP_WINDOW", 64 * KiB)
    maps: list[int] = []
    real_mmap = hashing.mmap.mmap

    def counting(fd: int, length: int, **kwargs: Any) -> Any:
        maps.append(length)
        return real_mmap(fd, length, **kwargs)

    monkeypatch.setattr(hashing.mmap, "mmap", counting)
    rng = random.Random(5)
    entries = [make_entry(tmp_path, f"pool/m{size}.deb", rng.randbytes(size)) for size in MAPPED_SIZES]
    jobs = [(i, e.path, os.fspath(e.source), e.size) for i, e in enumerate(entries)]
    mapped = hashing.hash_batch(jobs)
    assert maps  # the large files were mapped...
    assert sum(maps) == sum(size for size in MAPPED_SIZES if size >= 40 * KiB)
    assert max(maps) == 64 * KiB  # ...a window at a time (16 MiB + 1: 32 KiB pieces, two a window)
    maps.clear()
    read = hash_files(entries, workers=1)  # the run's own process reads
    assert maps == []
    for (index, sha256, pieces), h, entry in zip(mapped, read, entries, strict=True):
        assert (sha256, pieces) == (h.sha256, h.pieces) == (reference(entry.source.read_bytes())[0], h.pieces)
        assert pieces == reference(entry.source.read_bytes())[2], entry.path
        assert index == entries.index(entry)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("grown", r"changed while it was hashed; wait for the mirror sync"),  # the size in the file's identity
        ("cut", r"changed while it was hashed \(mmap length is greater than file size\)"),  # refused by mmap
    ],
)
def test_a_file_changed_before_it_is_mapped_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, message: str
) -> None:
    monkeypatch.setattr(hashing, "MAP_MIN_BYTES", 1)
    entry = make_entry(tmp_path, f"pool/{change}.deb", b"x" * 50_000)
    real_fstat = os.fstat

    def fstat_then_change(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if change == "grown":  # after the first fstat, before the map
            with open(entry.source, "ab") as f:
                f.write(b"more")
        else:
            os.truncate(entry.source, 1000)
        monkeypatch.setattr(os, "fstat", real_fstat)
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_change)
    with pytest.raises(SnapshotError, match=rf"^pool/{change}\.deb: {message}"):
        hashing.hash_batch([(0, entry.path, os.fspath(entry.source), entry.size)])


@contextmanager
def forked_pool(workers: int) -> Iterator[Executor]:
    """A pool forked from this process: its workers keep this test's monkeypatches (and do not print pytest's
    faulthandler dump when one dies of a signal)."""
    import faulthandler
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=faulthandler.disable) as pool:
        yield pool


@pytest.mark.usefixtures("force_pool")
def test_a_file_truncated_while_mapped_kills_its_worker_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGBUS: the worker maps the file, then it is cut to 10 KiB, so the worker touches pages past
    its end. The run names the file in one line."""
    monkeypatch.setattr(hashing, "MAP_MIN_BYTES", 64 * KiB)
    entries = [make_entry(tmp_path, f"pool/{i:02d}.deb", b"s" * 100) for i in range(20)]
    victim = make_entry(tmp_path, "pool/cut.deb", b"c" * 300 * KiB)
    real_mmap = hashing.mmap.mmap

    def map_then_truncate(fd: int, length: int, **kwargs: Any) -> Any:
        mapping = real_mmap(fd, length, **kwargs)
        os.truncate(victim.source, 10 * KiB)
        return mapping

    monkeypatch.setattr(hashing.mmap, "mmap", map_then_truncate)
    with pytest.raises(SnapshotError) as caught:
        hash_files([*entries, victim], workers=2, executor=forked_pool)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("pool/cut.deb: changed while it was hashed (now 10240 bytes, 307200 when scanned)")
    assert message.endswith("wait for the mirror sync to finish and re-run")


def _die(jobs: Sequence[Any]) -> list[Any]:
    os.kill(os.getpid(), 9)
    return []


@pytest.mark.usefixtures("force_pool")
def test_a_worker_killed_is_one_line(tmp_path: Path) -> None:
    entries = [make_entry(tmp_path, f"pool/{i:02d}.deb", b"k" * 100) for i in range(10)]

    @contextmanager
    def killing(workers: int) -> Iterator[Executor]:
        class Dying(Executor):
            def __init__(self, inner: Executor) -> None:
                self.inner = inner

            def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                return self.inner.submit(_die, *args, **kwargs)

        with forked_pool(workers) as pool:
            yield Dying(pool)

    with pytest.raises(SnapshotError) as caught:
        hash_files(entries, workers=2, executor=killing)
    assert str(caught.value) == (
        "pool/00.deb: a hashing worker process died (killed, or out of memory?) while the pool hashed this file "
        "and 9 others, all still as scanned; re-run"
    )


def test_a_pool_server_started_early_is_the_one_the_pool_forks_from_and_stops() -> None:
    from multiprocessing import forkserver

    server = forkserver._forkserver  # type: ignore[attr-defined]
    hashing.start_local_pool_early()
    started = server._forkserver_pid
    assert started is not None and os.waitpid(started, os.WNOHANG) == (0, 0)  # running, not waited for
    with hashing.local_pool(2) as pool:
        assert pool.submit(len, "four").result(timeout=60) == 4
        assert server._forkserver_pid == started  # the same server: nothing started twice
    assert server._forkserver_pid is None  # stopped with the pool


@pytest.mark.parametrize("skip", [False, True])
def test_a_main_script_marked_is_imported_by_no_pool_process(tmp_path: Path, skip: bool) -> None:
    imported = tmp_path / "imported"
    imported.mkdir()
    script = tmp_path / "entry.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "if __name__ != '__main__':  # imported into a process of the pool\n"
        f"    Path({str(imported)!r}, str(os.getpid())).write_text(__name__)\n"
        "from pipeline import hashing\n"
        "if __name__ == '__main__':\n"
        "    if sys.argv[1] == 'skip':\n"
        "        hashing.skip_main_script_in_workers()\n"
        "    with hashing.local_pool(2) as pool:\n"
        "        print(sum(pool.map(len, ['a', 'bb', 'ccc'])))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script), "skip" if skip else "keep"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr
    names = {path.read_text() for path in imported.iterdir()}
    assert names == (set() if skip else {"__mp_main__"})
