from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pipeline.objects import make_artifact as artifact
from pipeline.publish import PlannedKeys
from pipeline.report import RunReport
from pipeline.spool import Spool
from pipeline.strcolumn import SortedColumn

REPORT = RunReport(
    action="publish",
    sequence=3,
    dry_run=False,
    files=2,
    bytes_hashed=10,
    files_hashed=1,
    new=("pool/é.deb",),
    changed=(),
    removed=("gone",),
    unchanged=1,
    objects_put=2,
    objects_skipped=5,
    bytes_put=100,
    planned_keys=("torrents/a.torrent", "latest.asc"),
    deleted_keys=("old",),
    pointer_expires="2026-12-10T00:00:00Z",
    pointer_expires_epoch=1,
    key_fingerprint="F" * 40,
    key_expires_epoch=None,
    stages=(("scan", 0.5),),
    destination="file:///d",
    mirrors=(("http://m/", "up", "ok"),),
)


@pytest.mark.parametrize("keys", [(), ("one",), ("a", "b\u00e9\U0001f600", 'quote " and \\ and \n'), ("x",) * 50])
def test_the_streamed_json_is_json_dumps_byte_for_byte(keys: tuple[str, ...]) -> None:
    for report in (
        replace(REPORT, planned_keys=keys),
        replace(REPORT, new=keys),
        replace(REPORT, new=SortedColumn(sorted(keys)), planned_keys=keys[::-1]),
    ):
        streamed = "".join(report.json_chunks())
        assert streamed == json.dumps(report.to_json(), indent=2, sort_keys=True)
        document = json.loads(streamed)
        assert document["planned_keys"] == list(report.planned_keys)
        assert document["packages"]["new"] == list(report.new)


def test_the_streamed_json_comes_in_pieces_of_about_64_kib_not_a_write_a_key() -> None:
    keys = tuple(f"torrents/pool/main/p/p{i:06}/p{i:06}_1.0_all.deb.torrent" for i in range(20_000))
    report = replace(REPORT, planned_keys=keys, new=SortedColumn(sorted(keys)))
    chunks = list(report.json_chunks())
    assert "".join(chunks) == json.dumps(report.to_json(), indent=2, sort_keys=True)
    assert 20 < len(chunks) < 50 and all(len(chunk) < 2 * 65536 for chunk in chunks)


def test_the_planned_keys_are_read_from_the_spool_in_write_order() -> None:
    with Spool() as spool:
        content = spool.add_all([artifact("torrents/b.torrent", b"1"), artifact("metalinks/b.meta4", b"2")])
        listings = spool.add_all([artifact("index.html", b"3")])
        keys = PlannedKeys(content, "latest.asc", listings)
        expected = ("torrents/b.torrent", "metalinks/b.meta4", "latest.asc", "index.html")
        assert keys == expected and tuple(keys) == expected and len(keys) == 4
        assert [keys[i] for i in range(-4, 4)] == [*expected, *expected] and keys[1:3] == expected[1:3]
        with pytest.raises(IndexError):
            keys[4]
        assert PlannedKeys(content[:0], None, listings[:0]) == () and keys != expected[:3]
        report = replace(REPORT, planned_keys=keys)
        assert json.loads("".join(report.json_chunks()))["planned_keys"] == list(expected)
