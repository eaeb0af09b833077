"""pipeline.index: index document, zstd encode/decode (bombs), keys, pointer payload, JSON Schemas."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zstandard

from pipeline.errors import SnapshotError, StorageError
from pipeline.index import (
    MAX_SEQUENCE,
    ZSTD_LEVEL,
    EncodedIndex,
    decode_index,
    decode_pointer,
    encode_index,
    encode_index_stream,
    encode_pointer,
    index_document,
    iter_index,
    parse_rfc3339,
    rfc3339,
)
from pipeline.model import IndexRef, PackageRecord, Pointer, SignatureRef
from pipeline.objects import index_key, index_torrent_key

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
    return index_document(**stream_args(**changes))


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


# -- streaming encode and read -------------------------------------------------------------------


@functools.cache
def synthetic(count: int) -> tuple[PackageRecord, ...]:
    """`count` records sorted by path, ~650 bytes of JSON each, of every shape: non-ASCII (also beyond
    Latin-1) names, signatures, zero-length files, name/version/arch present, partly or wholly absent."""
    rng = random.Random(count)
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
    "3000": {"packages": synthetic(3000)},
    "6000-above-the-zstd-window": {"packages": synthetic(6000), "trackers": []},
    "dht-nodes": {"dht_nodes": ["router.example.org:6881", "[2001:db8::1]:6881", "router.example.org:6881"]},
}


def stream_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "repo": "debian",
        "sequence": 3,
        "generated": NOW,
        "webseeds": ["https://deb.example.org/debian/", "http://mirror.example.net/debian/"],
        "trackers": ["udp://tracker.example.org:6969/announce"],
        "packages": RECORDS,
    }
    args.update(changes)
    return args


def header_args(**changes: Any) -> dict[str, Any]:
    """stream_args() without the packages: the keyword arguments encode_index_stream takes besides records."""
    return {key: value for key, value in stream_args(**changes).items() if key != "packages"}


def encode_streamed(args: dict[str, Any], *, as_callable: bool = False) -> EncodedIndex:
    records = tuple(sorted(args["packages"], key=lambda r: r.path))
    other = {key: value for key, value in args.items() if key != "packages"}
    return encode_index_stream(**other, records=(lambda: iter(records)) if as_callable else records)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_encode_index_stream_is_byte_identical_to_encode_index(shape: dict[str, Any]) -> None:
    args = stream_args(**shape)
    doc = index_document(**args)
    expected = encode_index(doc)
    for as_callable in (False, True):
        streamed = encode_streamed(args, as_callable=as_callable)
        assert streamed == expected  # data, sha256, size, uncompressed_size
        assert streamed.sha256 == hashlib.sha256(streamed.data).hexdigest()
    raw = zstandard.ZstdDecompressor().decompress(expected.data)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert zstandard.frame_content_size(expected.data) == len(raw) == expected.uncompressed_size
    assert zstandard.get_frame_parameters(expected.data).has_checksum


def test_encode_index_bytes_do_not_depend_on_how_the_json_is_chunked() -> None:
    """The canonical frame is zstd's streaming output with the size pledged, whatever the chunking."""
    encoded = encode_index(index_document(**stream_args(packages=synthetic(6000))))
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


def test_encode_index_stream_refuses_unsorted_repeated_and_one_shot_records() -> None:
    ordered = sorted(RECORDS, key=lambda r: r.path)
    with pytest.raises(SnapshotError, match="pool/main/z/zz/zz_1.0_all.deb: listed twice"):
        encode_index_stream(**header_args(), records=[*ordered, ordered[-1]])
    with pytest.raises(SnapshotError, match=f"{ordered[0].path}: comes after {ordered[1].path}"):
        encode_index_stream(**header_args(), records=[ordered[1], ordered[0]])
    with pytest.raises(TypeError, match="read twice"):
        encode_index_stream(**header_args(), records=iter(ordered))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2\\^53"):
        encode_index_stream(**header_args(sequence=0), records=ordered)


def test_encode_index_stream_refuses_records_that_change_between_passes() -> None:
    ordered = sorted(RECORDS, key=lambda r: r.path)
    passes = iter([ordered, ordered[:-1]])
    with pytest.raises(ValueError, match="second pass"):
        encode_index_stream(**header_args(), records=lambda: next(passes))
    passes = iter([ordered[:-1], ordered])
    with pytest.raises(ValueError, match="second pass"):
        encode_index_stream(**header_args(), records=lambda: next(passes))


def read_all(data: bytes, size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reader = iter_index(data, uncompressed_size=size)
    packages = list(reader.packages())
    return packages, reader.header


def frame(raw: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size, write_checksum=True).compress(raw)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_iter_index_round_trip_equals_decode_index(shape: dict[str, Any]) -> None:
    encoded = encode_index(index_document(**stream_args(**shape)))
    doc = decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size)
    packages, header = read_all(encoded.data, encoded.uncompressed_size)
    assert {**header, "packages": packages} == doc
    nodes = ["dht_nodes"] if shape.get("dht_nodes") else []  # written only when there are nodes
    assert list(header) == [*nodes, "format", "generated", "repo", "sequence", "trackers", "webseeds"]
    assert header.get("dht_nodes", []) == list(dict.fromkeys(shape.get("dht_nodes", [])))
    assert [PackageRecord.from_json(p) for p in packages] == sorted(
        shape.get("packages", RECORDS), key=lambda r: r.path
    )


def test_iter_index_header_only_after_the_packages_and_one_pass_only() -> None:
    encoded = encode_index(document())
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
    assert reader.header["sequence"] == 3
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
    "sequence": 9007199254740991,
    "repo": "débian 😀",
    "generated": "2026-03-01T12:00:00Z",
    "format": "mirrorseed-index/1",
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
    encoded = encode_index(document())
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
    raw = json.dumps(index_document(**stream_args())).encode()
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
    encoded = encode_index(index_document(**stream_args(packages=synthetic(3000))))
    reader = iter_index(damage(encoded.data), uncompressed_size=encoded.uncompressed_size)
    packages = reader.packages()
    assert next(packages)["path"] == synthetic(3000)[0].path  # the damage is only found later
    with pytest.raises(StorageError, match="^index: [^\n]*$"):
        list(packages)
    with pytest.raises(RuntimeError):
        _ = reader.header


def canonical_text(**changes: Any) -> str:
    doc = index_document(**stream_args())
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


MALFORMED: dict[str, tuple[Any, str]] = {
    "top-level-array": (lambda: "[]", "expected a JSON object at character 0, found '\\['"),
    "empty": (lambda: "", "ends where a JSON object was expected"),
    "format-2": (lambda: canonical_text(format="mirrorseed-index/2"), "format is 'mirrorseed-index/2', expected"),
    "format-number": (lambda: canonical_text(format=1), "format is 1"),
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
    "missing-sequence": (lambda: canonical_text().replace('"sequence":3,', ""), "missing keys \\['sequence'\\]"),
    "missing-packages": (
        lambda: json.dumps({k: v for k, v in json.loads(canonical_text()).items() if k != "packages"}),
        "missing keys \\['packages'\\]",
    ),
    "header-types": (
        lambda: canonical_text(sequence="3", webseeds=[1]),
        "sequence is not an integer; webseeds is not a list of strings",
    ),
    "sequence-bool": (lambda: canonical_text(sequence=True), "sequence is not an integer"),
    "repo-null": (lambda: canonical_text(repo=None), "repo is not a string"),
    "bad-literal": (lambda: canonical_text().replace('"size":1000', '"size":tru', 1), "not valid JSON"),
    "bad-number": (lambda: canonical_text().replace('"size":1000', '"size":1000x', 1), "not valid JSON"),
    "bad-top-number": (lambda: canonical_text().replace('"sequence":3', '"sequence":3x'), "expected ',' or '}'"),
    "double-comma": (lambda: canonical_text().replace(',"magnet":', ',,"magnet":', 1), "not valid JSON"),
    "control-char": (lambda: canonical_text(repo="deb\tian").replace("\\t", "\t"), "Invalid control character"),
    "5000-digits": (lambda: canonical_text().replace('"sequence":3', '"sequence":' + "9" * 5000), "not valid JSON"),
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
    raw = canonical_text(format="mirrorseed-index/2").encode()
    packages = iter_index(frame(raw), uncompressed_size=len(raw)).packages()
    with pytest.raises(StorageError, match="mirrorseed-index/2"):
        next(packages)


def test_iter_index_memory_stays_bounded() -> None:
    """~20,000 packages (~13 MB of JSON): reading them one by one peaks far below the JSON's size;
    decode_index (json.loads of the whole text) holds at least the text itself."""
    records = synthetic(20_000)
    encoded = encode_index_stream(**header_args(), records=records)
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


def test_encode_index_stream_memory_stays_below_the_json() -> None:
    """Only compressed bytes accumulate: the peak stays well below the JSON's size."""
    records = synthetic(20_000)
    tracemalloc.start()
    try:
        encoded = encode_index_stream(**header_args(), records=records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < encoded.uncompressed_size / 3, (peak, encoded.size, encoded.uncompressed_size)


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


# -- strict JSON: no NaN/Infinity, no repeated key, no lone surrogate in any document read -------------

NON_STRICT_INDEX: dict[str, tuple[Any, str]] = {
    "nan-size": (lambda t: t.replace('"size":1000', '"size":NaN', 1), "NaN is not a JSON number"),
    "infinity-size": (lambda t: t.replace('"size":1000', '"size":Infinity', 1), "Infinity is not a JSON number"),
    "minus-infinity-size": (lambda t: t.replace('"size":1000', '"size":-Infinity', 1), "-Infinity is not"),
    "nan-sequence": (lambda t: t.replace('"sequence":3', '"sequence":NaN', 1), "NaN is not a JSON number"),
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
    encoded = encode_index(index_document(**stream_args()))
    assert decode_index(encoded.data, uncompressed_size=encoded.uncompressed_size) == json.loads(
        zstandard.ZstdDecompressor().decompress(encoded.data)
    )


@pytest.mark.parametrize(
    ("replace_text", "message"),
    [
        (('"sequence": 7', '"sequence": NaN'), "NaN is not a JSON number"),
        (('"sequence": 7', '"sequence": Infinity'), "Infinity is not a JSON number"),
        (('"size": 1234', '"size": -Infinity'), "-Infinity is not a JSON number"),
        (('"sequence": 7', '"sequence": 7, "sequence": 8'), "duplicate key 'sequence'"),
        (('"size": 1234', '"size": 1234, "size": 1235'), "duplicate key 'size'"),
        (('"repo": "', '"repo": "\\ud800'), "lone surrogate"),
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
