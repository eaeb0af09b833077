"""Scratch: what a run holds of every file or object, set aside on disk in blocks, read back by number.

At a million files a run holds millions of object keys, SHA-256s and ETags. Compressed in memory they
still cost ~100 bytes an object, ~250 MB for a whole mirror's destination. Here each sealed block goes to
one unlinked temporary file of the run (`own_scratch`; in TMPDIR, it vanishes with what uses it) and
memory keeps only where it is: 12 bytes a block. Reads are `os.pread`, which threads may share; the page
cache keeps what is read again. A forked child reads its parent's blocks through the inherited descriptor
and appends to a file of its own.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import zstandard

from pipeline.errors import PipelineError

RECORDS = 256  # fixed-width records in a block of a FixedColumn


_CODECS = threading.local()  # a zstd context serves one thread at a time: each thread makes its own


def pack(data: bytes) -> bytes:
    """`data` compressed for a block set aside: zstd at level 1 (on these blocks of paths, keys and rows,
    2-4x as fast as zlib at level 1, and smaller)."""
    try:
        compressor: zstandard.ZstdCompressor = _CODECS.compressor
    except AttributeError:
        compressor = _CODECS.compressor = zstandard.ZstdCompressor(level=1)
    return compressor.compress(data)


def unpack(data: bytes) -> bytes:
    """What `pack` was given."""
    try:
        decompressor: zstandard.ZstdDecompressor = _CODECS.decompressor
    except AttributeError:
        decompressor = _CODECS.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(data)


def temporary_file(what: str, directory: str | None = None) -> BinaryIO:
    """An unlinked temporary file (in `directory`, else TMPDIR), open for reading and writing; one line
    naming `what` it is for when it cannot be made."""
    try:
        return tempfile.TemporaryFile(prefix="mirrorseed-", dir=directory)
    except OSError as exc:
        where = directory or tempfile.gettempdir()
        raise PipelineError(f"{where}: cannot create {what} ({exc.strerror}); set TMPDIR") from exc


class Scratch:
    """An append-only unlinked temporary file: `put` bytes, `get` them back by (offset, size)."""

    def __init__(self) -> None:
        self._file = temporary_file("the scratch file")
        weakref.finalize(self, self._file.close)  # closed, its space freed, with the last column using it
        self._fd = self._file.fileno()
        self.pid = os.getpid()  # the process that appends; a forked child only reads
        self._end = 0
        self._lock = threading.Lock()

    def put(self, data: bytes | bytearray | memoryview) -> int:
        """Append `data`; its offset."""
        with self._lock:
            offset = self._end
            self._end += len(data)
        self.write_at(offset, data)
        return offset

    def reserve(self, size: int) -> int:
        """Set aside `size` bytes (zeros until written, `write_at`); their offset."""
        with self._lock:
            offset = self._end
            self._end += size
            try:
                os.ftruncate(self._fd, self._end)  # the file's size only grows: every reservation reads zeros
            except OSError as exc:
                raise PipelineError(f"scratch file: cannot grow ({exc.strerror}); free space in TMPDIR") from exc
        return offset

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset`: over bytes set aside by `reserve`, or appended by `put`."""
        try:
            written = os.pwrite(self._fd, data, offset)
        except OSError as exc:
            raise PipelineError(f"scratch file: cannot write ({exc.strerror}); free space in TMPDIR") from exc
        if written != len(data):
            raise PipelineError("scratch file: short write; free space in TMPDIR")

    def get(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise PipelineError("scratch file: a block is truncated; is TMPDIR being cleaned during the run?")
        return data

    @property
    def size(self) -> int:
        return self._end


_scratch: Scratch | None = None
_opening = threading.Lock()


def scratch() -> Scratch:
    """The process's scratch file, opened on first use (again in a forked child)."""
    global _scratch
    current = _scratch
    if current is not None and current.pid == os.getpid():
        return current
    with _opening:
        if _scratch is None or _scratch.pid != os.getpid():
            _scratch = Scratch()
        return _scratch


@contextmanager
def own_scratch() -> Iterator[None]:
    """A scratch file of its own for what is made inside (a run): it is closed, and its space freed, once
    nothing made there is left, even when the process goes on to other runs."""
    global _scratch
    with _opening:
        before, _scratch = _scratch, Scratch()
    try:
        yield
    finally:
        with _opening:
            _scratch = before


class SpilledBlocks:
    """Byte blocks appended in order, kept in the scratch file, read back whole by number."""

    __slots__ = ("_offsets", "_scratch", "_sizes")

    def __init__(self) -> None:
        self._scratch: Scratch | None = None  # the file this sequence's blocks went to
        self._offsets = array("q")
        self._sizes = array("l")

    def __len__(self) -> int:
        return len(self._offsets)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if self._scratch is None:
            self._scratch = scratch()
        elif self._scratch.pid != os.getpid():  # a forked child would write over its parent's next blocks
            raise PipelineError("scratch blocks made by another process cannot grow here")
        self._offsets.append(self._scratch.put(data))
        self._sizes.append(len(data))

    def __getitem__(self, number: int) -> bytes:
        if self._scratch is None:
            raise IndexError(number)
        return self._scratch.get(self._offsets[number], self._sizes[number])

    def pop(self) -> bytes:
        """Take the last block off (its bytes stay in the file, unread)."""
        data = self[len(self._offsets) - 1]
        self._offsets.pop()
        self._sizes.pop()
        return data


class FixedColumn:
    """Records of `width` bytes appended in order and read by number: the last block's in memory, the others
    in the scratch file (`RECORDS` a block); the block read last is kept (`RecordArray`'s way), so reading in
    order costs a read per block."""

    __slots__ = ("_blocks", "_open", "_recent", "_width")

    def __init__(self, width: int) -> None:
        self._width = width
        self._blocks = SpilledBlocks()
        self._open = bytearray()
        self._recent: tuple[int, bytes] = (-1, b"")

    def __len__(self) -> int:
        return len(self._blocks) * RECORDS + len(self._open) // self._width

    def append(self, record: bytes) -> None:
        if len(record) != self._width:
            raise ValueError(f"a record of {len(record)} bytes in a column of {self._width}")
        self._open += record
        if len(self._open) == RECORDS * self._width:
            self._blocks.append(self._open)
            self._open = bytearray()

    def extend(self, records: bytes) -> None:
        """`append` of each record in `records` (their bytes joined), a block's worth at a time."""
        if len(records) % self._width:
            raise ValueError(f"{len(records)} bytes of records in a column of {self._width}")
        block = RECORDS * self._width
        at = 0
        while at < len(records):
            room = block - len(self._open)
            self._open += records[at : at + room]
            at += room
            if len(self._open) == block:
                self._blocks.append(self._open)
                self._open = bytearray()

    def __getitem__(self, number: int) -> bytes:
        if number < 0:
            raise IndexError(number)
        block, at = divmod(number, RECORDS)
        width = self._width
        if block == len(self._blocks):
            if at * width >= len(self._open):
                raise IndexError(number)
            return bytes(self._open[at * width : at * width + width])
        recent = self._recent
        if recent[0] != block:
            recent = self._recent = (block, self._blocks[block])
        return recent[1][at * width : at * width + width]

    def __iter__(self) -> Iterator[bytes]:
        width = self._width
        for block in range(len(self._blocks)):
            data = self._blocks[block]
            for start in range(0, len(data), width):
                yield data[start : start + width]
        opened = bytes(self._open)
        for start in range(0, len(opened), width):
            yield opened[start : start + width]


class RecordArray:
    """`count` records of `width` bytes, zeros until written, written and read by number in any order. Reads
    come a block of `RECORDS` at a time and the block read last is kept (one tuple: threads may race to
    replace it, never tear it), so reading in order costs a read per block."""

    __slots__ = ("_count", "_file", "_offset", "_recent", "_width")

    def __init__(self, count: int, width: int) -> None:
        self._file = scratch()
        self._count = count
        self._width = width
        self._offset = self._file.reserve(count * width)
        self._recent: tuple[int, bytes] = (-1, b"")

    def __len__(self) -> int:
        return self._count

    def __setitem__(self, number: int, record: bytes) -> None:
        if not 0 <= number < self._count:
            raise IndexError(number)
        if len(record) != self._width:
            raise ValueError(f"a record of {len(record)} bytes in an array of {self._width}")
        self._file.write_at(self._offset + number * self._width, record)
        if self._recent[0] == number // RECORDS:
            self._recent = (-1, b"")

    def __getitem__(self, number: int) -> bytes:
        if not 0 <= number < self._count:
            raise IndexError(number)
        block, at = divmod(number, RECORDS)
        width = self._width
        recent = self._recent
        if recent[0] != block:
            first = block * RECORDS
            size = min(RECORDS, self._count - first) * width
            recent = (block, self._file.get(self._offset + first * width, size))
            self._recent = recent
        return recent[1][at * width : at * width + width]
