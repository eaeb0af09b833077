"""Which index shards list a file (docs/sharded-index.md): users fetch the shards they follow, not all.

debian: `<suite>/<component>/<arch>`, and `<suite>/<component>/all` for `Architecture: all` packages
(the scan records them, `FileEntry.shards`); arch: `<repo>/<arch>` from `<repo>/os/<arch>/…`; flat: the
top-level directory, or `.` for a file at the top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def group(
    records: Sequence[PackageRecord], files: Sequence[FileEntry], snapshot_format: str
) -> dict[str, list[PackageRecord]]:
    """Shard name -> its records (sorted by path, as `records` are), names sorted. `files` are the entries
    the records were built from, in the same order."""
    if len(records) != len(files):
        raise ValueError(f"{len(records)} records for {len(files)} files")
    shards: dict[str, list[PackageRecord]] = {}
    for record, entry in zip(records, files, strict=True):
        if record.path != entry.path:
            raise ValueError(f"{record.path}: the record of another file than {entry.path}")
        for name in shards_of(entry, snapshot_format):
            shards.setdefault(name, []).append(record)
    return {name: shards[name] for name in sorted(shards)}


def record_fingerprints(
    records: Sequence[PackageRecord], files: Sequence[FileEntry], snapshot_format: str
) -> dict[str, int]:
    """path -> hash of (record, the shards listing it): what two publications are compared by."""
    return {
        record.path: fingerprint(hash(record), shards_of(entry, snapshot_format))
        for record, entry in zip(records, files, strict=True)
    }


def fingerprint(record_hash: int, shards: Iterable[str]) -> int:
    """The fingerprint of a record (by its `hash()`: equal records, description aside, hash equal) listed
    in `shards`; the same whether built or read back from published shards."""
    return hash((record_hash, tuple(sorted(shards))))
