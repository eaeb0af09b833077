"""Which index shards list a file (docs/sharded-index.md): users fetch the shards they follow, not all.

debian: `<suite>/<component>/<arch>`, and `<suite>/<component>/all` for `Architecture: all` packages
(the scan records them, `FileEntry.shards`); arch: `<repo>/<arch>` from `<repo>/os/<arch>/…`; flat: the
top-level directory, or `.` for a file at the top.
"""

from __future__ import annotations

from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence

from pipeline.filetable import FileTable
from pipeline.model import FileEntry, PackageRecord

TOP = "."  # the flat shard of the files at the top of the tree (no directory is named ".")


def shards_of(entry: FileEntry, snapshot_format: str) -> tuple[str, ...]:
    """The names of the shards that list `entry` (at least one)."""
    if entry.shards:
        return entry.shards
    head, slash, rest = entry.path.partition("/")
    if snapshot_format == "arch":
        parts = entry.path.split("/")
        if len(parts) >= 4 and parts[1] == "os":
            return (f"{parts[0]}/{parts[2]}",)
    return (head,) if slash and rest else (TOP,)


def debian_shard(suite: str, component: str, index_arch: str, package_arch: str | None) -> str:
    """The Debian shard of a package listed in `dists/<suite>/<component>/binary-<index_arch>/Packages`."""
    arch = "all" if package_arch == "all" else index_arch
    return f"{suite}/{component}/{arch}"


def shard_rows(files: Sequence[FileEntry], snapshot_format: str) -> dict[str, array[int]]:
    """Shard name -> the rows of `files` it lists (ascending: in path order when `files` is sorted), names
    sorted. Rows, not records: the caller makes a shard's records as it writes the shard."""
    shards: dict[str, array[int]] = {}
    for row, entry in enumerate(files):
        for name in shards_of(entry, snapshot_format):
            rows = shards.get(name)
            if rows is None:
                rows = shards[name] = array("l")
            rows.append(row)
    return {name: shards[name] for name in sorted(shards)}


def members(records: Sequence[PackageRecord], paths: Sequence[str], rows: Iterable[int]) -> Iterator[PackageRecord]:
    """The records at `rows`, each checked to be that of the file of the same row (`paths`)."""
    if len(records) != len(paths):
        raise ValueError(f"{len(records)} records for {len(paths)} files")
    for row in rows:
        record = records[row]
        if record.path != paths[row]:
            raise ValueError(f"{record.path}: the record of another file than {paths[row]}")
        yield record


def record_fingerprints(
    records: Sequence[PackageRecord], files: Sequence[FileEntry], snapshot_format: str
) -> Mapping[str, int]:
    """path -> hash of (record, the shards listing it): what two publications are compared by. By row of
    `files` when it is a FileTable (a dict costs ~100 bytes a file)."""
    pairs = zip(records, files, strict=True)
    if isinstance(files, FileTable):
        values = array("q", (fingerprint(hash(record), shards_of(entry, snapshot_format)) for record, entry in pairs))
        return Fingerprints(files, values)
    return {record.path: fingerprint(hash(record), shards_of(entry, snapshot_format)) for record, entry in pairs}


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

    def items(self) -> ItemsView[str, int]:
        return _Items(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        missing = object()
        return len(self) == len(other) and all(other.get(path, missing) == value for path, value in self.items())

    __hash__ = None  # type: ignore[assignment]


class _Items(ItemsView[str, int]):
    """A Fingerprints' (path, fingerprint) pairs in path order, without a lookup each."""

    _mapping: Fingerprints

    def __iter__(self) -> Iterator[tuple[str, int]]:
        mapping = self._mapping
        return zip(mapping._files.paths, mapping._values, strict=True)


def fingerprint(record_hash: int, shards: Iterable[str]) -> int:
    """The fingerprint of a record (by its `hash()`: equal records, description aside, hash equal) listed
    in `shards`; the same whether built or read back from published shards."""
    return hash((record_hash, tuple(sorted(shards))))
