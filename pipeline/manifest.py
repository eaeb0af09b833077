"""The destination's manifest in memory: key -> (SHA-256, ETag, size, last referenced), in columns.

A dict of `ManifestEntry` costs ~470 bytes an object (the key, the SHA-256 as hex, the ETag, the entry and
its float, the dict slot), and at a million packages the destination holds over two million objects. Here
the keys are sorted and kept in blocks of `BLOCK`: each block's keys and ETags joined and compressed (`scratch.pack`)
(sorted keys share long prefixes), then its SHA-256s as 32 raw bytes and its numbers, ~100 bytes an
object, set aside in the scratch file (`pipeline.scratch`). Memory keeps each block's first key and where
the block is: ~2 bytes an object. A lookup bisects the blocks' first keys and reads and decodes one
block; the few blocks decoded last are kept, since every caller asks in key order (one or two interleaved
runs of keys).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pipeline.scratch import SpilledBlocks, pack, unpack
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

    __slots__ = ("_blocks", "_cache", "_count", "_firsts", "_odd", "_odd_blocks")

    def __init__(
        self,
        firsts: list[str],
        blocks: SpilledBlocks,
        odd_blocks: dict[int, tuple[str, ...]],
        odd: dict[int, str],
        count: int,
    ) -> None:
        self._firsts = firsts
        self._blocks = blocks  # each: the keys and ETags compressed, then SHA-256s, sizes, times (`_packed`)
        self._odd_blocks = odd_blocks
        self._odd = odd  # entry -> a SHA-256 text that is not 64 lowercase hex digits (as read)
        self._count = count
        self._cache: dict[int, _Block] = {}

    def _block(self, number: int) -> _Block:
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        entries = min(BLOCK, self._count - number * BLOCK)  # every block is full but the last
        decoded = _unpacked(self._blocks[number], entries, self._odd_blocks.get(number))
        if len(self._cache) >= _CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[number] = decoded
        return decoded

    def _row(self, key: str) -> tuple[int, _Block] | None:
        """(entry number, its block) of `key`, None when the manifest has no such key."""
        number = bisect_right(self._firsts, key) - 1
        if number < 0:
            return None
        block = self._block(number)
        keys = block[0]
        at = bisect_left(keys, key)
        if at == len(keys) or keys[at] != key:
            return None
        return number * BLOCK + at, block

    def _entry(self, row: int, block: _Block) -> ManifestEntry:
        at = row % BLOCK
        _, etags, digests, sizes, referenced = block
        sha256 = self._odd.get(row)
        if sha256 is None:
            sha256 = digests[32 * at : 32 * at + 32].hex()
        return ManifestEntry(sha256, etags[at], sizes[at], referenced[at])

    def __getitem__(self, key: str) -> ManifestEntry:
        found = self._row(key)
        if found is None:
            raise KeyError(key)
        return self._entry(*found)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._row(key) is not None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for number in range(len(self._blocks)):
            yield from self._block(number)[0]

    def entries(self) -> Iterator[tuple[str, ManifestEntry]]:
        """(key, entry) of every key, in key order, a block decoded at a time."""
        row = 0
        for number in range(len(self._blocks)):
            block = self._block(number)
            for key in block[0]:
                yield key, self._entry(row, block)
                row += 1


# A block decoded: keys, ETags, SHA-256s (32 bytes each), sizes, last referenced.
_NUMBERS = 32 + 8 + 8  # an entry's bytes after a block's text: SHA-256, size, time
_Block = tuple[tuple[str, ...], tuple[str, ...], bytes, "array[int]", "array[float]"]


def _packed(
    keys: list[str], etags: list[str], digests: bytes, sizes: array[int], referenced: array[float]
) -> tuple[bytes, tuple[str, ...] | None]:
    """A block's bytes (the keys and ETags compressed, then the SHA-256s, sizes and times), and the keys and
    ETags themselves when one holds the separator (then not in the bytes)."""
    fields = (*keys, *etags)
    odd = fields if any(_SEP in field for field in fields) else None
    text = b"" if odd is not None else pack(_SEP.join(fields).encode())
    return text + digests + sizes.tobytes() + referenced.tobytes(), odd


def _unpacked(data: bytes, entries: int, odd: tuple[str, ...] | None) -> _Block:
    text = len(data) - _NUMBERS * entries  # the compressed keys and ETags come first (none when odd)
    fields = odd if odd is not None else tuple(unpack(data[:text]).decode().split(_SEP))
    numbers = text + 32 * entries
    sizes, referenced = array("q"), array("d")
    sizes.frombytes(data[numbers : numbers + 8 * entries])
    referenced.frombytes(data[numbers + 8 * entries : numbers + 16 * entries])
    return fields[:entries], fields[entries:], data[text:numbers], sizes, referenced


class ManifestTableBuilder:
    """Collects entries in ascending key order (a key given again replaces its entry) into a ManifestTable;
    `UnsortedError` on a key below the last."""

    def __init__(self) -> None:
        self._firsts: list[str] = []
        self._blocks = SpilledBlocks()
        self._odd_blocks: dict[int, tuple[str, ...]] = {}
        self._odd: dict[int, str] = {}
        self._count = 0
        # the block being filled
        self._keys: list[str] = []
        self._etags: list[str] = []
        self._digests = bytearray()
        self._sizes = array("q")
        self._referenced = array("d")
        self._last: str | None = None

    def add(self, key: str, sha256: str, etag: str, size: int, referenced: float) -> None:
        last = self._last
        if last is not None and key <= last:
            if key < last:
                raise UnsortedError(f"{key!r} after {last!r}")
            self._drop_last()
        self._last = key
        row = self._count
        if len(sha256) == 64 and _HEX.issuperset(sha256):
            self._digests += bytes.fromhex(sha256)
        else:
            self._digests += bytes(32)
            self._odd[row] = sha256
        self._sizes.append(size)
        self._referenced.append(referenced)
        self._keys.append(key)
        self._etags.append(etag)
        self._count += 1
        if len(self._keys) == BLOCK:
            self._seal()

    def _drop_last(self) -> None:
        """Forget the last entry (its key comes again)."""
        if not self._keys:  # it ended a sealed block: open that block again
            number = len(self._blocks) - 1
            keys, etags, digests, sizes, referenced = _unpacked(
                self._blocks.pop(), BLOCK, self._odd_blocks.pop(number, None)
            )
            self._firsts.pop()
            self._keys, self._etags = list(keys), list(etags)
            self._digests, self._sizes, self._referenced = bytearray(digests), sizes, referenced
        self._keys.pop()
        self._etags.pop()
        self._count -= 1
        self._odd.pop(self._count, None)
        del self._digests[-32:], self._sizes[-1], self._referenced[-1]

    def _seal(self) -> None:
        data, odd = _packed(self._keys, self._etags, bytes(self._digests), self._sizes, self._referenced)
        if odd is not None:
            self._odd_blocks[len(self._blocks)] = odd
        self._blocks.append(data)
        self._firsts.append(copied(self._keys[0]))  # not the parsed line's string (strcolumn.copied)
        self._keys, self._etags = [], []
        self._digests, self._sizes, self._referenced = bytearray(), array("q"), array("d")

    def build(self) -> ManifestTable:
        if self._keys:
            self._seal()
        return ManifestTable(self._firsts, self._blocks, self._odd_blocks, self._odd, self._count)


def manifest_table(entries: Iterable[tuple[str, ManifestEntry]]) -> ManifestTable:
    """The table of `entries`, in any order (sorted here when they are not; a key given twice: the last)."""
    given = list(entries)
    builder = ManifestTableBuilder()
    for key, entry in sorted(given, key=lambda item: item[0]) if _unsorted(given) else given:
        builder.add(key, entry.sha256, entry.etag, entry.size, entry.referenced)
    return builder.build()


def _unsorted(entries: list[tuple[str, ManifestEntry]]) -> bool:
    return any(entries[i][0] > entries[i + 1][0] for i in range(len(entries) - 1))
