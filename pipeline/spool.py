"""A spool: the run's generated objects kept on disk, not in memory, until publish sends them.

Torrents, metalinks and listing pages of a 63,000-package repository weigh a few hundred MB in
memory; here each is appended once to one anonymous temporary file (unlinked at creation, so it
vanishes with the process). What the run keeps of each object is one entry in the spool's columns:
its key (in compressed blocks, `pipeline.strcolumn`) and SHA-256 (32 bytes), both set aside in the
scratch file (`pipeline.scratch`), its offset (its size is the distance to the next one) and a small
number for its headers: about 10 bytes in memory, where a `SpooledArtifact` object with a hex digest
costs about 260 (~1.6 GB at a million packages, ~2.7 objects each). `SpoolRefs` are sequences of entry numbers that
make a `SpooledArtifact` when one is read; publish reads the bytes back in batches.
"""

from __future__ import annotations

import hashlib
import os
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeVar, overload

from pipeline.errors import PipelineError
from pipeline.model import Artifact
from pipeline.scratch import FixedColumn, temporary_file
from pipeline.strcolumn import StringColumn

_FLUSH_AT = 1 << 20  # bytes put before the spool writes them to its file
# most bytes `read_runs` reads at once: a megabyte is a few hundred objects (the background writer held a run and
# its last object's copy: 8 MiB runs cost it ~15 MB)
_READ_RUN = 1 << 20


class Extent(Protocol):
    """Where an entry's bytes are in the spool file (`key`: for the error when they are not all there)."""

    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def key(self) -> str: ...


E = TypeVar("E", bound=Extent)


def read_exact(fd: int, offset: int, size: int, key: str) -> bytes:
    """`size` bytes at `offset` of the spool file open as `fd` (`key`: the last artifact they hold)."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise PipelineError(f"spool: {key} is truncated in the spool file")
    return data


def read_runs(read: Callable[[int, int, str], bytes], entries: Iterable[E]) -> Iterator[tuple[E, bytes]]:
    """Each of `entries` with its bytes, in their order, read by `read(offset, size, key)`: entries that follow
    each other in the file are read together, up to `_READ_RUN` bytes at once (a batch of content objects is
    one read, not a read of ~5 µs an object)."""
    run: list[E] = []
    end = 0
    for entry in entries:
        if run and (entry.offset != end or end - run[0].offset + entry.size > _READ_RUN):
            yield from _read_run(read, run)
            run = []
        run.append(entry)
        end = entry.offset + entry.size
    if run:
        yield from _read_run(read, run)


def _read_run(read: Callable[[int, int, str], bytes], run: Sequence[E]) -> Iterator[tuple[E, bytes]]:
    start, last = run[0].offset, run[-1]
    data = read(start, last.offset + last.size - start, last.key)
    for entry in run:
        yield entry, data[entry.offset - start : entry.offset - start + entry.size]


@dataclass(frozen=True, slots=True)
class SpooledArtifact:
    """An object written to a Spool: what the upload plan needs, without the bytes."""

    key: str
    size: int
    sha256: str
    content_type: str
    cache_control: str
    offset: int


_NUMBER = "I"  # an entry's number in an array of refs: 4 bytes (~3 million objects at a million Debian files)


class SpoolRefs(Sequence[SpooledArtifact]):
    """Entries of one spool, by number, in a given order: each item is made when it is read."""

    __slots__ = ("_numbers", "_spool")

    def __init__(self, spool: Spool, numbers: range | array[int]) -> None:
        self._spool = spool
        self._numbers = numbers

    def __len__(self) -> int:
        return len(self._numbers)

    @overload
    def __getitem__(self, index: int) -> SpooledArtifact: ...

    @overload
    def __getitem__(self, index: slice) -> SpoolRefs: ...

    def __getitem__(self, index: int | slice) -> SpooledArtifact | SpoolRefs:
        if isinstance(index, slice):
            return SpoolRefs(self._spool, self._numbers[index])
        return self._spool.ref(self._numbers[index])

    def __iter__(self) -> Iterator[SpooledArtifact]:
        ref = self._spool.ref
        return (ref(number) for number in self._numbers)

    def __add__(self, other: SpoolRefs) -> SpoolRefs:
        if other._spool is not self._spool:
            raise ValueError("refs of two spools cannot be joined")
        mine, theirs = self._numbers, other._numbers
        if isinstance(mine, range) and isinstance(theirs, range) and mine.step == theirs.step == 1:
            if mine.stop == theirs.start or not mine or not theirs:  # one run of entries: no array
                return SpoolRefs(
                    self._spool, range(mine.start if mine else theirs.start, theirs.stop if theirs else mine.stop)
                )
        joined = array(_NUMBER, mine)
        joined.extend(theirs)
        return SpoolRefs(self._spool, joined)

    @property
    def numbers(self) -> range | array[int]:
        return self._numbers

    def keys(self) -> Iterator[str]:
        """The keys, without making the refs."""
        key = self._spool.key
        return (key(number) for number in self._numbers)


class Spool:
    """Append-only store of artifact bytes in one unlinked temporary file, and a column per field of
    their refs."""

    def __init__(self, directory: str | None = None) -> None:
        self._file = temporary_file("the spool file", directory)
        self._end = 0
        # Bytes put since the last write to the file (from offset `_flushed`): one pwrite a `_FLUSH_AT`, not one
        # an artifact (~8 us each on ext4, two million of them at a million packages).
        self._pending = bytearray()
        self._flushed = 0
        self._lock = threading.Lock()
        self._keys = StringColumn()  # compressed blocks on disk, where a list costs ~150 bytes a key
        self._offsets = array("q")  # an entry's bytes end where the next one's start
        self._digests = FixedColumn(32)
        self._headers = array("H")  # an entry's (content type, cache control): a number into _kinds
        self._kinds: list[tuple[str, str]] = []
        self._kind_numbers: dict[tuple[str, str], int] = {}

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        """Entries put so far."""
        return len(self._keys)

    @property
    def bytes_written(self) -> int:
        return self._end

    def put(self, artifact: Artifact) -> int:
        """Append the bytes; the entry's number."""
        data = artifact.data
        with self._lock:
            self._pending += data
        if len(self._pending) >= _FLUSH_AT:
            self._flush(artifact.key)
        headers = (artifact.content_type, artifact.cache_control)
        kind = self._kind_numbers.get(headers)
        if kind is None:
            kind = self._kind_numbers[headers] = len(self._kinds)
            self._kinds.append(headers)
        number = len(self._keys)
        self._keys.append(artifact.key)
        self._offsets.append(self._end)
        self._digests.append(hashlib.sha256(data).digest())
        self._headers.append(kind)
        self._end += len(data)
        return number

    def add_all(self, artifacts: Iterable[Artifact]) -> SpoolRefs:
        first = len(self._keys)
        for artifact in artifacts:
            self.put(artifact)
        return SpoolRefs(self, range(first, len(self._keys)))

    def refs(self, numbers: Iterable[int]) -> SpoolRefs:
        """Refs of these entries, in this order."""
        return SpoolRefs(self, array(_NUMBER, numbers))

    def key(self, number: int) -> str:
        return self._keys[number]

    def sha256(self, number: int) -> str:
        return self._digests[number].hex()

    def size(self, number: int) -> int:
        following = number + 1
        end = self._offsets[following] if following < len(self._offsets) else self._end
        return end - self._offsets[number]

    def extent(self, number: int) -> tuple[int, int]:
        """Where the entry's bytes are in the spool file: offset and size."""
        return self._offsets[number], self.size(number)

    def shared_fd(self) -> int:
        """The spool file's descriptor, for a child process to read what was put so far (all of it written)."""
        if self._keys:
            self._flush(self._keys[len(self._keys) - 1])
        return self._file.fileno()

    def ref(self, number: int) -> SpooledArtifact:
        content_type, cache_control = self._kinds[self._headers[number]]
        return SpooledArtifact(
            key=self._keys[number],
            size=self.size(number),
            sha256=self.sha256(number),
            content_type=content_type,
            cache_control=cache_control,
            offset=self._offsets[number],
        )

    def _flush(self, key: str) -> None:
        """Write the bytes put since the last flush (`key`: the artifact put last, for the error)."""
        with self._lock:  # readers in threads (publish) may flush at once: the bytes are written once
            if not self._pending:
                return
            try:
                written = os.pwrite(self._file.fileno(), self._pending, self._flushed)
            except OSError as exc:
                raise PipelineError(f"spool: cannot write {key} ({exc.strerror}); free space in TMPDIR") from exc
            if written != len(self._pending):
                raise PipelineError(f"spool: short write of {key}; free space in TMPDIR")
            self._flushed += written
            self._pending = bytearray()

    def read(self, ref: SpooledArtifact) -> bytes:
        return self._read(ref.offset, ref.size, ref.key)

    def _read(self, offset: int, size: int, key: str) -> bytes:
        """`size` bytes at `offset` of the file (`key`: the last artifact they hold, for the error)."""
        if offset + size > self._flushed:
            self._flush(self._keys[len(self._keys) - 1])
        return read_exact(self._file.fileno(), offset, size, key)

    def load(self, ref: SpooledArtifact) -> Artifact:
        return self.load_many((ref,))[0]

    def load_many(self, refs: Iterable[SpooledArtifact]) -> list[Artifact]:
        """`load` of each, in their order, entries that follow each other in the file read together
        (`read_runs`)."""
        return [
            Artifact(key=ref.key, data=data, content_type=ref.content_type, cache_control=ref.cache_control)
            for ref, data in read_runs(self._read, refs)
        ]
