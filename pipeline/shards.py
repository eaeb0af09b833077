"""Which index shards list a file (docs/sharded-index.md): users fetch the shards they follow, not all.

debian: `<suite>/<component>/<arch>`, and `<suite>/<component>/all` for `Architecture: all` packages
(the scan records them, `FileEntry.shards`); arch: `<repo>/<arch>` from `<repo>/os/<arch>/…`; flat: the
top-level directory, or `.` for a file at the top.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence

from pipeline.filetable import FileTable
from pipeline.model import FileEntry

TOP = "."  # the flat shard of the files at the top of the tree (no directory is named ".")


def shards_of(entry: FileEntry, snapshot_format: str) -> tuple[str, ...]:
    """The names of the shards that list `entry` (at least one)."""
    return _shards(entry.path, entry.shards, snapshot_format)


def _shards(path: str, found: tuple[str, ...], snapshot_format: str) -> tuple[str, ...]:
    """`shards_of` a file at `path` the scan found listed in the shards `found`."""
    if found:
        return found
    head, slash, rest = path.partition("/")
    if snapshot_format == "arch":
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "os":
            return (f"{parts[0]}/{parts[2]}",)
    return (head,) if slash and rest else (TOP,)


def shards_by_row(files: Sequence[FileEntry], snapshot_format: str) -> Iterator[tuple[str, ...]]:
    """`shards_of` every file, in order; of a FileTable, without making its entries."""
    if isinstance(files, FileTable):
        return (shards_of_row(files, row, snapshot_format) for row in range(len(files)))
    return (shards_of(entry, snapshot_format) for entry in files)


def shards_of_row(files: FileTable, row: int, snapshot_format: str) -> tuple[str, ...]:
    """`shards_of` the file at `row`, without making its entry."""
    return _shards(files.paths[row], files.shards_at(row), snapshot_format)


def debian_shard(suite: str, component: str, index_arch: str, package_arch: str | None) -> str:
    """The Debian shard of a package listed in `dists/<suite>/<component>/binary-<index_arch>/Packages`."""
    arch = "all" if package_arch == "all" else index_arch
    return f"{suite}/{component}/{arch}"


class Fingerprints(Mapping[str, int]):
    """path -> fingerprint of every file of a FileTable, in a column by row."""

    __slots__ = ("_files", "_values")

    def __init__(self, files: FileTable, values: array[int]) -> None:
        if len(values) != len(files):
            raise ValueError(f"{len(values)} fingerprints for {len(files)} files")
        self._files = files
        self._values = values

    def __getitem__(self, path: str) -> int:
        row = self._files.row_of(path)
        if row is None:
            raise KeyError(path)
        return self._values[row]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files.paths)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def paths(self) -> Sequence[str]:
        """Every path, sorted (the table's column: no string is made)."""
        return self._files.paths

    def items(self) -> ItemsView[str, int]:
        return _Items(self)

    def __eq__(self, other: object) -> bool:
        return _same_items(self, other) if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _same_items(mapping: Mapping[str, int], other: Mapping[object, object]) -> bool:
    """Mapping equality without a dict of either side."""
    missing = object()
    return len(mapping) == len(other) and all(other.get(path, missing) == value for path, value in mapping.items())


class _Items(ItemsView[str, int]):
    """A Fingerprints' (path, fingerprint) pairs in path order, without a lookup each."""

    _mapping: Fingerprints

    def __iter__(self) -> Iterator[tuple[str, int]]:
        mapping = self._mapping
        return zip(mapping._files.paths, mapping._values, strict=True)


def record_hash(record_json: str) -> int:
    """A record's hash by its JSON as the shards list it (`pipeline.index.package_json`: equal records, description
    aside, hash equal): the same in every process, so that a publication's fingerprints can be remembered by the
    state cache (`pipeline.remembered`) and compared with those of a later run."""
    digest = hashlib.blake2b(record_json.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def fingerprint(record_hash: int, shards: Iterable[str]) -> int:
    """The fingerprint of a record (by its `record_hash`) listed in `shards`; the same whether built or read
    back from published shards (`PublishedFingerprints`, which folds the names in as it meets them, in name
    order), and in every process."""
    chain = 0
    for name in sorted(shards):
        chain = _fold(chain, name)
    return _combine(record_hash, chain)


def _fold(chain: int, shard: str) -> int:
    """The shard names met so far (`chain`) and one more (a tuple of ints hashes alike in every process)."""
    return hash((chain, _name_hash(shard)))


@functools.lru_cache(maxsize=4096)
def _name_hash(shard: str) -> int:
    """A shard name's hash, the same in every process (a str's `hash()` is not): a handful of names, asked a
    million times."""
    return int.from_bytes(hashlib.blake2b(shard.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _combine(record_hash: int, chain: int) -> int:
    """A fingerprint from its record's hash and its shards' folded names."""
    return hash((record_hash, chain))


class PublishedFingerprints(Mapping[str, int]):
    """path -> fingerprint of every record a publication's shards list, read back a shard at a time (`add`,
    the shards in name order), or as the state cache remembered them (`remembered`). The paths of `files` (the
    run's FileTable) are kept by row, 17 bytes a file where a dict cost ~250; the others (files gone since) in
    a dict."""

    __slots__ = ("_chains", "_files", "_listed", "_others", "_records")

    def __init__(self, files: FileTable | None = None) -> None:
        self._files = files
        count = len(files) if files is not None else 0
        self._records = array("q", bytes(8 * count))  # the record's hash (remembered: the whole fingerprint)
        self._chains: array[int] | None = array("q", bytes(8 * count))  # its shards' names, folded in as met
        self._listed = bytearray(count)
        self._others: dict[str, tuple[int, int]] = {}

    @classmethod
    def remembered(cls, files: FileTable, pairs: Iterable[tuple[str, int]]) -> PublishedFingerprints:
        """The fingerprints (path, fingerprint), in strictly increasing path order, that a state cache kept of
        a publication; merged with the paths of `files` in one pass. ValueError when they are out of order."""
        made = cls(files)
        made._chains = None  # `_records` holds whole fingerprints
        paths, records, listed = files.paths, made._records, made._listed
        count, row, previous = len(paths), 0, ""
        for path, value in pairs:
            if path <= previous:
                raise ValueError(f"{path}: after {previous}")
            previous = path
            while row < count and paths[row] < path:
                row += 1
            if row < count and paths[row] == path:
                records[row], listed[row] = value, 1
                row += 1
            else:
                made._others[path] = (value, 0)
        return made

    def add(self, path: str, record_hash: int, shard: str) -> None:
        """`shard` lists `path` with a record of this hash (a later one replaces an earlier one's hash)."""
        if self._chains is None:
            raise TypeError("remembered fingerprints are read, not added to")
        row = self._files.row_of(path) if self._files is not None else None
        if row is None:
            chain = self._others.get(path, (0, 0))[1]
            self._others[path] = (record_hash, _fold(chain, shard))
            return
        self._records[row] = record_hash
        self._chains[row] = _fold(self._chains[row], shard)
        self._listed[row] = 1

    def _value(self, record: int, chain: int) -> int:
        return record if self._chains is None else _combine(record, chain)

    def __getitem__(self, path: str) -> int:
        row = self._files.row_of(path) if self._files is not None else None
        if row is not None and self._listed[row]:
            return self._value(self._records[row], self._chains[row] if self._chains is not None else 0)
        if row is None and path in self._others:
            return self._value(*self._others[path])
        raise KeyError(path)

    def __iter__(self) -> Iterator[str]:
        if self._files is not None:
            yield from itertools.compress(self._files.paths, self._listed)
        yield from sorted(self._others)

    def __len__(self) -> int:
        return self._listed.count(1) + len(self._others)

    def changed_rows(self, after: Mapping[str, int]) -> array[int] | None:
        """The rows of `after`'s FileTable this publication does not list, or lists with another fingerprint
        (ascending); None unless `after` is a Fingerprints by row of this one's FileTable."""
        if not isinstance(after, Fingerprints) or after._files is not self._files:
            return None
        values, records, chains = after._values, self._records, self._chains
        if chains is None:
            listed = self._listed
            return array("l", (row for row, known in enumerate(listed) if not known or records[row] != values[row]))
        return array(
            "l",
            (
                row
                for row, listed in enumerate(self._listed)
                if not listed or _combine(records[row], chains[row]) != values[row]
            ),
        )

    def changes(self, after: Mapping[str, int]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int] | None:
        """(new, changed, removed paths, number unchanged) going from this publication to `after`; None unless
        `after` is a Fingerprints by row of this one's FileTable."""
        rows = self.changed_rows(after)
        if rows is None or self._files is None:
            return None
        paths, listed = self._files.paths, self._listed
        new = tuple(paths[row] for row in rows if not listed[row])
        changed = tuple(paths[row] for row in rows if listed[row])
        return new, changed, tuple(sorted(self._others)), len(paths) - len(rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fingerprints) and other._files is self._files:
            return not self._others and not self.changed_rows(other)
        return _same_items(self, other) if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]
