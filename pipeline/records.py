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
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.filetable import FileTable
from pipeline.index import package_json
from pipeline.model import PackageRecord
from pipeline.scratch import FixedColumn
from pipeline.shards import Fingerprints, fingerprint, record_hash, shards_by_row
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
    paths = files.paths
    pairs = zip(records, shards_by_row(files, snapshot_format), strict=True)
    for row, (record, names) in enumerate(pairs):
        if record.path != paths[row]:
            raise ValueError(f"{record.path}: the record of another file than {paths[row]}")
        text = package_json(record)
        for name in names:
            column = shards.get(name)
            if column is None:
                column = shards[name] = StringColumn()
            column.append(text)
        digests.append(page_digest(text, record.description))
        values.append(fingerprint(record_hash(text), names))
    return BuiltRecords(Fingerprints(files, values), {name: shards[name] for name in sorted(shards)}, digests)
