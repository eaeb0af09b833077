"""Decompressing upstream metadata (Debian `Packages.{xz,gz}`, Arch repo dbs) without inflating a bomb.

`MAX_METADATA_BYTES` caps what one metadata file may be, and decompress to: 1 GiB. The largest real ones
are one to two orders of magnitude smaller (Debian's or Ubuntu's biggest `Packages`, all of main or
universe for amd64, are well under 100 MiB uncompressed; Arch's `extra.db` is tens of MiB), so the cap
never refuses real metadata, while a few hundred KB of xz that would inflate to gigabytes is refused
after at most 1 GiB of output, read in chunks and never held at once by the callers (they stream).
Read as `bounded.MAX_METADATA_BYTES` at call time, so that tests can lower it.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import BinaryIO, Protocol

from pipeline.errors import SnapshotError
from pipeline.snapshot.paths import shown

MAX_METADATA_BYTES = 1 << 30
CHUNK_BYTES = 1 << 20  # the most one read() asks the decompressor for
# A size in upstream metadata: ASCII digits only (str.isdigit() also takes "²" and other digits int()
# refuses or reads), at most 18 of them (int() refuses over 4300 digits; SQLite integers end near 9.2e18).
_SIZE = re.compile(r"[0-9]{1,18}")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def size_text(size: int) -> str:
    """`size` for a message: whole MiB as such, else bytes."""
    return f"{size >> 20} MiB" if size and size % (1 << 20) == 0 else f"{size} bytes"


def parse_size(text: str) -> int | None:
    """A size field of upstream metadata (surrounding whitespace allowed) as an int; None if malformed."""
    text = text.strip()
    return int(text) if _SIZE.fullmatch(text) else None


def read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of an open file (more than `limit` means too large).

    Never asks for more than the file's size + 1: `read(n)` allocates n bytes before it reads.
    """
    return handle.read(min(os.fstat(handle.fileno()).st_size, limit) + 1)


class BoundedReader:
    """Reads a decompressing `stream`; refuses, in one line naming `rel`, to yield more than `limit` bytes.

    Every read asks the stream for at most what is left under the limit (plus one byte, to notice the
    excess) and at most CHUNK_BYTES, so decompression never allocates beyond it; a short read is not
    the end (read until b""). `size` and `sha256()` describe what was read. `why` says what the limit
    is, for the message (default: the metadata cap).
    """

    def __init__(self, stream: Readable, rel: str, limit: int, why: str = "") -> None:
        self._stream = stream
        self._rel = rel
        self._limit = limit
        self._why = why or f"{size_text(limit)}, the limit for repository metadata"
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        left = self._limit + 1 - self.size  # one byte more than allowed shows the stream goes on
        if left <= 0:
            raise self._too_large()
        data = self._stream.read(min(CHUNK_BYTES if size < 0 else size, left, CHUNK_BYTES))
        self.size += len(data)
        if self.size > self._limit:
            raise self._too_large()
        self._hash.update(data)
        return data

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._stream.close()

    def _too_large(self) -> SnapshotError:
        return SnapshotError(
            f"{shown(self._rel)}: decompresses to more than {self._why}; it is damaged or a decompression bomb, "
            "re-sync the mirror"
        )
