"""The destination's manifest in memory: key -> (SHA-256, ETag, size, last referenced), in columns.

A dict of `ManifestEntry` costs ~470 bytes an object (the key, the SHA-256 as hex, the ETag, the entry and
its float, the dict slot), and at a million packages the destination holds over two million objects. Here
the keys are sorted and kept in blocks of `BLOCK`: each block's keys and ETags joined and zlib-compressed
(sorted keys share long prefixes), the SHA-256s as 32 raw bytes and the numbers in arrays: ~100 bytes an
object. A lookup bisects the blocks' first keys and decodes one block; the few blocks decoded last are
kept, since every caller asks in key order (one or two interleaved runs of keys).
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pipeline.strcolumn import copied

BLOCK = 64  # entries a block
_CACHED = 8  # decoded blocks kept
_SEP = "\0"  # never in an object key (a path) or an ETag; a block holding one is kept as it is
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    sha256: str
    etag: str
    size: int
    referenced: float  # epoch seconds: last time a committed publication reached this key


class UnsortedError(ValueError):
    """The entries were not given in ascending key order."""


class ManifestTable(Mapping[str, ManifestEntry]):
    """key -> ManifestEntry, built by `ManifestTableBuilder` (keys ascending); read-only."""

    __slots__ = ("_blocks", "_cache", "_digests", "_firsts", "_odd", "_referenced", "_sizes")

    def __init__(
        self,
        firsts: list[str],
        blocks: list[bytes | tuple[str, ...]],
        digests: bytearray,
        odd: dict[int, str],
        sizes: array[int],
        referenced: array[float],
    ) -> None:
        self._firsts = firsts
        self._blocks = blocks
        self._digests = digests  # 32 bytes an entry; zeros where `odd` holds the text
        self._odd = odd  # entry -> a SHA-256 text that is not 64 lowercase hex digits (as read)
        self._sizes = sizes
        self._referenced = referenced
        self._cache: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def _block(self, number: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(keys, ETags) of block `number`."""
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        stored = self._blocks[number]
        fields = stored if isinstance(stored, tuple) else tuple(zlib.decompress(stored).decode().split(_SEP))
        half = len(fields) // 2
        decoded = fields[:half], fields[half:]
        if len(self._cache) >= _CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[number] = decoded
        return decoded

    def _row(self, key: str) -> tuple[int, str] | None:
        """(entry number, ETag) of `key`, None when the manifest has no such key."""
        number = bisect_right(self._firsts, key) - 1
        if number < 0:
            return None
        keys, etags = self._block(number)
        at = bisect_left(keys, key)
        if at == len(keys) or keys[at] != key:
            return None
        return number * BLOCK + at, etags[at]

    def _entry(self, row: int, etag: str) -> ManifestEntry:
        sha256 = self._odd.get(row)
        if sha256 is None:
            sha256 = self._digests[32 * row : 32 * row + 32].hex()
        return ManifestEntry(sha256, etag, self._sizes[row], self._referenced[row])

    def __getitem__(self, key: str) -> ManifestEntry:
        found = self._row(key)
        if found is None:
            raise KeyError(key)
        return self._entry(*found)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._row(key) is not None

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        for number in range(len(self._blocks)):
            yield from self._block(number)[0]

    def entries(self) -> Iterator[tuple[str, ManifestEntry]]:
        """(key, entry) of every key, in key order, a block decoded at a time."""
        row = 0
        for number in range(len(self._blocks)):
            keys, etags = self._block(number)
            for key, etag in zip(keys, etags, strict=True):
                yield key, self._entry(row, etag)
                row += 1


class ManifestTableBuilder:
    """Collects entries in ascending key order (a key given again replaces its entry) into a ManifestTable;
    `UnsortedError` on a key below the last."""

    def __init__(self) -> None:
        self._firsts: list[str] = []
        self._blocks: list[bytes | tuple[str, ...]] = []
        self._digests = bytearray()
        self._odd: dict[int, str] = {}
        self._sizes = array("q")
        self._referenced = array("d")
        self._keys: list[str] = []  # of the block being filled
        self._etags: list[str] = []
        self._last: str | None = None

    def add(self, key: str, sha256: str, etag: str, size: int, referenced: float) -> None:
        last = self._last
        if last is not None and key <= last:
            if key < last:
                raise UnsortedError(f"{key!r} after {last!r}")
            self._drop_last()
        self._last = key
        row = len(self._sizes)
        if len(sha256) == 64 and _HEX.issuperset(sha256):
            self._digests += bytes.fromhex(sha256)
        else:
            self._digests += bytes(32)
            self._odd[row] = sha256
        self._sizes.append(size)
        self._referenced.append(referenced)
        self._keys.append(key)
        self._etags.append(etag)
        if len(self._keys) == BLOCK:
            self._seal()

    def _drop_last(self) -> None:
        """Forget the last entry (its key comes again)."""
        if not self._keys:  # it ended a sealed block: open that block again
            stored = self._blocks.pop()
            self._firsts.pop()
            fields = stored if isinstance(stored, tuple) else tuple(zlib.decompress(stored).decode().split(_SEP))
            half = len(fields) // 2
            self._keys, self._etags = list(fields[:half]), list(fields[half:])
        self._keys.pop()
        self._etags.pop()
        row = len(self._sizes) - 1
        self._odd.pop(row, None)
        del self._digests[32 * row :], self._sizes[row], self._referenced[row]

    def _seal(self) -> None:
        fields = (*self._keys, *self._etags)
        if any(_SEP in field for field in fields):
            self._blocks.append(fields)
        else:
            self._blocks.append(zlib.compress(_SEP.join(fields).encode(), 1))
        self._firsts.append(copied(self._keys[0]))  # not the parsed line's string (strcolumn.copied)
        self._keys, self._etags = [], []

    def build(self) -> ManifestTable:
        if self._keys:
            self._seal()
        return ManifestTable(self._firsts, self._blocks, self._digests, self._odd, self._sizes, self._referenced)


def manifest_table(entries: Iterable[tuple[str, ManifestEntry]]) -> ManifestTable:
    """The table of `entries`, in any order (sorted here when they are not; a key given twice: the last)."""
    given = list(entries)
    builder = ManifestTableBuilder()
    for key, entry in sorted(given, key=lambda item: item[0]) if _unsorted(given) else given:
        builder.add(key, entry.sha256, entry.etag, entry.size, entry.referenced)
    return builder.build()


def _unsorted(entries: list[tuple[str, ManifestEntry]]) -> bool:
    return any(entries[i][0] > entries[i + 1][0] for i in range(len(entries) - 1))
