"""Every file's record made once, in the build, and what the later steps read of it.

A record costs ~20 µs to make (its magnet URI quotes every webseed URL), and a Debian file is listed in
~2 shards: made for the fingerprints, again for each shard and again for its page, records took ~17 s of
a 90 s 1%-changed run at 200,000 Debian files. The build makes each once and keeps, in the scratch file
(`pipeline.scratch`):
- its fingerprint (`pipeline.shards.fingerprint`: what two publications are compared by, and what the state
  cache remembers of the publication made from them: `pipeline.remembered`);
- its JSON as the index lists it (`pipeline.index.package_json`), in the column of each shard listing it,
  so a shard is read back in order, its blocks decompressed once;
- a digest of what its browse page shows of it (the JSON and the description), so a page is told
  unchanged without its records.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from pipeline.filetable import FileTable
from pipeline.forked import made_in_order
from pipeline.index import package_json
from pipeline.model import PackageRecord
from pipeline.scratch import FixedColumn
from pipeline.shards import Fingerprints, fingerprint, record_hash, shards_by_row, shards_of_row
from pipeline.strcolumn import StringColumn

PAGE_DIGEST_BYTES = 16


def page_digest(record_json: str, description: str | None) -> bytes:
    """What a browse page shows of a record: its JSON and its description (not in the JSON)."""
    digest = hashlib.blake2b(record_json.encode("utf-8", "surrogatepass"), digest_size=PAGE_DIGEST_BYTES)
    if description is not None:
        digest.update(b"\0" + description.encode("utf-8", "surrogatepass"))
    return digest.digest()


@dataclass(frozen=True)
class BuiltRecords:
    """Every record of a FileTable's files, made once (`build_records`)."""

    fingerprints: Fingerprints
    shards: Mapping[str, StringColumn]  # shard name (sorted) -> its records' JSON, in path order
    page_digests: FixedColumn  # by row: `page_digest` of its record


def build_records(records: Iterable[PackageRecord], files: FileTable, snapshot_format: str) -> BuiltRecords:
    """Read `records` (those of `files`' rows, in order) once: their fingerprints, shard JSON and page digests.
    ValueError when they are not as many, or a record is that of another file than its row's."""
    values = array("q")
    shards: dict[str, StringColumn] = {}
    digests = FixedColumn(PAGE_DIGEST_BYTES)
    for text, digest, value, names in _built(records, files, snapshot_format):
        for name in names:
            column = shards.get(name)
            if column is None:
                column = shards[name] = StringColumn()
            column.append(text)
        digests.append(digest)
        values.append(value)
    return BuiltRecords(Fingerprints(files, values), {name: shards[name] for name in sorted(shards)}, digests)


_Built = tuple[str, bytes, int, tuple[str, ...]]  # a record's JSON, page digest, fingerprint and shards


def _built(records: Iterable[PackageRecord], files: FileTable, snapshot_format: str) -> Iterator[_Built]:
    """What `build_records` keeps of each record, in order. Records read by row (a Sequence as long as
    `files`) are made every other one by a forked child (`pipeline.forked`): each costs ~20-40 µs."""
    paths = files.paths

    def built(row: int, record: PackageRecord, names: tuple[str, ...]) -> _Built:
        if record.path != paths[row]:
            raise ValueError(f"{record.path}: the record of another file than {paths[row]}")
        text = package_json(record)
        return text, page_digest(text, record.description), fingerprint(record_hash(text), names), names

    if isinstance(records, Sequence) and len(records) == len(files):
        by_row = records
        yield from made_in_order(
            lambda row: built(row, by_row[row], shards_of_row(files, row, snapshot_format)),
            len(files),
            _encoded,
            _decoded,
        )
        return
    pairs = zip(records, shards_by_row(files, snapshot_format), strict=True)
    for row, (record, names) in enumerate(pairs):
        yield built(row, record, names)


_BUILT_HEAD = struct.Struct("<qIIH")  # fingerprint, the JSON's length, the shard names' length and count


def _encoded(item: _Built) -> bytes:
    text, digest, value, names = item
    data = text.encode("utf-8", "surrogatepass")
    joined = "\0".join(names).encode("utf-8", "surrogatepass")
    return b"".join((_BUILT_HEAD.pack(value, len(data), len(joined), len(names)), digest, data, joined))


def _decoded(data: bytes) -> _Built:
    value, length, joined, count = _BUILT_HEAD.unpack_from(data)
    start = _BUILT_HEAD.size + PAGE_DIGEST_BYTES
    digest = data[_BUILT_HEAD.size : start]
    text = data[start : start + length].decode("utf-8", "surrogatepass")
    names = data[start + length : start + length + joined].decode("utf-8", "surrogatepass")
    return text, digest, value, tuple(names.split("\0")) if count else ()
