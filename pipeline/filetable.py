"""The scan's files in columns: `FileTable`, a `Sequence[FileEntry]` that keeps ~50 bytes a file, not ~2 KB.

A million FileEntry objects, each with its own path, source and hex digest strings, cost about 2 GB; the
scan keeps them from the walk to the end of the run. The table keeps each field in a column instead and
makes a FileEntry when one is asked for: a caller that iterates and lets each entry go holds one at a time.
What is read a file at a time, in order, is in the scratch file (`pipeline.scratch`), as it is added.

- `path`: sorted, in compressed blocks of 64 (`strcolumn.SortedColumn`, on disk; ~15 bytes a path where a
  list of str costs ~100): they are the table's order and what every stage looks up;
- `source`: a directory prefix (shared by every file of a directory) when the source ends with the path,
  else the whole source (a file reached through a symlink);
- `size`, `mtime_ns`: an `array('q')` each; `dev`, `inode`: an `array('Q')` each;
- `expected_sha256`: 32 raw bytes a file when it is lowercase hex (`scratch.FixedColumn`, on disk), else
  kept as given;
- `name`, `version`, `description`: by file, in compressed blocks on disk; `arch`, `shards`: the number of
  the value among the distinct ones (4 bytes). A column whose every value is the default costs nothing.
"""

from __future__ import annotations

import itertools
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from pipeline.model import FileEntry, SignatureRef
from pipeline.scratch import FixedColumn, RecordArray
from pipeline.sequences import ItemEquality
from pipeline.state import CachedFile
from pipeline.strcolumn import SortedColumn, StringColumn

__all__ = ["FileTable", "FileTableBuilder", "KnownDigests", "StatRow"]

_HEX = frozenset("0123456789abcdef")
# (path, size, name, version, arch, description, signature) of a file: what its record shows (`FileTable.shown_at`)
Shown = tuple[str, int, str | None, str | None, str | None, str | None, SignatureRef | None]
_OPTIONAL = ("name", "version", "arch", "description", "shards")
_SHARDS = _OPTIONAL.index("shards")
_TEXTS = frozenset(("name", "version", "description"))  # a value a package: set aside on disk by row
_SHARED = tuple(field for field in _OPTIONAL if field not in _TEXTS)  # a value shared by many files

# A file known by its stat alone (`FileTableBuilder.add_stat_rows`): path, source, size, mtime_ns, dev, inode.
StatRow = tuple[str, str, int, int, int, int]


class _Shared:
    """One column of values shared between files (an architecture, a tuple of shard names): by file, the
    number of its value among the distinct ones (4 bytes), made only when a value is not the default."""

    __slots__ = ("default", "distinct", "numbers", "values")

    def __init__(self, default: Any) -> None:
        self.default = default
        self.numbers: array[int] | None = None
        self.values: list[Any] = [default]  # by number; the default is number 0
        self.distinct: dict[Any, int] = {default: 0}

    def _number(self, value: Any) -> int:
        number = self.distinct.get(value)
        if number is None:
            number = self.distinct[value] = len(self.values)
            self.values.append(value)
        return number

    def add(self, value: Any, count: int) -> None:
        """Append `value` as the value of file number `count` (the files before it are in)."""
        if self.numbers is None:
            if value == self.default:
                return
            self.numbers = array("I", bytes(4 * count))
        self.numbers.append(self._number(value))

    def add_defaults(self, count: int) -> None:
        """Append the default as the value of the next `count` files."""
        if self.numbers is not None:
            self.numbers.frombytes(bytes(4 * count))  # number 0: the default

    def get(self, index: int) -> Any:
        return self.default if self.numbers is None else self.values[self.numbers[index]]

    def reordered(self, order: Sequence[int]) -> None:
        if self.numbers is not None:
            numbers = self.numbers
            self.numbers = array("I", (numbers[index] for index in order))


class _Spilled:
    """A column of names, versions or descriptions by row, in compressed blocks in the scratch file
    (`strcolumn.StringColumn`), None kept as a flag: a Debian file's text, ~200 bytes a file as strings,
    costs a byte in memory. A column whose every value is None costs nothing."""

    __slots__ = ("_count", "_none", "_texts")

    def __init__(self) -> None:
        self._count = 0  # values while every one is None
        self._none = bytearray()
        self._texts: StringColumn | None = None

    def append(self, value: str | None) -> None:
        if self._texts is None:
            if value is None:
                self._count += 1
                return
            self._texts, self._none = StringColumn(), bytearray(b"\1") * self._count
            for _ in range(self._count):
                self._texts.append("")
        self._none.append(value is None)
        self._texts.append("" if value is None else value)

    def append_nones(self, count: int) -> None:
        """`append(None)` `count` times."""
        if self._texts is None:
            self._count += count
            return
        for _ in range(count):
            self.append(None)

    def get(self, index: int) -> str | None:
        if self._texts is None or self._none[index]:
            return None
        return self._texts[index]

    def reordered(self, order: Sequence[int]) -> _Spilled:
        """The values in `order` (by row): a new column, each value read back by row."""
        if self._texts is None:
            return self
        column = _Spilled()
        for index in order:
            column.append(self.get(index))
        return column


class FileTableBuilder:
    """Collects FileEntry values in any order (`add`); `build` sorts them by path into a FileTable."""

    def __init__(self) -> None:
        # The paths compressed as they come while they come in order (the flat walk's), else a list sorted by build
        self._column: SortedColumn | None = SortedColumn()
        self._paths: list[str] = []
        self._prefix_ids = array("i")  # index into _prefixes, or -1: the whole source is in _sources
        self._prefixes: dict[str, int] = {}
        self._sources: dict[int, str] = {}
        self._signed = array("q")  # size, mtime_ns
        self._unsigned = array("Q")  # dev, inode
        self._has_digests = False
        self._digests = FixedColumn(32)  # 32 bytes a file once any file has a lowercase-hex SHA-256
        self._odd_digests: dict[int, str | None] = {}  # a digest that is not lowercase hex; None after some
        self._shared = {field: _Shared(() if field == "shards" else None) for field in _SHARED}
        self._texts = {field: _Spilled() for field in _TEXTS}  # by row as they come (a million differ)
        self._signatures: dict[int, SignatureRef] = {}

    def __len__(self) -> int:
        return len(self._paths) if self._column is None else len(self._column)

    def add(self, entry: FileEntry) -> None:
        count = len(self)
        path, source = entry.path, entry.source
        if self._column is None:
            self._paths.append(path)
        else:
            try:
                self._column.append(path)
            except ValueError:  # out of order: kept as they come from now on, and sorted by build
                self._paths = [*self._column, path]
                self._column = None
        self._add_source(path, source, count)
        self._signed.append(entry.size)
        self._signed.append(entry.mtime_ns)
        self._unsigned.append(entry.dev)
        self._unsigned.append(entry.inode)
        self._add_digest(entry.expected_sha256, count)
        for field, column in self._shared.items():
            column.add(getattr(entry, field), count)
        for field, texts in self._texts.items():
            texts.append(getattr(entry, field))
        if entry.signature is not None:
            self._signatures[count] = entry.signature

    def add_stat_rows(self, rows: Sequence[StatRow]) -> None:
        """Append files that carry nothing but their stat (every later FileEntry field at its default), in
        order: what `add` does for each, with no FileEntry made and the other columns filled in bulk (the
        flat walk's files, a million of them)."""
        count = len(self)
        paths = [row[0] for row in rows]
        if self._column is None:
            self._paths += paths
        else:
            try:
                self._column.extend(paths)
            except ValueError:  # out of order: kept as they come from now on, and sorted by build
                self._paths = [*self._column, *paths]
                self._column = None
        prefixes, append_prefix_id = self._prefixes, self._prefix_ids.append
        append_signed, append_unsigned = self._signed.append, self._unsigned.append
        for number, (path, source, size, mtime_ns, dev, inode) in enumerate(rows, count):
            if source.endswith(path) and len(source) > len(path):  # `_add_source`, inlined: the hot loop
                append_prefix_id(prefixes.setdefault(source[: len(source) - len(path)], len(prefixes)))
            else:
                append_prefix_id(-1)
                self._sources[number] = source
            append_signed(size)
            append_signed(mtime_ns)
            append_unsigned(dev)
            append_unsigned(inode)
        if self._has_digests:
            for number in range(count, count + len(rows)):
                self._add_digest(None, number)
        for shared in self._shared.values():
            shared.add_defaults(len(rows))
        for texts in self._texts.values():
            texts.append_nones(len(rows))

    def _add_source(self, path: str, source: str, number: int) -> None:
        if source.endswith(path) and len(source) > len(path):
            prefix = source[: len(source) - len(path)]
            self._prefix_ids.append(self._prefixes.setdefault(prefix, len(self._prefixes)))
        else:
            self._prefix_ids.append(-1)
            self._sources[number] = source

    def _add_digest(self, digest: str | None, count: int) -> None:
        canonical = digest is not None and len(digest) == 64 and _HEX.issuperset(digest)
        if canonical and not self._has_digests:
            # the first lowercase-hex digest: the files before it had none or an odd one
            self._has_digests = True
            for _ in range(count):
                self._digests.append(bytes(32))
            self._odd_digests.update({index: None for index in range(count) if index not in self._odd_digests})
        if canonical:
            assert digest is not None
            self._digests.append(bytes.fromhex(digest))
        elif self._has_digests:
            self._digests.append(bytes(32))
            self._odd_digests[count] = digest
        elif digest is not None:
            self._odd_digests[count] = digest

    def build(self) -> FileTable:
        """The table, sorted by path (stable: of equal paths, the first added comes first)."""
        paths = self._paths
        if self._column is not None or all(earlier <= later for earlier, later in itertools.pairwise(paths)):
            order = None
        else:
            order = sorted(range(len(paths)), key=paths.__getitem__)
        return FileTable(self, order)


class _Entries(Sequence[FileEntry]):
    """Files of a table by row (`_rows`: every row, or some), each made into a FileEntry when asked."""

    __slots__ = ()
    _rows: Sequence[int]

    def _entry(self, row: int) -> FileEntry:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> FileEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[FileEntry]: ...
    def __getitem__(self, index: int | slice) -> FileEntry | list[FileEntry]:
        if isinstance(index, slice):
            return [self._entry(row) for row in self._rows[index]]
        return self._entry(self._rows[index])

    def __iter__(self) -> Iterator[FileEntry]:
        entry = self._entry
        for row in self._rows:
            yield entry(row)


class FileTable(ItemEquality, _Entries):
    """The files of a scan, sorted by path (`pipeline.filetable`)."""

    __slots__ = (
        "_digests", "_has_digests", "_odd_digests", "_paths", "_prefix_ids", "_prefixes", "_rows", "_shared",
        "_signatures", "_signed", "_sources", "_unsigned",
    )  # fmt: skip

    def __init__(self, built: FileTableBuilder, order: Sequence[int] | None) -> None:
        paths = built._paths if built._column is None else built._column
        prefix_ids, signed, unsigned, digests = built._prefix_ids, built._signed, built._unsigned, built._digests
        sources, odd, signatures = built._sources, built._odd_digests, built._signatures
        if order is not None:
            column = SortedColumn(paths[index] for index in order)
            prefix_ids = array("i", (prefix_ids[index] for index in order))
            signed = array("q", (value for index in order for value in signed[2 * index : 2 * index + 2]))
            unsigned = array("Q", (value for index in order for value in unsigned[2 * index : 2 * index + 2]))
            if built._has_digests:
                digests = FixedColumn(32)
                for index in order:
                    digests.append(built._digests[index])
            if sources or odd or signatures:  # few: by a row's old number, its new one (8 bytes a file)
                position = array("l", bytes(array("l").itemsize * len(order)))
                for new, index in enumerate(order):
                    position[index] = new
                sources = {position[old]: value for old, value in sources.items()}
                odd = {position[old]: value for old, value in odd.items()}
                signatures = {position[old]: value for old, value in signatures.items()}
            for shared in built._shared.values():
                shared.reordered(order)
        else:
            column = paths if isinstance(paths, SortedColumn) else SortedColumn(paths)
        for shared in built._shared.values():
            shared.distinct = {}  # no more values come
        self._paths = column
        self._rows = range(len(column))
        self._prefix_ids = prefix_ids
        self._prefixes = list(built._prefixes)
        self._sources = sources
        self._signed = signed
        self._unsigned = unsigned
        self._digests = digests
        self._has_digests = built._has_digests
        self._odd_digests = odd
        texts = (
            built._texts
            if order is None
            else {field: column.reordered(order) for field, column in built._texts.items()}
        )
        self._shared: tuple[Any, ...] = tuple(  # each with get(row): a _Shared or a _Spilled
            texts[field] if field in _TEXTS else built._shared[field] for field in _OPTIONAL
        )
        self._signatures = signatures

    @classmethod
    def of(cls, entries: Iterable[FileEntry]) -> FileTable:
        """The table of `entries` (any order)."""
        builder = FileTableBuilder()
        for entry in entries:
            builder.add(entry)
        return builder.build()

    @property
    def paths(self) -> SortedColumn:
        """Every path, sorted: no FileEntry is made."""
        return self._paths

    def __repr__(self) -> str:
        return f"FileTable({len(self._paths)} files)"

    def size_at(self, row: int) -> int:
        """The size of the file at `row` (no FileEntry is made)."""
        return self._signed[2 * row]

    def sizes(self) -> array[int]:
        """Every file's size, by row (no FileEntry is made)."""
        return self._signed[0::2]

    def total_size(self) -> int:
        """The sum of every file's size."""
        return sum(self.sizes())

    def stat_at(self, row: int) -> tuple[int, int, int, int]:
        """(dev, inode, size, mtime_ns) of the file at `row`: its stat key (no FileEntry is made)."""
        return self._unsigned[2 * row], self._unsigned[2 * row + 1], self._signed[2 * row], self._signed[2 * row + 1]

    def expected_sha256_at(self, row: int) -> str | None:
        """The SHA-256 the repository metadata lists for the file at `row` (no FileEntry is made)."""
        return _digest_at(row, self._odd_digests, self._digests if self._has_digests else None)

    def shown_at(self, row: int) -> Shown:
        """(path, size, name, version, arch, description, signature) of the file at `row`: what its record shows
        of it, without the FileEntry's other fields (read ~3 times a file in a build: its record for the index and
        for its page, and the publication's inputs digest)."""
        name, version, arch, description, _ = self._shared
        return (
            self._paths[row],
            self._signed[2 * row],
            name.get(row),
            version.get(row),
            arch.get(row),
            description.get(row),
            self._signatures.get(row),
        )

    def shards_at(self, row: int) -> tuple[str, ...]:
        """The shards the scan found listing the file at `row` (no FileEntry is made)."""
        shards: tuple[str, ...] = self._shared[_SHARDS].get(row)
        return shards

    def row_of(self, path: str) -> int | None:
        """The row of `path`, None when the table has no such file."""
        row = self._paths.bisect_left(path)
        return row if row < len(self._paths) and self._paths[row] == path else None

    def holds_directory(self, directory: str) -> bool:
        """Whether `directory` ("" the root, always) holds a file, directly or below."""
        if not directory:
            return True
        prefix = directory + "/"
        row = self._paths.bisect_left(prefix)
        return row < len(self._paths) and self._paths[row].startswith(prefix)

    def take(self, indices: Iterable[int]) -> Sequence[FileEntry]:
        """The files at `indices` (ascending), as a sequence that makes each entry when asked."""
        return _Taken(self, array("l", indices))

    def _entry(self, index: int) -> FileEntry:
        path = self._paths[index]
        prefix_id = self._prefix_ids[index]
        source = self._sources[index] if prefix_id < 0 else self._prefixes[prefix_id] + path
        signed, unsigned = self._signed, self._unsigned
        digest = _digest_at(index, self._odd_digests, self._digests if self._has_digests else None)
        name, version, arch, description, shards = self._shared  # made a million times: no loop here
        return FileEntry(
            path,
            source,
            signed[2 * index],
            signed[2 * index + 1],
            unsigned[2 * index],
            unsigned[2 * index + 1],
            digest,
            name.get(index),
            version.get(index),
            arch.get(index),
            description.get(index),
            self._signatures.get(index),
            shards.get(index),
        )


class _Taken(_Entries):
    """Some files of a FileTable, by row (the misses a run hashes)."""

    __slots__ = ("_rows", "_table")

    def __init__(self, table: FileTable, rows: array[int]) -> None:
        self._table = table
        self._rows = rows

    def _entry(self, row: int) -> FileEntry:
        return self._table._entry(row)


_FACTS = struct.Struct("<32s20sq")  # a KnownDigests record


class KnownDigests:
    """What is known of the content of each file of a FileTable, by row: its SHA-256, piece size and
    infohash (a `CachedFile`). A byte a file in memory; the facts as one 60-byte record a file in the
    scratch file (`pipeline.scratch.RecordArray`; a dict of CachedFile by path costs ~400 bytes a file)."""

    __slots__ = ("_facts", "_odd", "_state")

    _UNKNOWN, _KNOWN, _NO_INFOHASH = 0, 1, 2

    def __init__(self, count: int) -> None:
        self._state = bytearray(count)
        self._facts = RecordArray(count, _FACTS.size)  # SHA-256, infohash (zeros: none), piece size
        self._odd: dict[int, CachedFile] = {}  # facts whose digests are not lowercase hex (kept as given)

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int) and self._state[row] != self._UNKNOWN

    def __setitem__(self, row: int, facts: CachedFile) -> None:
        sha256, piece_size, infohash = facts
        self._odd.pop(row, None)
        if not (_is_hex(sha256, 64) and (infohash is None or _is_hex(infohash, 40))):
            self._odd[row] = facts
            self._state[row] = self._KNOWN
            return
        raw_infohash = bytes(20) if infohash is None else bytes.fromhex(infohash)
        self._facts[row] = _FACTS.pack(bytes.fromhex(sha256), raw_infohash, piece_size)
        self._state[row] = self._NO_INFOHASH if infohash is None else self._KNOWN

    def __delitem__(self, row: int) -> None:
        self._odd.pop(row, None)
        self._state[row] = self._UNKNOWN

    def __getitem__(self, row: int) -> CachedFile:
        state = self._state[row]
        if state == self._UNKNOWN:
            raise KeyError(row)
        odd = self._odd.get(row)
        if odd is not None:
            return odd
        sha256, infohash, piece_size = _FACTS.unpack(self._facts[row])
        return CachedFile(sha256.hex(), piece_size, None if state == self._NO_INFOHASH else infohash.hex())

    def unknown(self) -> Iterator[int]:
        """The rows nothing is known of, ascending."""
        state = self._state
        start = state.find(self._UNKNOWN)
        while start >= 0:
            yield start
            start = state.find(self._UNKNOWN, start + 1)


def _digest_at(index: int, odd: dict[int, str | None], digests: FixedColumn | None) -> str | None:
    """The expected SHA-256 of file number `index`: as given when odd, else from the raw column (None: no
    file has one)."""
    if index in odd:
        return odd[index]
    return None if digests is None else digests[index].hex()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)
