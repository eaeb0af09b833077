"""pipeline.index: index document, zstd encode/decode (bombs), keys, pointer payload, decide(), JSON Schemas."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zstandard

from pipeline.errors import PipelineError, SnapshotError, StorageError
from pipeline.index import (
    MAX_SEQUENCE,
    ZSTD_LEVEL,
    Decision,
    decide,
    decode_index,
    decode_pointer,
    encode_index,
    encode_pointer,
    index_document,
    index_key,
    index_torrent_key,
    parse_rfc3339,
    rfc3339,
)
from pipeline.model import IndexRef, PackageRecord, Pointer, SignatureRef

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
IH = "b" * 40


def record(path: str, *, size: int = 1000, sha256: str = SHA_A, **extra: Any) -> PackageRecord:
    if size == 0:
        return PackageRecord(
            path=path,
            size=0,
            sha256=sha256,
            infohash=None,
            piece_size=None,
            torrent=None,
            metalink=f"metalinks/{path}.meta4",
            magnet=None,
            **extra,
        )
    return PackageRecord(
        path=path,
        size=size,
        sha256=sha256,
        infohash=IH,
        piece_size=16384,
        torrent=f"torrents/{path}.torrent",
        metalink=f"metalinks/{path}.meta4",
        magnet=f"magnet:?xt=urn:btih:{IH}&dn=x",
        **extra,
    )


RECORDS = (
    record("pool/main/z/zz/zz_1.0_all.deb", name="zz", version="1.0", arch="all", description="last"),
    record(
        "pool/main/h/hello/hello_2.10-3+b1~x_amd64.deb",
        sha256=SHA_B,
        name="hello",
        version="2.10-3+b1~x",
        arch="amd64",
        description="ünïcode",
    ),
    record("core/os/x86_64/pkg-1-1-x86_64.pkg.tar.zst", signature=SignatureRef("core/os/x86_64/p.sig", 119, SHA_B)),
    record("empty/zero-length", size=0),
)


def pointer(**changes: Any) -> Pointer:
    base = Pointer(
        repo="debian",
        sequence=7,
        generated="2026-03-01T00:00:00Z",
        expires="2026-03-08T00:00:00Z",
        index=IndexRef(f"index/7-{SHA_A[:12]}/index.json.zst", 1234, 56789, SHA_A),
        index_torrent=f"index/7-{SHA_A[:12]}.torrent",
        infohash=IH,
        magnet=f"magnet:?xt=urn:btih:{IH}&dn=7-aaaaaaaaaaaa",
    )
    return replace(base, **changes)


def document(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "repo": "debian",
        "sequence": 3,
        "generated": NOW,
        "webseeds": ["https://deb.example.org/debian/", "http://mirror.example.net/debian/"],
        "trackers": ["udp://tracker.example.org:6969/announce"],
        "packages": RECORDS,
    }
    args.update(changes)
    return index_document(**args)


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- rfc3339 -------------------------------------------------------------------------------------


def test_rfc3339_utc_seconds_and_offsets_converted() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-02T01:04:05Z"
    assert parse_rfc3339("2026-01-02T01:04:05Z") == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)


def test_rfc3339_refuses_naive_and_malformed() -> None:
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2026, 1, 2, 3, 4, 5))  # noqa: DTZ001 - the point of the test
    for bad in ("2026-01-02T01:04:05+00:00", "2026-01-02 01:04:05Z", "2026-13-02T01:04:05Z", "x"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


# -- index document and encoding -----------------------------------------------------------------


def test_index_document_sorted_by_path_with_design_keys() -> None:
    doc = document()
    assert set(doc) == {"format", "repo", "sequence", "generated", "webseeds", "trackers", "packages"}
    assert doc["format"] == "mirrorseed-index/1"
    assert doc["generated"] == "2026-03-01T12:00:00Z"
    paths = [p["path"] for p in doc["packages"]]
    assert paths == sorted(paths) and len(paths) == len(RECORDS)
    hello = next(p for p in doc["packages"] if p["path"].startswith("pool/main/h/"))
    assert "description" not in hello and hello["name"] == "hello"
    zero = next(p for p in doc["packages"] if p["size"] == 0)
    assert zero["infohash"] is None and zero["torrent"] is None and zero["magnet"] is None


def test_index_document_refuses_duplicate_paths_and_bad_sequence() -> None:
    with pytest.raises(SnapshotError, match="pool/main/z/zz/zz_1.0_all.deb"):
        document(packages=[*RECORDS, RECORDS[0]])
    for bad in (0, MAX_SEQUENCE + 1):
        with pytest.raises(ValueError):
            document(sequence=bad)


def test_encode_decode_round_trip_and_metadata() -> None:
    doc = document()
    encoded = encode_index(doc)
    assert decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == doc
    assert encoded.size == len(encoded.data)
    assert zstandard.frame_content_size(encoded.data) == encoded.uncompressed_size
    assert zstandard.get_frame_parameters(encoded.data).has_checksum
    raw = zstandard.ZstdDecompressor().decompress(encoded.data)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "ünïcode" not in raw.decode() and "2.10-3+b1~x" in raw.decode()  # description dropped; UTF-8 raw
    assert 1 <= ZSTD_LEVEL <= 19


def test_encode_index_is_deterministic() -> None:
    first = encode_index(document())
    second = encode_index(json.loads(json.dumps(document())))  # same content, rebuilt dicts
    assert first == second
    assert first.sha256 != encode_index(document(sequence=4)).sha256


def test_decode_refuses_declared_size_above_pointer() -> None:
    encoded = encode_index(document())
    with pytest.raises(StorageError, match="declares"):
        decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size - 1)


def test_decode_refuses_undeclared_zstd_bomb() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 10_000_000)
    assert zstandard.frame_content_size(bomb) == -1 and len(bomb) < 2000
    with pytest.raises(StorageError, match="more than the 1000 bytes"):
        decode_index(bomb, uncompressed_size=1000)


def test_decode_accepts_undeclared_frame_of_exact_size() -> None:
    raw = json.dumps({"format": "mirrorseed-index/1", "packages": []}).encode()
    data = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert decode_index(data, uncompressed_size=len(raw))["packages"] == []
    with pytest.raises(StorageError, match="decompresses to"):
        decode_index(data, uncompressed_size=len(raw) + 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-3],  # truncated checksum
        lambda d: d[: len(d) // 2],  # truncated frame
        lambda d: d + b"junk",  # trailing garbage
        lambda d: d + d,  # a second frame
        lambda d: b"not zstd at all",
    ],
)
def test_decode_refuses_corrupt_frames(damage: Any) -> None:
    encoded = encode_index(document())
    with pytest.raises(StorageError):
        decode_index(damage(encoded.data), uncompressed_size=encoded.uncompressed_size)


def test_decode_refuses_other_format() -> None:
    raw = json.dumps({"format": "mirrorseed-index/2"}).encode()
    with pytest.raises(StorageError, match="mirrorseed-index/2"):
        decode_index(zstandard.ZstdCompressor().compress(raw), uncompressed_size=len(raw))


def test_index_keys() -> None:
    sha = "0123456789ab" + "f" * 52
    assert index_key(12, sha) == "index/12-0123456789ab/index.json.zst"
    assert index_torrent_key(12, sha) == "index/12-0123456789ab.torrent"
    for seq, bad in ((12, "ABC"), (12, sha.upper()), (0, sha)):
        with pytest.raises(ValueError):
            index_key(seq, bad)


# -- pointer -------------------------------------------------------------------------------------


def test_pointer_encode_decode_round_trip() -> None:
    data = encode_pointer(pointer())
    assert data.endswith(b"}\n")
    doc = json.loads(data)
    assert list(doc) == sorted(doc) and list(doc["index"]) == sorted(doc["index"])
    assert doc["format"] == "mirrorseed-pointer/1"
    assert decode_pointer(data) == pointer()
    assert encode_pointer(pointer()) == data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="mirrorseed-pointer/2"), "format"),
        (lambda d: d.pop("expires"), "missing keys"),
        (lambda d: d.update(extra=1), "unexpected keys"),
        (lambda d: d.update(sequence="7"), "sequence is not an integer"),
        (lambda d: d.update(sequence=True), "sequence is not an integer"),
        (lambda d: d.update(sequence=2**53), "2\\^53"),
        (lambda d: d.update(sequence=0), "2\\^53"),
        (lambda d: d["index"].update(sha256="A" * 64), "sha256"),
        (lambda d: d["index"].update(path="/abs/index.json.zst"), "relative"),
        (lambda d: d["index"].update(path="index/../x"), "relative"),
        (lambda d: d.update(expires="2026-03-08T00:00:00+00:00"), "expires"),
        (lambda d: d.update(infohash="z" * 40), "infohash"),
    ],
)
def test_decode_pointer_refuses_invalid(mutate: Any, message: str) -> None:
    doc = pointer().to_json()
    mutate(doc)
    with pytest.raises(StorageError, match=message):
        decode_pointer(json.dumps(doc).encode())


def test_decode_pointer_refuses_non_json() -> None:
    for data in (b"\xff\xfe", b"[1, 2]", b"not json"):
        with pytest.raises(StorageError):
            decode_pointer(data)


# -- decide --------------------------------------------------------------------------------------


def decide_with(**changes: Any) -> Decision:
    args: dict[str, Any] = {
        "current": pointer(expires=rfc3339(NOW + timedelta(days=5))),
        "current_records": RECORDS,
        "current_webseeds": ("https://a.example/", "https://b.example/"),
        "current_trackers": ("udp://t.example:6969/announce",),
        "records": tuple(reversed(RECORDS)),  # order does not matter
        "webseeds": ("https://b.example/", "https://a.example/"),  # a set: order does not matter
        "trackers": ("udp://t.example:6969/announce",),
        "now": NOW,
        "resign_before": timedelta(days=3),
    }
    args.update(changes)
    return decide(**args)


def test_decide_first_run_publishes_sequence_1() -> None:
    assert decide_with(current=None, current_records=None, current_webseeds=(), current_trackers=()) == Decision(
        "publish", 1
    )


def test_decide_noop_when_same_and_far_from_expiry() -> None:
    assert decide_with() == Decision("noop", 7)


def test_decide_description_only_difference_is_noop() -> None:
    described = tuple(replace(r, description="rewritten <b>upstream</b> text") for r in RECORDS)
    assert decide_with(records=described) == Decision("noop", 7)


def test_decide_resign_when_expiry_near_or_passed() -> None:
    assert decide_with(current=pointer(expires=rfc3339(NOW + timedelta(days=3)))) == Decision("resign", 7)
    assert decide_with(current=pointer(expires=rfc3339(NOW - timedelta(days=1)))) == Decision("resign", 7)


@pytest.mark.parametrize(
    "changes",
    [
        {"records": (*RECORDS[:-1], replace(RECORDS[-1], sha256=SHA_B))},
        {"records": RECORDS[:-1]},
        {"records": (*RECORDS, record("pool/new.deb"))},
        {"records": (*RECORDS[1:], replace(RECORDS[0], version="1.1"))},
        {"webseeds": ("https://a.example/",)},
        {"webseeds": ("https://a.example/", "https://b.example/", "https://c.example/")},
        {"trackers": ()},
        {"current_records": None},
    ],
    ids=["sha256", "removed", "added", "version", "webseed-gone", "webseed-added", "trackers", "unreadable"],
)
def test_decide_change_publishes_next_sequence(changes: dict[str, Any]) -> None:
    assert decide_with(**changes) == Decision("publish", 8)


def test_decide_refuses_sequence_at_the_limit() -> None:
    with pytest.raises(PipelineError, match="2\\^53"):
        decide_with(current=pointer(sequence=2**53, expires=rfc3339(NOW + timedelta(days=5))))
    at_max = pointer(sequence=MAX_SEQUENCE, expires=rfc3339(NOW + timedelta(days=5)))
    assert decide_with(current=at_max) == Decision("noop", MAX_SEQUENCE)
    with pytest.raises(PipelineError, match="2\\^53"):
        decide_with(current=at_max, trackers=())


def test_decide_refuses_naive_now() -> None:
    with pytest.raises(ValueError):
        decide_with(now=NOW.replace(tzinfo=None))


# -- JSON Schemas --------------------------------------------------------------------------------


def test_index_schema_accepts_index_document() -> None:
    v = validator("index.schema.json")
    doc = document()
    assert not list(v.iter_errors(doc))
    assert not list(v.iter_errors(document(packages=(), webseeds=[], trackers=[])))


def test_pointer_schema_accepts_pointer_payload() -> None:
    v = validator("pointer.schema.json")
    assert not list(v.iter_errors(pointer().to_json()))
    assert not list(v.iter_errors(json.loads(encode_pointer(pointer(sequence=MAX_SEQUENCE)))))


def _package_doc(**changes: Any) -> dict[str, Any]:
    doc = document()
    doc["packages"][0].update(changes)
    return doc


@pytest.mark.parametrize(
    "bad",
    [
        lambda: {k: v for k, v in document().items() if k != "trackers"},
        lambda: {**document(), "extra": 1},
        lambda: {**document(), "generated": "2026-03-01T12:00:00+00:00"},
        lambda: {**document(), "generated": "2026-03-01T12:00:00Z\n"},
        lambda: {**document(), "sequence": 0},
        lambda: {**document(), "webseeds": ["ftp://x/"]},
        lambda: _package_doc(sha256="A" * 64),
        lambda: _package_doc(sha256="a" * 63),
        lambda: _package_doc(sha256="a" * 64 + "\n"),
        lambda: _package_doc(infohash="a" * 41),
        lambda: _package_doc(path="/etc/passwd"),
        lambda: _package_doc(path="pool/../../etc/passwd"),
        lambda: _package_doc(path="pool//x.deb"),
        lambda: _package_doc(path="pool/x.deb\n"),
        lambda: _package_doc(piece_size=1000),
        lambda: _package_doc(torrent=None),  # a non-empty file needs its torrent
        lambda: _package_doc(signature={"path": "x.sig", "size": 1}),
        lambda: _package_doc(description="not in the index"),
        lambda: _package_doc(name=None),
    ],
)
def test_index_schema_rejects(bad: Any) -> None:
    assert list(validator("index.schema.json").iter_errors(bad()))


def test_index_schema_zero_length_file_must_have_nulls() -> None:
    doc = document()
    zero = next(p for p in doc["packages"] if p["size"] == 0)
    zero["infohash"] = IH
    assert list(validator("index.schema.json").iter_errors(doc))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("magnet"),
        lambda d: d["index"].pop("uncompressed_size"),
        lambda d: d.update(sequence=2**53),
        lambda d: d.update(sequence=1.5),
        lambda d: d["index"].update(sha256="g" * 64),
        lambda d: d.update(index_torrent="../index/7.torrent"),
        lambda d: d.update(expires="2026-03-08"),
        lambda d: d.update(format="mirrorseed-index/1"),
        lambda d: d["index"].update(extra=True),
    ],
)
def test_pointer_schema_rejects(mutate: Any) -> None:
    doc = pointer().to_json()
    mutate(doc)
    assert list(validator("pointer.schema.json").iter_errors(doc))
