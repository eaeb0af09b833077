"""pipeline.decision: every action, from values alone (no gpg, disk or network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.decision import Decision, Facts, decide, resign_due, same_content
from pipeline.errors import PipelineError
from pipeline.index import MAX_SEQUENCE, package_json, rfc3339
from pipeline.model import FileEntry, PackageRecord, Pointer, ShardRef
from pipeline.objects import shard_key, shard_torrent_key
from pipeline.shards import fingerprint, record_hash, shards_of

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CURRENT = Facts(current_sequence=7, highest_sequence=7, unchanged=True)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (Facts(current_sequence=None), Decision("publish", 1)),
        (Facts(current_sequence=None, highest_sequence=4), Decision("publish", 5)),  # destination reset
        (CURRENT, Decision("noop", 7)),
        (replace(CURRENT, unchanged=None), None),  # the records must be compared first
        (replace(CURRENT, unchanged=False), Decision("publish", 8)),
        (replace(CURRENT, highest_sequence=0), Decision("noop", 7)),  # a state that never committed
        (replace(CURRENT, current_sequence=9), Decision("noop", 9)),  # another publisher went ahead
        (replace(CURRENT, highest_sequence=9), Decision("publish", 10)),  # rolled back to 7 after 9
        (replace(CURRENT, highest_sequence=9, unchanged=None), Decision("publish", 10)),
        (replace(CURRENT, lost_index=True), Decision("publish", 8)),
        (replace(CURRENT, lost_index=True, unchanged=None), Decision("publish", 8)),
        (replace(CURRENT, resign_due=True), Decision("resign", 7)),
        (replace(CURRENT, complete=False), Decision("finish", 7)),
        (replace(CURRENT, lost_objects=True), Decision("finish", 7)),
        (replace(CURRENT, mirrors_changed=True), Decision("refresh", 7)),
        # what wins when several hold: a new index, then the pointer's expiry, then completeness, then mirrors
        (replace(CURRENT, unchanged=False, resign_due=True, complete=False), Decision("publish", 8)),
        (replace(CURRENT, resign_due=True, complete=False, mirrors_changed=True), Decision("resign", 7)),
        (replace(CURRENT, lost_objects=True, mirrors_changed=True), Decision("finish", 7)),
    ],
    ids=[
        "first", "reset-destination", "noop", "compare-first", "changed", "no-state", "ahead", "rolled-back",
        "rolled-back-unknown", "lost-index", "lost-index-unknown", "resign", "incomplete", "lost-objects",
        "mirrors", "publish-wins", "resign-wins", "finish-over-refresh",
    ],
)  # fmt: skip
def test_decide(facts: Facts, expected: Decision | None) -> None:
    assert decide(facts) == expected


def test_decide_refuses_sequences_clients_reject() -> None:
    with pytest.raises(PipelineError, match="2\\^53"):
        decide(replace(CURRENT, current_sequence=2**53))
    with pytest.raises(PipelineError, match="outside"):
        decide(replace(CURRENT, current_sequence=0))
    at_max = replace(CURRENT, current_sequence=MAX_SEQUENCE)
    assert decide(at_max) == Decision("noop", MAX_SEQUENCE)
    with pytest.raises(PipelineError, match="2\\^53"):
        decide(replace(at_max, unchanged=False))


def record(path: str, sha256: str = "a" * 64, **extra: Any) -> PackageRecord:
    return PackageRecord(
        path=path, size=1000, sha256=sha256, infohash="1" * 40, piece_size=16384, torrent=f"torrents/{path}.torrent",
        metalink=f"metalinks/{path}.meta4", magnet="magnet:?xt=urn:btih:" + "1" * 40, **extra,
    )  # fmt: skip


RECORDS = (record("pool/a.deb"), record("pool/b.deb", name="b", version="1.0"))
SHARDS = {"pool/a.deb": ("bookworm/main/amd64",), "pool/b.deb": ("bookworm/main/all", "trixie/main/all")}


def files(records: tuple[PackageRecord, ...], shards: dict[str, tuple[str, ...]] = SHARDS) -> tuple[FileEntry, ...]:
    """The scanned entries the records were built from (Debian: each names the shards listing it)."""
    return tuple(
        FileEntry(path=r.path, source=Path("/srv") / r.path, size=r.size, mtime_ns=0, shards=shards.get(r.path, ()))
        for r in records
    )


def fingerprints(records: Sequence[PackageRecord], entries: Sequence[FileEntry]) -> dict[str, int]:
    """path -> fingerprint, as the build makes them (pipeline.records.build_records)."""
    pairs = zip(records, entries, strict=True)
    return {r.path: fingerprint(record_hash(package_json(r)), shards_of(entry, "debian")) for r, entry in pairs}


def compare(**changes: Any) -> bool:
    args: dict[str, Any] = {
        "current_records": RECORDS,
        "current_shards": SHARDS,
        "shards": SHARDS,
        "current_webseeds": ("https://a.example/", "https://b.example/"),
        "current_trackers": ("udp://t.example:6969/announce",),
        "records": tuple(reversed(RECORDS)),  # order does not matter
        "webseeds": ("https://b.example/", "https://a.example/"),  # a set: order does not matter
        "trackers": ("udp://t.example:6969/announce",),
    }
    args.update(changes)
    current, current_shards = args.pop("current_records"), args.pop("current_shards")
    records, shards = args.pop("records"), args.pop("shards")
    args["current_fingerprints"] = fingerprints(current, files(current, current_shards))
    args["fingerprints"] = fingerprints(records, files(records, shards))
    return same_content(**args)


def test_same_content_ignores_order_and_descriptions() -> None:
    assert compare()
    assert compare(records=tuple(replace(r, description="rewritten <b>upstream</b> text") for r in RECORDS))


@pytest.mark.parametrize(
    "changes",
    [
        {"records": (RECORDS[0], replace(RECORDS[1], sha256="b" * 64))},
        {"records": RECORDS[:-1]},
        {"records": (*RECORDS, record("pool/new.deb"))},
        {"records": (RECORDS[0], replace(RECORDS[1], version="1.1"))},
        {"webseeds": ("https://a.example/",)},
        {"webseeds": ("https://a.example/", "https://b.example/", "https://c.example/")},
        {"trackers": ()},
        {"shards": {**SHARDS, "pool/b.deb": ("bookworm/main/all",)}},  # no longer in trixie
        {"shards": {**SHARDS, "pool/a.deb": ("bookworm/main/amd64", "trixie/main/amd64")}},  # now also in trixie
        {"shards": {**SHARDS, "pool/a.deb": ("bookworm/main/arm64",)}},
    ],
    ids=[
        "sha256",
        "removed",
        "added",
        "version",
        "webseed-gone",
        "webseed-added",
        "trackers",
        "left-a-shard",
        "joined-a-shard",
        "moved-shard",
    ],  # fmt: skip
)
def test_same_content_sees_every_change(changes: dict[str, Any]) -> None:
    assert not compare(**changes)


SHARD = ShardRef(
    name="bookworm/main/amd64", path=shard_key("a" * 64), size=1, sha256="a" * 64, uncompressed_size=2,
    uncompressed_sha256="b" * 64, packages=1, torrent=shard_torrent_key("c" * 64), infohash="1" * 40,
)  # fmt: skip


def pointer(expires: datetime) -> Pointer:
    return Pointer(
        repo="r", sequence=7, generated=rfc3339(NOW - timedelta(days=1)), expires=rfc3339(expires), shards=(SHARD,),
    )  # fmt: skip


def test_resign_due_when_expiry_near_or_passed() -> None:
    window = timedelta(days=3)
    assert not resign_due(pointer(NOW + timedelta(days=5)), NOW, window)
    assert resign_due(pointer(NOW + timedelta(days=3)), NOW, window)
    assert resign_due(pointer(NOW - timedelta(days=1)), NOW, window)
    with pytest.raises(ValueError):
        resign_due(pointer(NOW), NOW.replace(tzinfo=None), window)
    with pytest.raises(PipelineError, match="expires"):
        resign_due(replace(pointer(NOW), expires="next tuesday"), NOW, window)
    # a pointer of format 1, read back to be replaced, expires like any other
    legacy = Pointer("r", 7, rfc3339(NOW), rfc3339(NOW + timedelta(days=1)), (), legacy_keys=("index/7-a.torrent",))
    assert resign_due(legacy, NOW, window) and not resign_due(legacy, NOW, timedelta(hours=1))
