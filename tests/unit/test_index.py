"""pipeline.index: index shards (format 2) and the legacy whole index (format 1), zstd encode/decode
(bombs), bounded reading, deltas (zstd patch-from), the pointer payload (format 2, legacy 1), JSON Schemas.
docs/sharded-index.md is the contract."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import shutil
import subprocess
import tracemalloc
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zstandard

from pipeline.errors import SnapshotError, StorageError
from pipeline.index import (
    DELTA_MAX_BYTES,
    INDEX_FORMAT,
    LEGACY_INDEX_FORMAT,
    LEGACY_POINTER_FORMAT,
    MAX_SEQUENCE,
    POINTER_FORMAT,
    UNPARTED_POINTER_FORMAT,
    ZSTD_LEVEL,
    EncodedIndex,
    apply_delta,
    decode_index,
    decode_pointer,
    decompress_index,
    encode_document,
    encode_json,
    encode_pointer,
    iter_index,
    make_delta,
    package_json,
    parse_rfc3339,
    rfc3339,
    shard_document,
    shard_json,
    shard_parts,
)
from pipeline.model import DeltaRef, PackageRecord, Pointer, ShardRef, SignatureRef
from pipeline.objects import delta_key, shard_key, shard_torrent_key

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
SHA_C = "c" * 64
IH = "b" * 40
SHARD = "bookworm/main/amd64"
ZSTD_CLI = shutil.which("zstd")


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
ORDERED = tuple(sorted(RECORDS, key=lambda r: r.path))


def shard_args(**changes: Any) -> dict[str, Any]:
    """The keyword arguments of shard_document (`packages`, in any order)."""
    args: dict[str, Any] = {
        "repo": "debian",
        "shard": SHARD,
        "webseeds": ["https://deb.example.org/debian/", "http://mirror.example.net/debian/"],
        "trackers": ["udp://tracker.example.org:6969/announce"],
        "packages": RECORDS,
    }
    args.update(changes)
    return args


def header_args(**changes: Any) -> dict[str, Any]:
    """shard_args() without the packages: what shard_json and shard_parts take besides `records`."""
    return {key: value for key, value in shard_args(**changes).items() if key != "packages"}


def document(**changes: Any) -> dict[str, Any]:
    return shard_document(**shard_args(**changes))


def encode_shard(*, records: Sequence[PackageRecord], **header: Any) -> EncodedIndex:
    """A shard as the publisher encodes a shard that fits in one part: its JSON compressed."""
    return encode_json(shard_json(**header, records=records))


def encode_sharded(args: dict[str, Any]) -> EncodedIndex:
    """encode_shard of shard_args-style arguments (records sorted first, as the publisher passes them)."""
    records = tuple(sorted(args["packages"], key=lambda r: r.path))
    return encode_shard(**{key: value for key, value in args.items() if key != "packages"}, records=records)


def canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def legacy_document(**changes: Any) -> dict[str, Any]:
    """A whole index of format 1, as earlier versions wrote it (read back with expected=LEGACY_INDEX_FORMAT)."""
    doc: dict[str, Any] = {
        "format": LEGACY_INDEX_FORMAT,
        "repo": "debian",
        "sequence": 3,
        "generated": "2026-03-01T12:00:00Z",
        "webseeds": ["https://deb.example.org/debian/"],
        "trackers": ["udp://tracker.example.org:6969/announce"],
        "packages": [r.to_json() for r in ORDERED],
    }
    doc.update(changes)
    return doc


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def frame(raw: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size, write_checksum=True).compress(raw)


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


# -- shard document and encoding -----------------------------------------------------------------


def test_formats() -> None:
    assert INDEX_FORMAT == "mirrorseed-index/2" and POINTER_FORMAT == "mirrorseed-pointer/3"
    assert UNPARTED_POINTER_FORMAT == "mirrorseed-pointer/2"
    assert LEGACY_INDEX_FORMAT == "mirrorseed-index/1" and LEGACY_POINTER_FORMAT == "mirrorseed-pointer/1"


def test_shard_document_sorted_by_path_with_the_contract_keys() -> None:
    doc = document()
    assert set(doc) == {"format", "repo", "shard", "webseeds", "trackers", "packages"}  # no sequence, no time
    assert doc["format"] == "mirrorseed-index/2" and doc["shard"] == SHARD and doc["repo"] == "debian"
    paths = [p["path"] for p in doc["packages"]]
    assert paths == sorted(paths) and len(paths) == len(RECORDS)
    hello = next(p for p in doc["packages"] if p["path"].startswith("pool/main/h/"))
    assert "description" not in hello and hello["name"] == "hello"
    assert hello == next(r for r in RECORDS if r.path == hello["path"]).to_json()  # records as in format 1
    zero = next(p for p in doc["packages"] if p["size"] == 0)
    assert zero["infohash"] is None and zero["torrent"] is None and zero["magnet"] is None


def test_shard_document_deduplicates_urls_and_writes_dht_nodes_only_when_there_are_some() -> None:
    doc = document(webseeds=["https://a.example/", "https://b.example/", "https://a.example/"], trackers=[])
    assert doc["webseeds"] == ["https://a.example/", "https://b.example/"] and doc["trackers"] == []
    assert "dht_nodes" not in doc and "dht_nodes" not in document(dht_nodes=())
    nodes = document(dht_nodes=["n.example:6881", "[2001:db8::1]:6881", "n.example:6881"])["dht_nodes"]
    assert nodes == ["n.example:6881", "[2001:db8::1]:6881"]


def test_shard_document_refuses_duplicate_paths() -> None:
    with pytest.raises(SnapshotError, match="^pool/main/z/zz/zz_1.0_all.deb: listed twice"):
        document(packages=[*RECORDS, RECORDS[0]])


def test_encode_decode_round_trip_and_metadata() -> None:
    doc = document()
    encoded = encode_document(doc)
    assert decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == doc
    assert encoded.size == len(encoded.data)
    assert encoded.sha256 == hashlib.sha256(encoded.data).hexdigest()
    assert zstandard.frame_content_size(encoded.data) == encoded.uncompressed_size
    assert zstandard.get_frame_parameters(encoded.data).has_checksum
    raw = zstandard.ZstdDecompressor().decompress(encoded.data)
    assert raw == canonical(doc).encode() and b" " not in raw.replace(b"2.10-3+b1~x", b"")
    assert encoded.uncompressed_sha256 == hashlib.sha256(raw).hexdigest() and encoded.uncompressed_size == len(raw)
    assert "ünïcode" not in raw.decode() and "2.10-3+b1~x" in raw.decode()  # description dropped; UTF-8 raw
    assert decompress_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == raw
    assert 1 <= ZSTD_LEVEL <= 19


def test_encoding_is_deterministic_and_content_addressed() -> None:
    first = encode_document(document())
    assert first == encode_document(json.loads(json.dumps(document())))  # same content, rebuilt dicts
    assert first == encode_sharded(shard_args(packages=tuple(reversed(RECORDS))))  # any input order
    others = {
        encode_document(document(shard="bookworm/main/all")).sha256,
        encode_document(document(repo="debian-security")).sha256,
        encode_document(document(packages=RECORDS[1:])).sha256,
        encode_document(document(trackers=[])).sha256,
        encode_document(document(dht_nodes=["n.example:6881"])).sha256,
        encode_document(document(packages=(replace(RECORDS[0], sha256=SHA_C), *RECORDS[1:]))).sha256,
    }
    assert first.sha256 not in others and len(others) == 6
    # the description is not in the index: rewording it upstream changes no byte
    assert encode_document(document(packages=[replace(r, description="new") for r in RECORDS])) == first


@functools.cache
def synthetic(count: int, seed: int = 0) -> tuple[PackageRecord, ...]:
    """`count` records sorted by path, ~650 bytes of JSON each, of every shape: non-ASCII (also beyond
    Latin-1) names, signatures, zero-length files, name/version/arch present, partly or wholly absent."""
    rng = random.Random(count + seed)
    records = []
    for i in range(count):
        name = f"paquet-é{i % 97}-日本" if i % 4 else f"lib{i % 89}-dev"
        path = f"pool/main/{i % 26:02d}/{i:06d}/{name}_{i}.{i % 7}-{i % 3}~ü_amd64.deb"
        digest = f"{rng.getrandbits(256):064x}"
        infohash = f"{rng.getrandbits(160):040x}"
        fields: dict[str, Any] = {}
        if i % 3:
            fields.update(name=name, version=f"{i}.{i % 7}-{i % 3}~ü", arch="amd64")
        elif i % 2:
            fields.update(arch="all")
        if i % 5 == 0:
            fields.update(signature=SignatureRef(f"{path}.sig", 119 + i % 400, f"{rng.getrandbits(256):064x}"))
        empty = i % 13 == 0
        records.append(
            PackageRecord(
                path=path,
                size=0 if empty else rng.randrange(1, 10**9),
                sha256=digest,
                infohash=None if empty else infohash,
                piece_size=None if empty else 1 << (18 + i % 5),
                torrent=None if empty else f"torrents/{path}.torrent",
                metalink=f"metalinks/{path}.meta4",
                magnet=None if empty else f"magnet:?xt=urn:btih:{infohash}&dn={name}",
                description=f"description {i} is never in the index",
                **fields,
            )
        )
    return tuple(sorted(records, key=lambda r: r.path))


SHAPES: dict[str, dict[str, Any]] = {
    "empty": {"packages": (), "webseeds": [], "trackers": []},
    "one": {"packages": (RECORDS[0],)},
    "design": {"webseeds": ["https://a.example/", "https://b.example/", "https://a.example/"], "repo": "débian"},
    "top-shard": {"shard": "."},
    "unicode-shard": {"shard": "sid/main-ü/日本"},
    "3000": {"packages": synthetic(3000)},
    "6000-above-the-zstd-window": {"packages": synthetic(6000), "trackers": []},
    "dht-nodes": {"dht_nodes": ["router.example.org:6881", "[2001:db8::1]:6881", "router.example.org:6881"]},
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_encode_shard_is_byte_identical_to_encode_document(shape: dict[str, Any]) -> None:
    args = shard_args(**shape)
    doc = shard_document(**args)
    expected = encode_document(doc)
    streamed = encode_sharded(args)
    assert streamed == expected  # data, sha256, size, uncompressed_size, uncompressed_sha256
    assert streamed.sha256 == hashlib.sha256(streamed.data).hexdigest()
    raw = zstandard.ZstdDecompressor().decompress(expected.data)
    assert raw == canonical(doc).encode()
    records = tuple(sorted(args["packages"], key=lambda r: r.path))
    assert shard_json(**header_args(**shape), records=records) == raw  # what a delta is made from
    assert zstandard.frame_content_size(expected.data) == len(raw) == expected.uncompressed_size
    assert hashlib.sha256(raw).hexdigest() == expected.uncompressed_sha256
    assert zstandard.get_frame_parameters(expected.data).has_checksum


def test_encoded_bytes_do_not_depend_on_how_the_json_is_chunked() -> None:
    """The canonical frame is zstd's streaming output with the size pledged, whatever the chunking."""
    encoded = encode_shard(**header_args(), records=synthetic(6000))
    raw = zstandard.ZstdDecompressor().decompress(encoded.data)
    rng = random.Random(7)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)
    stream = compressor.compressobj(size=len(raw))
    out, at = [], 0
    while at < len(raw):
        step = rng.choice([1, 3, 700, 4096, 131_072, 1_000_000])
        out.append(stream.compress(raw[at : at + step]))
        at += step
    assert b"".join(out) + stream.flush() == encoded.data
    # a one-shot compression of a text above the window picks other matches: not the canonical frame
    one_shot = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)
    assert one_shot.compress(raw) != encoded.data


def test_encode_shard_refuses_unsorted_and_repeated_records() -> None:
    with pytest.raises(SnapshotError, match=f"^{re.escape(ORDERED[-1].path)}: listed twice"):
        encode_shard(**header_args(), records=[*ORDERED, ORDERED[-1]])
    with pytest.raises(SnapshotError, match=f"^{re.escape(ORDERED[0].path)}: comes after {re.escape(ORDERED[1].path)}"):
        encode_shard(**header_args(), records=[ORDERED[1], ORDERED[0], *ORDERED[2:]])
    with pytest.raises(SnapshotError, match="comes after"):
        shard_json(**header_args(), records=[ORDERED[1], ORDERED[0]])


def test_shard_parts_hold_one_part_at_a_time() -> None:
    """A shard of 10 MB of JSON cut into 1 MB parts: the peak stays near one part (and its copy), far below the
    JSON's size, while every part is taken in turn."""
    records = synthetic(20_000)
    limit = 1_000_000
    tracemalloc.start()
    try:
        sizes = []
        for _, text in shard_parts(**header_args(), packages=map(package_json, records), max_bytes=limit):
            sizes.append(len(text))
            del text  # as the publisher does: a part is not kept while the next is made
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) > 10_000_000 and max(sizes) <= limit and len(sizes) > 10
    assert peak < 3 * limit, (peak, sizes)


# -- decode_index: strict, bounded ----------------------------------------------------------------


def test_decode_refuses_declared_size_other_than_the_pointers() -> None:
    encoded = encode_document(document())
    for size in (encoded.uncompressed_size - 1, encoded.uncompressed_size + 1):
        with pytest.raises(StorageError, match="declares"):
            decode_index(encoded.data, uncompressed_size=size)
        with pytest.raises(StorageError, match="declares"):
            decompress_index(encoded.data, uncompressed_size=size)
    with pytest.raises(StorageError, match="negative"):
        decode_index(encoded.data, uncompressed_size=-1)


def test_decode_refuses_undeclared_zstd_bomb() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 10_000_000)
    assert zstandard.frame_content_size(bomb) == -1 and len(bomb) < 2000
    with pytest.raises(StorageError, match="more than the 1000 bytes"):
        decode_index(bomb, uncompressed_size=1000)
    with pytest.raises(StorageError, match="more than the 1000 bytes"):
        decompress_index(bomb, uncompressed_size=1000)


def test_decode_accepts_undeclared_frame_of_exact_size() -> None:
    raw = canonical(document(packages=())).encode()
    data = frame(raw, content_size=False)
    assert decode_index(data, uncompressed_size=len(raw))["packages"] == []
    with pytest.raises(StorageError, match="decompresses to"):
        decode_index(data, uncompressed_size=len(raw) + 1)


CORRUPT = {
    "truncated-checksum": lambda d: d[:-3],
    "truncated-frame": lambda d: d[: len(d) // 2],
    "trailing-junk": lambda d: d + b"junk",
    "second-frame": lambda d: d + d,
    "checksum-bit": lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    "not-zstd": lambda d: b"not zstd at all",
    "empty": lambda d: b"",
}


@pytest.mark.parametrize("damage", CORRUPT.values(), ids=CORRUPT.keys())
def test_decode_refuses_corrupt_frames(damage: Any) -> None:
    encoded = encode_document(document())
    with pytest.raises(StorageError, match="^index: [^\n]*$"):
        decode_index(damage(encoded.data), uncompressed_size=encoded.uncompressed_size)
    with pytest.raises(StorageError, match="^index: [^\n]*$"):
        decompress_index(damage(encoded.data), uncompressed_size=encoded.uncompressed_size)


def test_decode_refuses_other_formats_and_non_objects() -> None:
    for doc, found in (
        (legacy_document(), "'mirrorseed-index/1'"),
        ({**document(), "format": "mirrorseed-index/3"}, "'mirrorseed-index/3'"),
        ({"packages": []}, "None"),
        ([1, 2], "'list'"),
    ):
        raw = canonical(doc).encode()
        with pytest.raises(StorageError, match=f"format is {found}, expected 'mirrorseed-index/2'"):
            decode_index(frame(raw), uncompressed_size=len(raw))


def test_decode_reads_the_legacy_format_only_when_asked() -> None:
    legacy = legacy_document()
    raw = canonical(legacy).encode()
    assert decode_index(frame(raw), uncompressed_size=len(raw), expected=LEGACY_INDEX_FORMAT) == legacy
    shard = canonical(document()).encode()
    with pytest.raises(StorageError, match="format is 'mirrorseed-index/2', expected 'mirrorseed-index/1'"):
        decode_index(frame(shard), uncompressed_size=len(shard), expected=LEGACY_INDEX_FORMAT)


# -- iter_index: bounded reading -----------------------------------------------------------------


def read_all(data: bytes, size: int, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reader = iter_index(data, uncompressed_size=size, **kwargs)
    packages = list(reader.packages())
    return packages, reader.header


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_iter_index_round_trip_equals_decode_index(shape: dict[str, Any]) -> None:
    encoded = encode_sharded(shard_args(**shape))
    doc = decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size)
    packages, header = read_all(encoded.data, encoded.uncompressed_size)
    assert {**header, "packages": packages} == doc
    nodes = ["dht_nodes"] if shape.get("dht_nodes") else []  # written only when there are nodes
    assert list(header) == [*nodes, "format", "repo", "shard", "trackers", "webseeds"]
    assert header["shard"] == shape.get("shard", SHARD)
    assert header.get("dht_nodes", []) == list(dict.fromkeys(shape.get("dht_nodes", [])))
    assert [PackageRecord.from_json(p) for p in packages] == sorted(
        shape.get("packages", RECORDS), key=lambda r: r.path
    )


def test_iter_index_reads_the_legacy_format_only_when_asked() -> None:
    legacy = legacy_document()
    raw = canonical(legacy).encode()
    packages, header = read_all(frame(raw), len(raw), expected=LEGACY_INDEX_FORMAT)
    assert {**header, "packages": packages} == legacy
    assert list(header) == ["format", "generated", "repo", "sequence", "trackers", "webseeds"]
    with pytest.raises(StorageError, match="format is 'mirrorseed-index/1', expected 'mirrorseed-index/2'"):
        read_all(frame(raw), len(raw))
    shard = canonical(document()).encode()
    with pytest.raises(StorageError, match="format is 'mirrorseed-index/2', expected 'mirrorseed-index/1'"):
        read_all(frame(shard), len(shard), expected=LEGACY_INDEX_FORMAT)
    for bad, message in (
        (legacy_document(shard=SHARD), "unexpected keys \\['shard'\\]"),
        ({k: v for k, v in legacy.items() if k != "sequence"}, "missing keys \\['sequence'\\]"),
        (legacy_document(sequence="3"), "sequence is not an integer"),
        (legacy_document(generated=7), "generated is not a string"),
    ):
        raw = canonical(bad).encode()
        with pytest.raises(StorageError, match=message):
            read_all(frame(raw), len(raw), expected=LEGACY_INDEX_FORMAT)


def test_iter_index_header_only_after_the_packages_and_one_pass_only() -> None:
    encoded = encode_document(document())
    reader = iter_index(encoded.data, uncompressed_size=encoded.uncompressed_size)
    with pytest.raises(RuntimeError, match="iterated to its end"):
        _ = reader.header
    packages = reader.packages()
    next(packages)
    with pytest.raises(RuntimeError, match="once"):
        reader.packages()
    with pytest.raises(RuntimeError, match="iterated to its end"):
        _ = reader.header
    assert len(list(packages)) == len(RECORDS) - 1
    assert reader.header["shard"] == SHARD
    reader.header["webseeds"].append("mutated")  # a fresh copy each time
    assert "mutated" not in reader.header["webseeds"]


SPLIT_DOC: dict[str, Any] = {
    "packages": [
        {"path": "日本/ü.deb", "n": [1.5e300, -0.25e-2, 0, -7, 12345678901234567890, True, False, None]},
        {"s": '\\"é😀 \n\t', "e": {}, "a": [], "x": 1e5, "y": 2.5, "z": -0.0},
        {"path": "z", "size": 9007199254740991},
    ],
    "webseeds": ["https://a.example/ü/"],
    "trackers": [],
    "dht_nodes": ["[2001:db8::1]:6881"],
    "shard": "sid/main/日本",
    "repo": "débian 😀",
    "format": "mirrorseed-index/2",
}


@pytest.mark.parametrize(("indent", "ascii_only"), [(None, False), (2, False), (None, True)])
@pytest.mark.parametrize("step", [1, 2, 3, 5, 64])
def test_iter_index_parses_text_split_anywhere(
    monkeypatch: pytest.MonkeyPatch, indent: int | None, ascii_only: bool, step: int
) -> None:
    """Decompressed text arrives in arbitrary pieces: numbers, escapes and UTF-8 split across them."""
    raw = json.dumps(SPLIT_DOC, indent=indent, ensure_ascii=ascii_only).encode()
    data = frame(raw)
    monkeypatch.setattr(
        "pipeline.index._inflate", lambda data, size: (raw[i : i + step] for i in range(0, len(raw), step))
    )
    packages, header = read_all(data, len(raw))
    assert {**header, "packages": packages} == json.loads(raw) == SPLIT_DOC


def test_iter_index_accepts_whitespace_and_any_key_order() -> None:
    raw = (" \n" + json.dumps(SPLIT_DOC, indent="\t") + "\r\n ").encode()
    packages, header = read_all(frame(raw), len(raw))
    assert {**header, "packages": packages} == json.loads(raw) == decode_index(frame(raw), uncompressed_size=len(raw))


def test_iter_index_refuses_sizes_before_iterating() -> None:
    encoded = encode_document(document())
    with pytest.raises(StorageError, match="declares"):
        iter_index(encoded.data, uncompressed_size=encoded.uncompressed_size - 1)
    with pytest.raises(StorageError, match="negative"):
        iter_index(encoded.data, uncompressed_size=-1)
    with pytest.raises(StorageError, match="not a zstd frame"):
        iter_index(b"not zstd at all", uncompressed_size=10)


def test_iter_index_refuses_undeclared_zstd_bomb() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 10_000_000)
    with pytest.raises(StorageError, match="more than the 1000 bytes"):
        read_all(bomb, 1000)
    spaces = zstandard.ZstdCompressor(write_content_size=False).compress(b"{" + b" " * 10_000_000 + b"}")
    with pytest.raises(StorageError, match="more than the 1000 bytes"):
        read_all(spaces, 1000)


def test_iter_index_undeclared_frame_must_have_the_exact_size() -> None:
    raw = canonical(document()).encode()
    data = frame(raw, content_size=False)
    assert len(read_all(data, len(raw))[0]) == len(RECORDS)
    with pytest.raises(StorageError, match="decompresses to"):
        read_all(data, len(raw) + 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-3],  # truncated checksum
        lambda d: d[: len(d) // 2],  # truncated frame
        lambda d: d + b"junk",  # trailing garbage
        lambda d: d + d,  # a second frame
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),  # wrong checksum
        lambda d: d[:-4] + b"\0\0\0\0",
    ],
    ids=["truncated-checksum", "truncated-frame", "trailing-junk", "second-frame", "checksum-bit", "checksum-zero"],
)
def test_iter_index_refuses_corrupt_frames_late_from_the_iterator(damage: Any) -> None:
    encoded = encode_shard(**header_args(), records=synthetic(3000))
    reader = iter_index(damage(encoded.data), uncompressed_size=encoded.uncompressed_size)
    packages = reader.packages()
    assert next(packages)["path"] == synthetic(3000)[0].path  # the damage is only found later
    with pytest.raises(StorageError, match="^index: [^\n]*$"):
        list(packages)
    with pytest.raises(RuntimeError):
        _ = reader.header


def canonical_text(**changes: Any) -> str:
    doc = document()
    doc.update(changes)
    return canonical(doc)


SHARD_MEMBER = f'"shard":"{SHARD}"'

MALFORMED: dict[str, tuple[Any, str]] = {
    "top-level-array": (lambda: "[]", "expected a JSON object at character 0, found '\\['"),
    "empty": (lambda: "", "ends where a JSON object was expected"),
    "format-1": (lambda: canonical_text(format="mirrorseed-index/1"), "format is 'mirrorseed-index/1', expected"),
    "format-3": (lambda: canonical_text(format="mirrorseed-index/3"), "format is 'mirrorseed-index/3', expected"),
    "format-number": (lambda: canonical_text(format=2), "format is 2"),
    "packages-object": (lambda: canonical_text(packages={}), "expected the 'packages' array"),
    "package-number": (lambda: canonical_text(packages=[{"path": "x"}, 1]), "expected packages\\[1\\] as an object"),
    "package-array": (lambda: canonical_text(packages=[[]]), "expected packages\\[0\\] as an object"),
    "truncated-json": (lambda: canonical_text()[:-40], "not valid JSON|truncated"),
    "truncated-brace": (lambda: canonical_text()[:-1], "truncated"),
    "trailing-text": (lambda: canonical_text() + "x", "unexpected data after the JSON object"),
    "second-object": (lambda: canonical_text() + "{}", "unexpected data after the JSON object"),
    "repeated-key": (lambda: canonical_text().replace('"repo":', '"repo":"x","repo":'), "'repo' appears twice"),
    "repeated-packages": (
        lambda: canonical_text().replace('"repo":', '"packages":[],"repo":'),
        "'packages' appears twice",
    ),
    "unknown-key": (lambda: canonical_text(extra=1), "unexpected key 'extra'"),
    "legacy-sequence": (lambda: canonical_text(sequence=3), "missing keys \\[\\], unexpected keys \\['sequence'\\]"),
    "legacy-generated": (
        lambda: canonical_text(generated="2026-03-01T12:00:00Z"),
        "unexpected keys \\['generated'\\]",
    ),
    "missing-shard": (lambda: canonical_text().replace(SHARD_MEMBER + ",", ""), "missing keys \\['shard'\\]"),
    "missing-trackers": (
        lambda: canonical({k: v for k, v in document().items() if k != "trackers"}),
        "missing keys \\['trackers'\\]",
    ),
    "missing-packages": (
        lambda: canonical({k: v for k, v in document().items() if k != "packages"}),
        "missing keys \\['packages'\\]",
    ),
    "header-types": (
        lambda: canonical_text(shard=3, webseeds=[1]),
        "shard is not a string; webseeds is not a list of strings",
    ),
    "dht-nodes-type": (lambda: canonical_text(dht_nodes="n:1"), "dht_nodes is not a list of strings"),
    "repo-null": (lambda: canonical_text(repo=None), "repo is not a string"),
    "bad-literal": (lambda: canonical_text().replace('"size":1000', '"size":tru', 1), "not valid JSON"),
    "bad-number": (lambda: canonical_text().replace('"size":1000', '"size":1000x', 1), "not valid JSON"),
    "bad-top-number": (lambda: canonical_text().replace(SHARD_MEMBER, '"shard":3x'), "expected ',' or '}'"),
    "double-comma": (lambda: canonical_text().replace(',"magnet":', ',,"magnet":', 1), "not valid JSON"),
    "control-char": (lambda: canonical_text(repo="deb\tian").replace("\\t", "\t"), "Invalid control character"),
    "5000-digits": (lambda: canonical_text().replace(SHARD_MEMBER, '"shard":' + "9" * 5000), "not valid JSON"),
    "deep-nesting": (
        lambda: canonical_text(packages=[{"deep": "@"}]).replace('"@"', "[" * 100_000 + "]" * 100_000),
        "not valid JSON",
    ),
    "endless-value": (lambda: canonical_text(repo="r" * 5_000_000), "longer than 4194304 characters"),
}


@pytest.mark.parametrize(("text", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_iter_index_refuses_malformed_json(text: Any, message: str) -> None:
    raw = text().encode()
    try:
        read_all(frame(raw), len(raw))
    except StorageError as err:
        assert re.search(message, str(err)), str(err)[:500]
        assert "\n" not in str(err) and len(str(err)) < 500
    else:
        pytest.fail("accepted")


def test_iter_index_refuses_bad_utf8() -> None:
    for raw in (
        canonical_text().replace("debian", "deb\udcffian").encode("utf-8", "surrogateescape"),
        canonical_text().encode()[:-2] + b"\xc3",  # a sequence cut by the end of the text
    ):
        with pytest.raises(StorageError, match="not UTF-8"):
            read_all(frame(raw), len(raw))


def test_iter_index_wrong_format_is_refused_before_any_package() -> None:
    raw = canonical_text(format="mirrorseed-index/1").encode()
    packages = iter_index(frame(raw), uncompressed_size=len(raw)).packages()
    with pytest.raises(StorageError, match="mirrorseed-index/1"):
        next(packages)


def test_iter_index_memory_stays_bounded() -> None:
    """~20,000 packages (~13 MB of JSON): reading them one by one peaks far below the JSON's size;
    decode_index (json.loads of the whole text) holds at least the text itself."""
    records = synthetic(20_000)
    encoded = encode_shard(**header_args(), records=records)
    assert encoded.uncompressed_size > 10_000_000

    def peak(read: Any) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def stream() -> None:
        reader = iter_index(encoded.data, uncompressed_size=encoded.uncompressed_size)
        count = sum(1 for _ in reader.packages())
        assert count == len(records) and reader.header["repo"] == "debian"

    streamed = peak(stream)
    assert streamed < encoded.uncompressed_size / 5, streamed
    assert streamed < 1_500_000, streamed  # ~0.45 MB: one zstd block and one package, whatever the size
    whole = peak(lambda: decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size))
    assert whole > encoded.uncompressed_size, whole


# -- strict JSON: no NaN/Infinity, no repeated key, no lone surrogate in any document read -------------

NON_STRICT_INDEX: dict[str, tuple[Any, str]] = {
    "nan-size": (lambda t: t.replace('"size":1000', '"size":NaN', 1), "NaN is not a JSON number"),
    "infinity-size": (lambda t: t.replace('"size":1000', '"size":Infinity', 1), "Infinity is not a JSON number"),
    "minus-infinity-size": (lambda t: t.replace('"size":1000', '"size":-Infinity', 1), "-Infinity is not"),
    "nan-shard": (lambda t: t.replace(SHARD_MEMBER, '"shard":NaN', 1), "NaN is not a JSON number"),
    "package-repeated-key": (
        lambda t: t.replace('"size":1000', '"size":1000,"size":1', 1),
        "duplicate key 'size'",
    ),
    "nested-repeated-key": (
        lambda t: t.replace('"size":1000', '"size":1000,"x":{"a":1,"a":2}', 1),
        "duplicate key 'a'",
    ),
    "lone-surrogate-package": (lambda t: t.replace('"size":1000', '"size":1000,"x":"a\\ud800b"', 1), "surrogate"),
    "lone-surrogate-header": (lambda t: t.replace('"repo":"', '"repo":"\\udc00', 1), "surrogate"),
    "lone-surrogate-shard": (lambda t: t.replace('"shard":"', '"shard":"\\udc00', 1), "surrogate"),
    "lone-surrogate-list": (lambda t: t.replace('"webseeds":[', '"webseeds":["\\ud800",', 1), "surrogate"),
    "lone-surrogate-key": (lambda t: t.replace('"size":1000', '"size":1000,"\\ud800":1', 1), "surrogate"),
}


def non_strict_index(mutate: Any) -> bytes:
    text = canonical_text()
    changed = mutate(text)
    assert changed != text
    return str(changed).encode()


@pytest.mark.parametrize(("mutate", "message"), NON_STRICT_INDEX.values(), ids=NON_STRICT_INDEX.keys())
def test_decode_index_refuses_non_strict_json(mutate: Any, message: str) -> None:
    raw = non_strict_index(mutate)
    with pytest.raises(StorageError, match=f"^index: not strict JSON.*{message}") as caught:
        decode_index(frame(raw), uncompressed_size=len(raw))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("mutate", "message"), NON_STRICT_INDEX.values(), ids=NON_STRICT_INDEX.keys())
def test_iter_index_refuses_non_strict_json(mutate: Any, message: str) -> None:
    raw = non_strict_index(mutate)
    with pytest.raises(StorageError, match=f"^index: not strict JSON at character [0-9]+: .*{message}") as caught:
        read_all(frame(raw), len(raw))
    assert "\n" not in str(caught.value)


def test_strict_json_keeps_escaped_pairs_and_non_ascii() -> None:
    """A surrogate pair written as two escapes is one character, not a lone surrogate; other escapes
    and non-ASCII text are fine, and the encoder's bytes are unchanged."""
    text = canonical_text().replace('"size":1000', '"size":1000,"x":"\\ud83d\\ude00 \\u00e9 ü \\\\ud800"', 1)
    raw = text.encode()
    doc = decode_index(frame(raw), uncompressed_size=len(raw))
    packages, _ = read_all(frame(raw), len(raw))
    assert doc["packages"][0]["x"] == packages[0]["x"] == "\U0001f600 é ü \\ud800"
    encoded = encode_document(document(repo="débian 😀"))
    assert decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == json.loads(
        zstandard.ZstdDecompressor().decompress(encoded.data)
    )


# -- deltas (zstd patch-from) --------------------------------------------------------------------


def changed(records: tuple[PackageRecord, ...], every: int) -> tuple[PackageRecord, ...]:
    """`records` with every `every`-th one rebuilt upstream: new content, size, infohash and version."""
    out = []
    for i, r in enumerate(records):
        if i % every == every // 2 and r.size:
            digest = hashlib.sha256(r.sha256.encode()).hexdigest()
            infohash = digest[:40]
            r = replace(  # noqa: PLW2901 - the rebuilt record
                r, sha256=digest, size=r.size + 1, infohash=infohash, version=f"{r.version or '1'}+b1",
                magnet=f"magnet:?xt=urn:btih:{infohash}&dn={r.name}",
            )  # fmt: skip
        out.append(r)
    return tuple(out)


@functools.cache
def shard_pair() -> tuple[bytes, bytes, EncodedIndex]:
    """The JSON of a ~5,000-record shard, of the same shard with 1 % of its records rebuilt, and the
    latter compressed."""
    old_records = synthetic(5000, seed=1)
    new_records = changed(old_records, 100)
    assert sum(a != b for a, b in zip(old_records, new_records, strict=True)) in range(45, 51)
    old = shard_json(**header_args(), records=old_records)
    new = shard_json(**header_args(), records=new_records)
    return old, new, encode_shard(**header_args(), records=new_records)


def test_make_delta_then_apply_delta_gives_the_new_json() -> None:
    old, new, encoded = shard_pair()
    delta = make_delta(old, new)
    assert apply_delta(old, delta, uncompressed_size=len(new)) == new
    assert hashlib.sha256(new).hexdigest() == encoded.uncompressed_sha256  # what a client checks after
    assert decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == json.loads(new)
    assert make_delta(old, new) == delta  # deterministic
    params = zstandard.get_frame_parameters(delta)
    assert params.content_size == len(new) and params.has_checksum and params.dict_id == 0


def test_delta_of_a_one_percent_change_is_at_most_five_percent_of_the_shard() -> None:
    old, new, encoded = shard_pair()
    delta = make_delta(old, new)
    assert encoded.size > 400_000, encoded.size  # ~5,000 records with random hashes: ~570 KB compressed
    assert len(delta) <= 0.05 * encoded.size, (len(delta), encoded.size)


def test_the_zstd_cli_applies_the_delta(tmp_path: Path) -> None:
    """docs/sharded-index.md: `zstd -d --patch-from=OLD.json DELTA -o NEW.json` gives the new JSON."""
    assert ZSTD_CLI, "the zstd command is needed (clients apply deltas with it)"
    old, new, _ = shard_pair()
    (tmp_path / "old.json").write_bytes(old)
    (tmp_path / "shard.from-old.zst").write_bytes(make_delta(old, new))
    subprocess.run(
        [ZSTD_CLI, "-q", "-d", f"--patch-from={tmp_path / 'old.json'}", str(tmp_path / "shard.from-old.zst"),
         "-o", str(tmp_path / "new.json")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (tmp_path / "new.json").read_bytes() == new
    # and from another base it fails (the frame's checksum), rather than writing other bytes
    (tmp_path / "other.json").write_bytes(old.replace(b"paquet", b"paquez"))
    failed = subprocess.run(
        [ZSTD_CLI, "-q", "-d", f"--patch-from={tmp_path / 'other.json'}", str(tmp_path / "shard.from-old.zst"),
         "-o", str(tmp_path / "bad.json")],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode != 0


def test_small_delta_also_from_an_empty_shard_and_to_one() -> None:
    old = shard_json(**header_args(), records=())
    new = shard_json(**header_args(), records=ORDERED)
    for a, b in ((old, new), (new, old), (new, new)):
        assert apply_delta(a, make_delta(a, b), uncompressed_size=len(b)) == b


def test_make_delta_refuses_shards_above_the_window() -> None:
    big = b" " * (DELTA_MAX_BYTES + 1)
    with pytest.raises(ValueError, match="at most"):
        make_delta(big, b"{}")
    with pytest.raises(ValueError, match="at most"):
        make_delta(b"{}", big)


@functools.cache
def small_pair() -> tuple[bytes, bytes, bytes]:
    old = shard_json(**header_args(), records=synthetic(300))
    new = shard_json(**header_args(), records=changed(synthetic(300), 10))
    return old, new, make_delta(old, new)


def test_apply_delta_refuses_a_wrong_size() -> None:
    old, new, delta = small_pair()
    for size in (len(new) - 1, len(new) + 1, 0):
        with pytest.raises(StorageError, match="declares"):
            apply_delta(old, delta, uncompressed_size=size)
    with pytest.raises(StorageError, match="negative"):
        apply_delta(old, delta, uncompressed_size=-1)
    # a frame that declares no size gives more or less than the pointer says
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    undeclared = zstandard.ZstdCompressor(dict_data=dictionary, write_content_size=False).compress(new)
    assert zstandard.frame_content_size(undeclared) == -1
    assert apply_delta(old, undeclared, uncompressed_size=len(new)) == new
    for size in (len(new) - 1, len(new) + 1):
        with pytest.raises(StorageError, match="^index delta: "):
            apply_delta(old, undeclared, uncompressed_size=size)


DELTA_DAMAGE = {
    "truncated-checksum": lambda d: d[:-3],
    "truncated-frame": lambda d: d[: len(d) // 2],
    "checksum-bit": lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    "body-bit": lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 0x40]) + d[len(d) // 2 + 1 :],
    "not-zstd": lambda d: b"not zstd at all",
    "empty": lambda d: b"",
}


@pytest.mark.parametrize("damage", DELTA_DAMAGE.values(), ids=DELTA_DAMAGE.keys())
def test_apply_delta_refuses_a_corrupt_delta(damage: Any) -> None:
    old, new, delta = small_pair()
    with pytest.raises(StorageError, match="^index[^\n]*$"):
        apply_delta(old, damage(delta), uncompressed_size=len(new))


@pytest.mark.parametrize("damage", [lambda d: d + b"junk", lambda d: d + d], ids=["trailing-junk", "second-frame"])
def test_apply_delta_refuses_data_after_the_frame(damage: Any) -> None:
    old, new, delta = small_pair()
    with pytest.raises(StorageError, match="^index delta: "):
        apply_delta(old, damage(delta), uncompressed_size=len(new))


def test_apply_delta_refuses_a_wrong_base() -> None:
    old, new, delta = small_pair()
    other = shard_json(**header_args(), records=synthetic(300, seed=5))
    for base in (old.replace(b"paquet", b"paquez"), old[1:] + b" ", old[:-100], b"", other, new):
        with pytest.raises(StorageError, match="^index delta: zstd decompression failed"):
            apply_delta(base, delta, uncompressed_size=len(new))


# -- object keys ---------------------------------------------------------------------------------


def test_shard_keys() -> None:
    sha = "0123456789abcdef" + "f" * 48
    old = "fedcba9876543210" + "0" * 48
    assert shard_key(sha) == "index/shards/0123456789abcdef.json.zst"
    assert shard_torrent_key(old) == "index/shards/fedcba9876543210.torrent"
    assert delta_key(sha, old) == "index/shards/0123456789abcdef.from-fedcba9876543210.zst"
    for bad in ("ABC", sha.upper(), sha[:-1], sha + "0", ""):
        with pytest.raises(ValueError):
            shard_key(bad)
        with pytest.raises(ValueError):
            shard_torrent_key(bad)
        with pytest.raises(ValueError):
            delta_key(sha, bad)
        with pytest.raises(ValueError):
            delta_key(bad, sha)


# -- pointer -------------------------------------------------------------------------------------


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def shard_ref(name: str, *, delta: bool = False, size: int = 1234) -> ShardRef:
    sha, torrent_sha = digest(name, "z"), digest(name, "t")
    return ShardRef(
        name=name,
        path=shard_key(sha),
        size=size,
        sha256=sha,
        uncompressed_size=56789,
        uncompressed_sha256=digest(name, "j"),
        packages=42,
        torrent=shard_torrent_key(torrent_sha),
        infohash=digest(name, "i")[:40],
        delta=DeltaRef(digest(name, "old j"), delta_key(sha, digest(name, "old z")), 321, digest(name, "d"))
        if delta
        else None,
    )


SHARD_REFS = (shard_ref(".", delta=True), shard_ref("bookworm/main/all"), shard_ref(SHARD, delta=True))


def pointer(**changes: Any) -> Pointer:
    base = Pointer(
        repo="debian",
        sequence=7,
        generated="2026-03-01T00:00:00Z",
        expires="2026-03-08T00:00:00Z",
        shards=SHARD_REFS,
    )
    return replace(base, **changes)


def test_pointer_encode_decode_round_trip() -> None:
    for value in (pointer(), pointer(shards=()), pointer(shards=SHARD_REFS[1:2], sequence=MAX_SEQUENCE)):
        data = encode_pointer(value)
        assert data.endswith(b"}\n") and data.startswith(b'{\n  "expires"')  # keys sorted, 2-space indent
        doc = json.loads(data)
        assert list(doc) == ["expires", "format", "generated", "repo", "sequence", "shards"]
        assert all(list(shard) == sorted(shard) for shard in doc["shards"])
        assert doc["format"] == "mirrorseed-pointer/3"
        assert decode_pointer(data) == value
        assert encode_pointer(decode_pointer(data)) == data
    doc = json.loads(encode_pointer(pointer()))
    assert [shard["name"] for shard in doc["shards"]] == [".", "bookworm/main/all", SHARD]
    assert doc["shards"][1]["delta"] is None
    assert doc["shards"][0]["delta"] == SHARD_REFS[0].delta.to_json()  # type: ignore[union-attr]
    assert set(doc["shards"][0]["delta"]) == {"from_sha256", "path", "size", "sha256"}
    assert "ü" in encode_pointer(pointer(repo="débü")).decode()  # UTF-8, not \u escapes


def test_a_shard_in_parts_round_trips_and_each_part_is_a_whole_shard_document() -> None:
    parted = (SHARD_REFS[0], replace(SHARD_REFS[0], part=1, path=shard_key(SHA_C), delta=None), *SHARD_REFS[1:])
    value = pointer(shards=parted)
    assert decode_pointer(encode_pointer(value)) == value and not value.outdated
    assert [(s["name"], s["part"]) for s in json.loads(encode_pointer(value))["shards"]] == [
        (".", 0),
        (".", 1),
        ("bookworm/main/all", 0),
        (SHARD, 0),
    ]
    assert parted[1].label == ". part 1" and parted[0].label == "."

    records = tuple(record(f"pool/p{n:04d}.deb", name=f"p{n}", version="1") for n in range(300))
    whole = shard_json(**header_args(), records=records)
    assert list(shard_parts(**header_args(), packages=map(package_json, records))) == [
        (300, whole)
    ]  # fits: one part, the same JSON
    limit = len(whole) // 4
    parts = list(shard_parts(**header_args(), packages=map(package_json, records), max_bytes=limit))
    assert len(parts) >= 4 and sum(count for count, _ in parts) == 300
    assert all(len(text) <= limit for _, text in parts)
    docs = [json.loads(text) for _, text in parts]
    header = {k: v for k, v in json.loads(whole).items() if k != "packages"}
    assert all({k: v for k, v in d.items() if k != "packages"} == header for d in docs)  # each a whole document
    assert header["shard"] == SHARD and header["format"] == INDEX_FORMAT
    assert [p["path"] for d in docs for p in d["packages"]] == [r.path for r in records]  # in order, once each
    assert [count for count, _ in parts] == [len(d["packages"]) for d in docs]
    # a record larger than a part is a part of its own
    big = list(shard_parts(**header_args(), packages=map(package_json, records[:3]), max_bytes=10))
    assert [count for count, _ in big] == [1, 1, 1]
    assert list(shard_parts(**header_args(), packages=())) == [(0, shard_json(**header_args(), records=()))]


def test_a_pointer_of_format_2_is_read_as_outdated_shards_of_part_0() -> None:
    doc = json.loads(encode_pointer(pointer()))
    doc["format"] = UNPARTED_POINTER_FORMAT
    for shard in doc["shards"]:
        del shard["part"]
    value = decode_pointer(json.dumps(doc).encode())
    assert value.outdated and value.shards == SHARD_REFS and all(s.part == 0 for s in value.shards)
    doc["shards"][0]["part"] = 0  # format 2 had no parts
    with pytest.raises(StorageError, match="keys"):
        decode_pointer(json.dumps(doc).encode())
    with pytest.raises(AssertionError, match="read, never written"):
        encode_pointer(value)


def test_pointer_keys_infohashes_and_index_id() -> None:
    value = pointer()
    dot, _all, amd64 = SHARD_REFS
    assert value.keys == (
        dot.path, dot.torrent, dot.delta.path,  # type: ignore[union-attr]
        _all.path, _all.torrent,
        amd64.path, amd64.torrent, amd64.delta.path,  # type: ignore[union-attr]
    )  # fmt: skip
    assert value.infohashes == (dot.infohash, _all.infohash, amd64.infohash)
    assert value.index_id == pointer(sequence=8, expires="2026-04-01T00:00:00Z").index_id  # content, not time
    others = {
        pointer(shards=SHARD_REFS[:2]).index_id,
        pointer(shards=(replace(dot, packages=43), *SHARD_REFS[1:])).index_id,
        pointer(shards=(replace(dot, delta=None), *SHARD_REFS[1:])).index_id,
        pointer(shards=()).index_id,
        Pointer("debian", 7, "2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z", (), legacy_keys=("index/x",)).index_id,
    }
    assert value.index_id not in others and len(others) == 5
    assert re.fullmatch("[0-9a-f]{64}", value.index_id)


def shard_doc(**changes: Any) -> dict[str, Any]:
    return {**shard_ref(SHARD).to_json(), **changes}


def with_shard(index: int, **changes: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["shards"][index].update(changes)

    return mutate


def with_delta(**changes: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["shards"][0]["delta"].update(changes)

    return mutate


REJECTED_POINTERS: dict[str, tuple[Any, str]] = {
    "format-4": (lambda d: d.update(format="mirrorseed-pointer/4"), "format is 'mirrorseed-pointer/4', expected"),
    "format-index": (lambda d: d.update(format="mirrorseed-index/2"), "format is 'mirrorseed-index/2'"),
    "format-missing": (lambda d: d.pop("format"), "format is None"),
    "missing-expires": (lambda d: d.pop("expires"), "missing keys \\['expires'\\]"),
    "missing-shards": (lambda d: d.pop("shards"), "missing keys \\['shards'\\]"),
    "extra": (lambda d: d.update(extra=1), "unexpected keys \\['extra'\\]"),
    "legacy-key": (lambda d: d.update(index={}), "unexpected keys \\['index'\\]"),
    "sequence-str": (lambda d: d.update(sequence="7"), "sequence is not an integer"),
    "sequence-bool": (lambda d: d.update(sequence=True), "sequence is not an integer"),
    "sequence-float": (lambda d: d.update(sequence=7.0), "sequence is not an integer"),
    "sequence-2^53": (lambda d: d.update(sequence=2**53), "2\\^53"),
    "sequence-0": (lambda d: d.update(sequence=0), "2\\^53"),
    "repo-null": (lambda d: d.update(repo=None), "repo is not a string"),
    "expires-offset": (lambda d: d.update(expires="2026-03-08T00:00:00+00:00"), "expires is not"),
    "generated-date": (lambda d: d.update(generated="2026-03-01"), "generated is not"),
    "generated-impossible": (lambda d: d.update(generated="2026-02-30T00:00:00Z"), "day is out of range"),
    "shards-object": (lambda d: d.update(shards={}), "shards is not a list"),
    "shards-null": (lambda d: d.update(shards=None), "shards is not a list"),
    "shard-string": (lambda d: d.update(shards=["x"]), "shards\\[0\\] is not an object"),
    "shard-missing-delta": (lambda d: d["shards"][1].pop("delta"), "shards\\[1\\]: missing keys \\['delta'\\]"),
    "shard-missing-packages": (lambda d: d["shards"][0].pop("packages"), "missing keys \\['packages'\\]"),
    "shard-extra": (with_shard(0, magnet="magnet:?"), "shards\\[0\\]: missing keys \\[\\], unexpected keys"),
    "name-int": (with_shard(0, name=3), "name is not a string"),
    "name-absolute": (with_shard(0, name="/bookworm"), "name is not a shard name"),
    "name-dotdot": (with_shard(0, name="a/../b"), "name is not a shard name"),
    "name-dotdot-only": (with_shard(0, name=".."), "name is not a shard name"),
    "name-dot-segment": (with_shard(0, name="a/./b"), "name is not a shard name"),
    "name-empty": (with_shard(0, name=""), "name is not a shard name"),
    "name-empty-segment": (with_shard(0, name="a//b"), "name is not a shard name"),
    "name-trailing-slash": (with_shard(0, name="a/"), "name is not a shard name"),
    "name-backslash": (with_shard(0, name="a\\b"), "name is not a shard name"),
    "name-control": (with_shard(0, name="a\x01b"), "name is not a shard name"),
    "name-newline": (with_shard(0, name="a\n"), "name is not a shard name"),
    "unsorted": (lambda d: d["shards"].reverse(), "not sorted by name and part, or a part repeats"),
    "duplicate": (lambda d: d["shards"].append(d["shards"][-1]), "not sorted by name and part, or a part repeats"),
    "duplicate-name": (with_shard(1, name="."), "not sorted by name and part, or a part repeats"),
    "part-missing": (lambda d: d["shards"][0].pop("part"), "keys"),
    "part-negative": (with_shard(0, part=-1), "a count is negative"),
    "part-string": (with_shard(0, part="0"), "part"),
    "part-bool": (with_shard(0, part=False), "part"),
    "part-first-1": (with_shard(0, part=1), "shard '.' has part 1 where part 0 belongs"),
    "part-skipped": (with_shard(1, name=".", part=2), "shard '.' has part 2 where part 1 belongs"),
    "sha256-upper": (with_shard(0, sha256=SHA_A.upper()), "a SHA-256 is malformed"),
    "sha256-short": (with_shard(0, sha256=SHA_A[:-1]), "a SHA-256 is malformed"),
    "sha256-newline": (with_shard(0, sha256=SHA_A + "\n"), "a SHA-256 is malformed"),
    "uncompressed-sha256": (with_shard(2, uncompressed_sha256="g" * 64), "shards\\[2\\]: a SHA-256 is malformed"),
    "sha256-int": (with_shard(0, sha256=1), "sha256 is not a string"),
    "infohash": (with_shard(0, infohash="z" * 40), "infohash is not 40 lowercase hex digits"),
    "infohash-long": (with_shard(0, infohash="a" * 41), "infohash is not 40"),
    "size-negative": (with_shard(0, size=-1), "a count is negative"),
    "uncompressed-size-negative": (with_shard(0, uncompressed_size=-1), "a count is negative"),
    "packages-negative": (with_shard(0, packages=-1), "a count is negative"),
    "packages-bool": (with_shard(0, packages=True), "packages is not an integer"),
    "size-float": (with_shard(0, size=1.5), "size is not an integer"),
    "size-str": (with_shard(0, uncompressed_size="1"), "uncompressed_size is not an integer"),
    "path-absolute": (with_shard(0, path="/index/shards/x.json.zst"), "a path is not relative"),
    "path-dotdot": (with_shard(0, path="index/../x"), "a path is not relative"),
    "torrent-dotdot": (with_shard(0, torrent="../index/shards/x.torrent"), "a path is not relative"),
    "torrent-null": (with_shard(0, torrent=None), "torrent is not a string"),
    "delta-string": (with_shard(1, delta="index/shards/x.zst"), "delta is neither null nor an object"),
    "delta-list": (with_shard(1, delta=[]), "delta is neither null nor an object"),
    "delta-empty": (with_shard(1, delta={}), "shards\\[1\\].delta: missing keys"),
    "delta-missing": (lambda d: d["shards"][0]["delta"].pop("sha256"), "delta: missing keys \\['sha256'\\]"),
    "delta-extra": (with_delta(to_sha256=SHA_A), "delta: missing keys \\[\\], unexpected keys \\['to_sha256'\\]"),
    "delta-from-sha256": (with_delta(from_sha256="A" * 64), "shards\\[0\\].delta: a SHA-256, the path or the size"),
    "delta-sha256": (with_delta(sha256="a" * 63), "delta: a SHA-256, the path or the size"),
    "delta-path": (with_delta(path="/index/shards/x.zst"), "delta: a SHA-256, the path or the size"),
    "delta-path-dotdot": (with_delta(path="index/shards/../../x.zst"), "delta: a SHA-256, the path or the size"),
    "delta-size-negative": (with_delta(size=-1), "delta: a SHA-256, the path or the size"),
    "delta-size-str": (with_delta(size="321"), "delta: size is not an integer"),
    "delta-size-bool": (with_delta(size=False), "delta: size is not an integer"),
    "delta-path-null": (with_delta(path=None), "delta: path is not a string"),
}


@pytest.mark.parametrize(("mutate", "message"), REJECTED_POINTERS.values(), ids=REJECTED_POINTERS.keys())
def test_decode_pointer_refuses_invalid(mutate: Any, message: str) -> None:
    doc = pointer().to_json()
    mutate(doc)
    with pytest.raises(StorageError, match=f"^latest.asc[^\n]*{message}"):
        decode_pointer(json.dumps(doc).encode())


def test_decode_pointer_refuses_non_json() -> None:
    for data in (b"\xff\xfe", b"[1, 2]", b"not json", b"", b'"mirrorseed-pointer/2"', b"null"):
        with pytest.raises(StorageError, match="^latest.asc"):
            decode_pointer(data)


@pytest.mark.parametrize(
    ("replace_text", "message"),
    [
        (('"sequence": 7', '"sequence": NaN'), "NaN is not a JSON number"),
        (('"sequence": 7', '"sequence": Infinity'), "Infinity is not a JSON number"),
        (('"size": 1234', '"size": -Infinity'), "-Infinity is not a JSON number"),
        (('"sequence": 7', '"sequence": 7, "sequence": 8'), "duplicate key 'sequence'"),
        (('"size": 1234', '"size": 1234, "size": 1235'), "duplicate key 'size'"),
        (('"size": 321', '"size": 321, "size": 1'), "duplicate key 'size'"),  # in a delta
        (('"repo": "', '"repo": "\\ud800'), "lone surrogate"),
        (('"name": "', '"name": "\\udfff'), "lone surrogate"),
    ],
)
def test_decode_pointer_refuses_non_strict_json(replace_text: tuple[str, str], message: str) -> None:
    text = encode_pointer(pointer(sequence=7)).decode()
    assert replace_text[0] in text
    with pytest.raises(StorageError, match=f"^latest.asc: the payload: not strict JSON: {message}") as caught:
        decode_pointer(text.replace(*replace_text, 1).encode())
    assert "\n" not in str(caught.value)


def test_decode_pointer_refuses_utf16_json() -> None:
    """json.loads(bytes) would guess UTF-16; a pointer is UTF-8."""
    with pytest.raises(StorageError, match="^latest.asc: the payload: not UTF-8"):
        decode_pointer(encode_pointer(pointer()).decode().encode("utf-16"))


LEGACY_INDEX = f"index/7-{SHA_A[:12]}/index.json.zst"
LEGACY_TORRENT = f"index/7-{SHA_A[:12]}.torrent"


def legacy_pointer(**changes: Any) -> dict[str, Any]:
    """A pointer payload of format 1, as earlier versions signed it."""
    doc: dict[str, Any] = {
        "format": "mirrorseed-pointer/1",
        "repo": "debian",
        "sequence": 7,
        "generated": "2026-03-01T00:00:00Z",
        "expires": "2026-03-08T00:00:00Z",
        "index": {"path": LEGACY_INDEX, "size": 1234, "uncompressed_size": 56789, "sha256": SHA_A},
        "index_torrent": LEGACY_TORRENT,
        "infohash": IH,
        "magnet": f"magnet:?xt=urn:btih:{IH}&dn=7-aaaaaaaaaaaa",
    }
    doc.update(changes)
    return doc


def test_legacy_pointer_decodes_into_legacy_keys() -> None:
    value = decode_pointer(json.dumps(legacy_pointer(), indent=2, sort_keys=True).encode())
    assert value == Pointer(
        "debian", 7, "2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z", (),
        legacy_keys=(LEGACY_INDEX, LEGACY_INDEX + ".sig", LEGACY_TORRENT), outdated=True,
    )  # fmt: skip
    assert value.shards == () and value.infohashes == ()
    assert value.keys == (LEGACY_INDEX, LEGACY_INDEX + ".sig", LEGACY_TORRENT)  # retention keeps them
    assert value.index_id != pointer(shards=()).index_id
    with pytest.raises(AssertionError, match="read, never written"):
        encode_pointer(value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("magnet"), "missing keys \\['magnet'\\]"),
        (lambda d: d.update(shards=[]), "unexpected keys \\['shards'\\]"),
        (lambda d: d.update(index="index/x.json.zst"), "'index' is not an object"),
        (lambda d: d["index"].pop("uncompressed_size"), "index: missing keys \\['uncompressed_size'\\]"),
        (lambda d: d["index"].update(extra=1), "index: missing keys \\[\\], unexpected keys \\['extra'\\]"),
        (lambda d: d["index"].update(path="/abs/index.json.zst"), "not relative"),
        (lambda d: d["index"].update(path="index/../x"), "not relative"),
        (lambda d: d.update(index_torrent="../x.torrent"), "not relative"),
        (lambda d: d["index"].update(size="1234"), "size is not an integer"),
        (lambda d: d.update(repo=7), "repo is not a string"),
        (lambda d: d.update(sequence=0), "2\\^53"),
        (lambda d: d.update(expires="tomorrow"), "expires is not"),
    ],
)
def test_legacy_pointer_refuses_invalid(mutate: Any, message: str) -> None:
    doc = legacy_pointer()
    mutate(doc)
    with pytest.raises(StorageError, match=f"^latest.asc[^\n]*{message}"):
        decode_pointer(json.dumps(doc).encode())


def test_a_client_follows_the_pointer_to_a_shard_by_its_delta() -> None:
    """docs/sharded-index.md, what a client does: the pointer's sizes and hashes check the delta, the JSON it
    gives and the shard's header."""
    old_json, new_json, encoded = shard_pair()
    delta = make_delta(old_json, new_json)
    old_sha = hashlib.sha256(old_json).hexdigest()
    ref = ShardRef(
        SHARD, shard_key(encoded.sha256), encoded.size, encoded.sha256, encoded.uncompressed_size,
        encoded.uncompressed_sha256, 5000, shard_torrent_key(SHA_C), IH,
        DeltaRef(old_sha, delta_key(encoded.sha256, SHA_B), len(delta), hashlib.sha256(delta).hexdigest()),
    )  # fmt: skip
    (got,) = decode_pointer(encode_pointer(pointer(shards=(ref,)))).shards
    assert got.delta is not None and got.delta.from_sha256 == old_sha
    assert hashlib.sha256(delta).hexdigest() == got.delta.sha256 and len(delta) == got.delta.size
    text = apply_delta(old_json, delta, uncompressed_size=got.uncompressed_size)
    assert hashlib.sha256(text).hexdigest() == got.uncompressed_sha256
    doc = json.loads(text)
    assert (doc["format"], doc["repo"], doc["shard"], len(doc["packages"])) == (INDEX_FORMAT, "debian", SHARD, 5000)
    # the same JSON as fetching the whole shard
    assert decompress_index(encoded.data, uncompressed_size=got.uncompressed_size) == text


# -- JSON Schemas --------------------------------------------------------------------------------


def test_pointer_schema_accepts_the_pointer_payload() -> None:
    v = validator("pointer.schema.json")
    for value in (pointer(), pointer(shards=()), pointer(sequence=MAX_SEQUENCE, shards=SHARD_REFS[:1])):
        assert not list(v.iter_errors(json.loads(encode_pointer(value))))


def test_pointer_schemas_tell_the_formats_apart() -> None:
    assert list(validator("pointer.schema.json").iter_errors(legacy_pointer()))
    unparted = json.loads(encode_pointer(pointer()))
    unparted["format"] = UNPARTED_POINTER_FORMAT
    for shard in unparted["shards"]:
        del shard["part"]
    assert not list(validator("pointer-2.schema.json").iter_errors(unparted))
    assert list(validator("pointer.schema.json").iter_errors(unparted))
    assert list(validator("pointer-2.schema.json").iter_errors(pointer().to_json()))
    assert not list(validator("pointer-1.schema.json").iter_errors(legacy_pointer()))
    assert list(validator("pointer-1.schema.json").iter_errors(pointer().to_json()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("shards"),
        lambda d: d.update(index={}),
        lambda d: d.update(format="mirrorseed-pointer/1"),
        lambda d: d.update(sequence=2**53),
        lambda d: d.update(sequence=1.5),
        lambda d: d.update(expires="2026-03-08"),
        lambda d: d.update(shards={}),
        lambda d: d["shards"][0].pop("delta"),
        lambda d: d["shards"][0].update(extra=True),
        lambda d: d["shards"][0].update(name="/bookworm"),
        lambda d: d["shards"][0].update(name="a/../b"),
        lambda d: d["shards"][0].update(name=""),
        lambda d: d["shards"][0].update(sha256="g" * 64),
        lambda d: d["shards"][0].update(uncompressed_sha256="a" * 64 + "\n"),
        lambda d: d["shards"][0].update(infohash="a" * 39),
        lambda d: d["shards"][0].update(packages=-1),
        lambda d: d["shards"][0].update(path="index/7-aaaaaaaaaaaa/index.json.zst"),
        lambda d: d["shards"][0].update(torrent="../index/shards/0123456789abcdef.torrent"),
        lambda d: d["shards"][0].update(delta="x"),
        lambda d: d["shards"][0]["delta"].pop("from_sha256"),
        lambda d: d["shards"][0]["delta"].update(path="index/shards/0123456789abcdef.zst"),
        lambda d: d["shards"][0]["delta"].update(size=-1),
        lambda d: d["shards"].append(d["shards"][0]),
    ],
)
def test_pointer_schema_rejects(mutate: Any) -> None:
    doc = pointer().to_json()
    assert not list(validator("pointer.schema.json").iter_errors(doc))
    mutate(doc)
    assert list(validator("pointer.schema.json").iter_errors(doc))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_index_schema_accepts_every_shard_shape(shape: dict[str, Any]) -> None:
    encoded = encode_document(document(**shape))
    doc = decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size)
    assert not list(validator("index.schema.json").iter_errors(doc))


def test_index_schemas_tell_the_formats_apart() -> None:
    assert list(validator("index.schema.json").iter_errors(legacy_document()))
    assert not list(validator("index-1.schema.json").iter_errors(legacy_document()))
    assert list(validator("index-1.schema.json").iter_errors(document()))


def _package_doc(**changes: Any) -> dict[str, Any]:
    doc = document()
    doc["packages"][0].update(changes)
    return doc


@pytest.mark.parametrize(
    "bad",
    [
        lambda: {k: v for k, v in document().items() if k != "trackers"},
        lambda: {k: v for k, v in document().items() if k != "shard"},
        lambda: {**document(), "extra": 1},
        lambda: {**document(), "sequence": 3},
        lambda: {**document(), "generated": "2026-03-01T12:00:00Z"},
        lambda: {**document(), "format": "mirrorseed-index/1"},
        lambda: {**document(), "shard": "/bookworm/main/amd64"},
        lambda: {**document(), "shard": "bookworm/../main"},
        lambda: {**document(), "shard": ""},
        lambda: {**document(), "shard": "bookworm/main/amd64\n"},
        lambda: {**document(), "dht_nodes": []},
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
    assert not list(validator("index.schema.json").iter_errors(doc))
    zero["infohash"] = IH
    assert list(validator("index.schema.json").iter_errors(doc))


@pytest.mark.parametrize("seed", range(3))
def test_package_json_is_the_canonical_json_of_the_record(seed: int) -> None:
    """Written field by field, it gives json.dumps's bytes (sorted keys, no spaces, UTF-8 kept) for every
    combination of the optional fields and for strings JSON must escape."""
    rng = random.Random(seed)
    texts = ["a", "ü", 'q"uote', "back\\slash", "tab\tnew\nline", "\x00\x1f\x7f", "\u2028", "😀", "</script>"]
    for _ in range(300):

        def maybe(value: Any) -> Any:
            return value if rng.random() < 0.6 else None

        word = rng.choice(texts)
        empty = rng.random() < 0.2
        record = PackageRecord(
            path=f"pool/{word}/{rng.choice(texts)}.deb",
            size=0 if empty else rng.randrange(1, 10**13),
            sha256=f"{rng.getrandbits(256):064x}",
            infohash=None if empty else f"{rng.getrandbits(160):040x}",
            piece_size=None if empty else 1 << rng.randrange(14, 25),
            torrent=None if empty else f"torrents/{word}.torrent",
            metalink=f"metalinks/{word}.meta4",
            magnet=None if empty else f"magnet:?xt=urn:btih:{word}",
            name=maybe(rng.choice(texts)),
            version=maybe(rng.choice(texts)),
            arch=maybe(rng.choice(texts)),
            signature=maybe(SignatureRef(f"{word}.sig", rng.randrange(0, 10**4), f"{rng.getrandbits(256):064x}")),
            description=maybe(rng.choice(texts)),
        )
        expected = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert package_json(record) == expected
