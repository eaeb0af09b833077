"""pipeline.records: each record made once, and what the shards and pages read of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline import forked
from pipeline.index import package_json, shard_json
from pipeline.records import PAGE_DIGEST_BYTES, build_records, page_digest
from tests.tools import forks_seen
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


def test_records_built_with_a_forked_child_are_those_built_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records read by row are made every other one by a forked child (`pipeline.forked`): the same columns,
    digests and fingerprints, and the same error for a record of another file."""
    files = tuple(entry(f"pool/{c}/p{i}.deb", f"s/{c}", "s/all") for c in "abc" for i in range(4))
    records = tuple(record(f.path) for f in files)
    alone = build_records(list(records), file_table(files), "debian")
    started = forks_seen(monkeypatch)
    monkeypatch.setattr(forked, "MIN_ITEMS", 1)

    shared = build_records(records, file_table(files), "debian")

    assert started == [True]
    assert {name: list(column) for name, column in shared.shards.items()} == {
        name: list(column) for name, column in alone.shards.items()
    }
    assert [shared.page_digests[row] for row in range(len(files))] == [
        alone.page_digests[row] for row in range(len(files))
    ]
    assert dict(shared.fingerprints) == dict(alone.fingerprints)
    swapped = (*records[:5], records[6], records[5], *records[7:])  # row 5 is the child's
    with pytest.raises(ValueError, match="the record of another file"):
        build_records(swapped, file_table(files), "debian")
    assert started == [True, True]
