"""pipeline.records: each record made once, and what the shards and pages read of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.index import package_json, shard_json
from pipeline.records import PAGE_DIGEST_BYTES, build_records, page_digest
from tests.unit.test_shards import FILES, RECORDS, entry, file_table, record


def test_each_shard_column_is_the_json_its_shard_lists_and_each_row_has_its_page_digest() -> None:
    built = build_records(RECORDS, file_table(FILES), "debian")
    for name, column in built.shards.items():
        listed = [r for r, f in zip(RECORDS, FILES, strict=True) if name in f.shards]
        assert list(column) == [package_json(r) for r in listed]
        # what the index publishes of the shard, made from the column, is that of the records themselves
        header = {"repo": "r", "shard": name, "webseeds": (), "trackers": ()}
        joined = b",".join(text.encode() for text in column)
        assert shard_json(**header, records=listed).count(joined) == 1
    assert [built.page_digests[row] for row in range(len(FILES))] == [
        page_digest(package_json(r), r.description) for r in RECORDS
    ]
    assert len(built.fingerprints) == len(FILES)


def test_records_and_files_must_pair_up() -> None:
    with pytest.raises(ValueError):
        build_records(RECORDS[:-1], file_table(FILES), "debian")
    with pytest.raises(ValueError, match="the record of another file"):
        build_records((RECORDS[1], RECORDS[0], *RECORDS[2:]), file_table(FILES), "debian")


@pytest.mark.parametrize(
    "other",
    [
        (package_json(replace(record("pool/a.deb"), sha256="b" * 64)), None),  # the record
        (package_json(record("pool/a.deb")), ""),  # a description, even empty
        (package_json(record("pool/a.deb")), "a text"),
    ],
)
def test_a_page_digest_sees_the_record_and_its_description(other: tuple[str, str | None]) -> None:
    """The description is not in the index's JSON, but a browse page shows it: a page whose package got
    a new description only is rendered again."""
    base = page_digest(package_json(record("pool/a.deb")), None)
    assert len(base) == PAGE_DIGEST_BYTES
    assert page_digest(package_json(record("pool/a.deb")), None) == base
    assert page_digest(*other) != base


def test_a_flat_tree_has_a_column_per_top_directory() -> None:
    files = (entry("README"), entry("iso/a.iso"), entry("iso/b.iso"))
    built = build_records(tuple(record(f.path) for f in files), file_table(files), "flat")
    assert {name: len(list(column)) for name, column in built.shards.items()} == {".": 1, "iso": 2}
