from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import torf

from pipeline import bencode
from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable, KnownDigests
from pipeline.hashing import hash_files, piece_size_for
from pipeline.model import Artifact, FileEntry, HashedFile, SignatureRef
from pipeline.objects import metalink_key, package_of, shard_key, shard_torrent_key, torrent_key
from pipeline.state import CachedFile
from pipeline.torrents import (
    BuildSpec,
    PackageRecords,
    _announce_prefix,
    _package_torrent,
    build_metalink,
    build_packages,
    build_torrent,
    digest_of,
    hash_pieces_of_bytes,
    infohash_for,
    iter_package_artifacts,
    nodes_item,
    package_records,
)
from pipeline.urls import join_url, quote_value, webseed_dir_url

NS = "{urn:ietf:params:xml:ns:metalink}"
AWKWARD = {
    "pool/main/g/gcc-12/libstdc++6_12.2.0-14_amd64.deb": "libstdc%2B%2B6_12.2.0-14_amd64.deb",
    "pool/main/f/foo/foo_1:2.0~rc1-1_amd64.deb": "foo_1%3A2.0~rc1-1_amd64.deb",
    "pool/main/b/bar/bar baz_1.0_all.deb": "bar%20baz_1.0_all.deb",
    "pool/main/u/ünïcode/ünïcode_1.0_all.deb": "%C3%BCn%C3%AFcode_1.0_all.deb",
}
SPEC = BuildSpec(
    webseeds=("http://mirror-a.example/debian", "https://mirror-b.example/deb/"),
    trackers=("http://tracker.example:6969/announce", "udp://tracker2.example:1337/announce"),
    public_url="https://seed.example/pub",
)


def write(
    root: Path, rel: str, data: bytes, name: str | None = None, version: str | None = None, arch: str | None = None
) -> FileEntry:
    source = root / "mirror" / rel
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    st = source.stat()
    return FileEntry(
        path=rel, source=source, size=st.st_size, mtime_ns=st.st_mtime_ns, name=name, version=version, arch=arch
    )


@pytest.fixture
def hashed(tmp_path: Path) -> tuple[HashedFile, ...]:
    rng = random.Random(5)
    entries = [write(tmp_path, path, rng.randbytes(rng.randrange(1, 200_000))) for path in AWKWARD]
    entries.append(write(tmp_path, "pool/main/e/empty/empty_1_all.deb", b""))
    entries.append(write(tmp_path, "pool/main/h/hello/hello_2.10-3_amd64.deb", rng.randbytes(17 * 2**20)))
    return hash_files(entries, workers=1)


def decode(data: bytes) -> torf.Torrent:
    return torf.Torrent.read_stream(io.BytesIO(data))


def by_key(artifacts: tuple[Artifact, ...]) -> dict[str, bytes]:
    return {a.key: a.data for a in artifacts}


def test_deterministic(hashed: tuple[HashedFile, ...]) -> None:
    one = build_packages(hashed, SPEC)
    two = build_packages(tuple(reversed(hashed)), SPEC)
    assert one == two
    assert [a.data for a in one.artifacts] == [a.data for a in two.artifacts]


def test_records_in_path_order_and_artifacts(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    paths = [r.path for r in built.records]
    assert paths == sorted(h.entry.path for h in hashed)
    keys = [a.key for a in built.artifacts]
    expected: list[str] = []
    for r in built.records:
        if r.torrent is not None:
            expected.append(f"torrents/{r.path}.torrent")
        expected.append(f"metalinks/{r.path}.meta4")
    assert keys == expected
    for a in built.artifacts:
        if a.key.endswith(".torrent"):
            assert (a.content_type, a.cache_control) == ("application/x-bittorrent", "public, max-age=300")
        else:
            assert (a.content_type, a.cache_control) == ("application/metalink4+xml", "public, max-age=300")


def test_torrent_fields(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    data = by_key(built.artifacts)
    for record in built.records:
        if record.size == 0:
            continue
        assert record.torrent is not None
        raw = data[record.torrent]
        assert b"10:created by10:mirrorseed" in raw
        assert b"creation date" not in raw
        t = decode(raw)
        assert t.metainfo["created by"] == "mirrorseed"
        name = record.path.rpartition("/")[2]
        assert t.metainfo["info"]["name"] == name
        assert t.metainfo["info"]["length"] == record.size
        assert t.metainfo["info"]["piece length"] == record.piece_size == piece_size_for(record.size)
        assert t.infohash == record.infohash
        assert t.metainfo["announce"] == SPEC.trackers[0]
        assert t.metainfo["announce-list"] == [[SPEC.trackers[0]], [SPEC.trackers[1]]]
        assert t.metainfo["url-list"] == [webseed_dir_url(base, record.path) for base in SPEC.webseeds]


def test_url_list_directory_form_and_encoding(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    data = by_key(built.artifacts)
    records = {r.path: r for r in built.records}
    expected_dirs = {
        "pool/main/g/gcc-12/libstdc++6_12.2.0-14_amd64.deb": "pool/main/g/gcc-12/",
        "pool/main/f/foo/foo_1:2.0~rc1-1_amd64.deb": "pool/main/f/foo/",
        "pool/main/b/bar/bar baz_1.0_all.deb": "pool/main/b/bar/",
        "pool/main/u/ünïcode/ünïcode_1.0_all.deb": "pool/main/u/%C3%BCn%C3%AFcode/",
    }
    for path, encoded_name in AWKWARD.items():
        record = records[path]
        assert record.torrent is not None
        urls = decode(data[record.torrent]).metainfo["url-list"]
        assert urls == [
            "http://mirror-a.example/debian/" + expected_dirs[path],
            "https://mirror-b.example/deb/" + expected_dirs[path],
        ]
        for url in urls:
            assert url.endswith("/") and " " not in url and "+" not in url
        # the client appends the percent-encoded name; the metalink carries the full URL
        meta = ET.fromstring(data[record.metalink])
        meta_urls = [u.text for u in meta.iter(NS + "url")]
        assert meta_urls == [u + encoded_name for u in urls]
        assert record.magnet is not None and " " not in record.magnet


def test_infohash_and_bytes_equal_torf_hashing_the_file(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    data = by_key(built.artifacts)
    for item, record in zip(sorted(hashed, key=lambda h: h.entry.path), built.records, strict=True):
        if record.size == 0:
            continue
        reference = torf.Torrent(
            path=item.entry.source,
            piece_size=piece_size_for(record.size),
            trackers=list(SPEC.trackers),
            webseeds=[webseed_dir_url(base, record.path) for base in SPEC.webseeds],
            created_by="mirrorseed",
        )
        assert reference.generate(threads=1)
        assert reference.infohash == record.infohash
        assert record.torrent is not None
        assert reference.dump() == data[record.torrent]


@pytest.mark.parametrize(
    ("trackers", "webseeds"),
    [
        ((), ()),
        (("http://t.example/announce",), ()),
        ((), ("http://m.example/a/",)),
        (
            ("http://t1.example/ann", "udp://t2.example:80", "http://t1.example/ann"),
            ("http://m.example/a/", "https://n.example/b%20c/", "http://m.example/a/"),
        ),
        (("https://t.example/announce?passkey=x&y=%2B",), ("http://[::1]:8080/x/",)),
    ],
)
@pytest.mark.parametrize(
    ("name", "length"),
    [("a", 1), ("hello_2.10-3_amd64.deb", 16384), ("ünïcode +~:.deb", 16385), ("big.deb", 17 * 2**20 + 5)],
)
def test_fast_encoder_equals_torf(name: str, length: int, trackers: tuple[str, ...], webseeds: tuple[str, ...]) -> None:
    piece = piece_size_for(length)
    rng = random.Random(length)
    pieces = rng.randbytes(20 * -(-length // piece))
    fast = _package_torrent(
        prefix=_announce_prefix(trackers),
        name=name,
        length=length,
        piece_size=piece,
        pieces=pieces,
        url_list=list(dict.fromkeys(webseeds)),
    )
    reference = build_torrent(
        name=name,
        files=None,
        length=length,
        piece_size=piece,
        pieces=pieces,
        webseeds=webseeds,
        trackers=trackers,
    )
    assert fast == reference


def test_fast_encoder_checks_pieces() -> None:
    with pytest.raises(ValueError):
        _package_torrent(prefix=b"", name="x", length=20000, piece_size=16384, pieces=b"\0" * 20, url_list=())


def test_metalink(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    data = by_key(built.artifacts)
    items = {h.entry.path: h for h in hashed}
    for record in built.records:
        raw = data[record.metalink]
        assert raw.startswith(
            b'<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
        )
        assert b"published" not in raw and b"generator" not in raw
        root = ET.fromstring(raw)
        assert root.tag == NS + "metalink"
        files = root.findall(NS + "file")
        assert len(files) == 1
        f = files[0]
        assert f.get("name") == record.path.rpartition("/")[2]
        assert f.findtext(NS + "size") == str(record.size)
        hashes = f.findall(NS + "hash")
        assert [(h.get("type"), h.text) for h in hashes] == [("sha-256", record.sha256)]
        urls = f.findall(NS + "url")
        assert [u.get("priority") for u in urls] == ["1", "2"]
        assert urls[0].text is not None and urls[0].text.startswith("http://mirror-a.example/debian/pool/main/")
        pieces = f.find(NS + "pieces")
        metaurl = f.find(NS + "metaurl")
        if record.size == 0:
            assert pieces is None and metaurl is None
            continue
        assert pieces is not None and metaurl is not None
        assert pieces.get("type") == "sha-1" and pieces.get("length") == str(record.piece_size)
        joined = bytes.fromhex("".join(h.text or "" for h in pieces.findall(NS + "hash")))
        assert joined == items[record.path].pieces
        assert metaurl.get("mediatype") == "torrent"
        assert record.torrent is not None
        assert metaurl.text == join_url(SPEC.public_url, record.torrent)


def test_zero_length_record(hashed: tuple[HashedFile, ...]) -> None:
    built = build_packages(hashed, SPEC)
    record = next(r for r in built.records if r.size == 0)
    assert (record.infohash, record.piece_size, record.torrent, record.magnet) == (None, None, None, None)
    assert record.sha256 == hashlib.sha256(b"").hexdigest()
    assert record.metalink == "metalinks/pool/main/e/empty/empty_1_all.deb.meta4"
    assert not any(a.key.startswith("torrents/pool/main/e/empty/") for a in built.artifacts)


def test_record_fields_and_magnet(tmp_path: Path) -> None:
    sig = SignatureRef("pool/x/hello.deb.sig", 3, "ab" * 32)
    entry = write(tmp_path, "pool/x/hello+1.deb", b"hello world", name="hello", version="1.0", arch="amd64")
    entry = dataclasses.replace(entry, description="says hello", signature=sig)
    built = build_packages(hash_files([entry]), SPEC)
    (record,) = built.records
    assert (record.name, record.version, record.arch, record.description, record.signature) == (
        "hello",
        "1.0",
        "amd64",
        "says hello",
        sig,
    )
    assert record.torrent == "torrents/pool/x/hello+1.deb.torrent"
    assert record.infohash is not None and len(record.infohash) == 40
    assert record.magnet is not None
    query = parse_qs(urlsplit(record.magnet).query)
    assert query["xt"] == [f"urn:btih:{record.infohash}"]
    assert query["dn"] == ["hello+1.deb"]
    assert "dn=hello%2B1.deb" in record.magnet
    assert query["xl"] == ["11"]
    assert query["tr"] == list(SPEC.trackers)
    assert query["ws"] == ["http://mirror-a.example/debian/pool/x/", "https://mirror-b.example/deb/pool/x/"]
    assert query["xs"] == ["https://seed.example/pub/torrents/pool/x/hello%2B1.deb.torrent"]


def test_no_trackers_no_webseeds(tmp_path: Path) -> None:
    entry = write(tmp_path, "a/b.deb", b"data")
    built = build_packages(hash_files([entry]), BuildSpec(webseeds=(), trackers=(), public_url="http://p.example"))
    raw = built.artifacts[0].data
    assert b"announce" not in raw and b"url-list" not in raw
    t = decode(raw)
    assert t.infohash == built.records[0].infohash


@pytest.mark.parametrize(
    "spec",
    [
        BuildSpec(webseeds=("http://mirror.example/with space",), trackers=(), public_url="http://p.example"),
        BuildSpec(webseeds=("mirror.example/debian",), trackers=(), public_url="http://p.example"),
        BuildSpec(webseeds=(), trackers=("http://t.example:99999/announce",), public_url="http://p.example"),
        BuildSpec(webseeds=(), trackers=(), public_url="/local/path"),
        BuildSpec(webseeds=("https://bucket.example/debian?X-Amz-Signature=1",), trackers=(), public_url="http://p"),
        BuildSpec(webseeds=(), trackers=(), public_url="http://p.example/pub#frag"),
    ],
)
def test_bad_urls_refused(tmp_path: Path, spec: BuildSpec) -> None:
    entry = write(tmp_path, "a/b.deb", b"data")
    with pytest.raises(ConfigError):
        build_packages(hash_files([entry]), spec)


def test_duplicate_path_refused(tmp_path: Path) -> None:
    entry = write(tmp_path, "a/b.deb", b"data")
    (h,) = hash_files([entry])
    with pytest.raises(SnapshotError, match=r"^a/b\.deb: listed twice"):
        build_packages([h, h], SPEC)


def test_multi_file_torrent_equals_torf_hashing_the_directory(tmp_path: Path) -> None:
    rng = random.Random(9)
    blobs = [rng.randbytes(40_000), rng.randbytes(700)]
    top = tmp_path / "bundle-1.0"
    top.mkdir()
    (top / "data.bin").write_bytes(blobs[0])
    (top / "data.bin.sig").write_bytes(blobs[1])
    piece = piece_size_for(sum(map(len, blobs)))
    webseeds = ["https://seed.example/pub/bundles/"]
    data, infohash = build_torrent(
        name=top.name,
        files=[("data.bin", len(blobs[0])), ("data.bin.sig", len(blobs[1]))],
        length=None,
        piece_size=piece,
        pieces=hash_pieces_of_bytes(blobs, piece),
        webseeds=webseeds,
        trackers=["http://t.example/announce"],
    )
    reference = torf.Torrent(
        path=top, piece_size=piece, webseeds=webseeds, trackers=["http://t.example/announce"], created_by="mirrorseed"
    )
    assert reference.generate(threads=1)
    assert reference.infohash == infohash
    assert reference.dump() == data
    assert b"creation date" not in data


def test_index_shard_torrent_equals_torf_hashing_the_shard(tmp_path: Path) -> None:
    """docs/sharded-index.md: a single-file torrent of `index/shards/<h16>.json.zst`, named `<h16>.json.zst`,
    whose url-list is `<public_url>/index/shards/` (a BEP 19 directory: the client appends the name)."""
    shard = random.Random(14).randbytes(70_000)
    key = shard_key(hashlib.sha256(shard).hexdigest())
    name = key.rpartition("/")[2]
    (tmp_path / name).write_bytes(shard)
    piece = piece_size_for(len(shard))
    url_list = join_url(SPEC.public_url, "index/shards") + "/"
    data, infohash = build_torrent(
        name=name, files=None, length=len(shard), piece_size=piece, pieces=hash_pieces_of_bytes([shard], piece),
        webseeds=[url_list], trackers=list(SPEC.trackers),
    )  # fmt: skip
    reference = torf.Torrent(
        path=tmp_path / name, piece_size=piece, webseeds=[url_list], trackers=list(SPEC.trackers),
        created_by="mirrorseed",
    )  # fmt: skip
    assert reference.generate(threads=1)
    assert (reference.infohash, reference.dump()) == (infohash, data)
    assert url_list + name == f"{SPEC.public_url}/{key}"  # where a webseed client fetches the shard
    assert (
        re.fullmatch(r"index/shards/[0-9a-f]{16}\.json\.zst", key)
        and shard_torrent_key(hashlib.sha256(data).hexdigest()) != key
    )


def test_build_torrent_argument_checks() -> None:
    with pytest.raises(ValueError):
        build_torrent(name="x", files=None, length=None, piece_size=16384, pieces=b"", webseeds=(), trackers=())
    with pytest.raises(ValueError):
        build_torrent(
            name="x", files=[("../a", 1)], length=None, piece_size=16384, pieces=b"\0" * 20, webseeds=(), trackers=()
        )
    with pytest.raises(ValueError):  # wrong number of pieces
        build_torrent(name="x", files=None, length=40000, piece_size=16384, pieces=b"\0" * 20, webseeds=(), trackers=())


@pytest.mark.parametrize("piece", [16384, 32768])
def test_hash_pieces_of_bytes(piece: int) -> None:
    rng = random.Random(piece)
    chunks = [rng.randbytes(n) for n in (0, 10, piece - 10, 3 * piece + 1, 5, 0)]
    whole = b"".join(chunks)
    expected = b"".join(hashlib.sha1(whole[i : i + piece]).digest() for i in range(0, len(whole), piece))
    assert hash_pieces_of_bytes(chunks, piece) == expected
    assert hash_pieces_of_bytes([whole], piece) == expected
    assert hash_pieces_of_bytes([], piece) == b""
    with pytest.raises(ValueError):
        hash_pieces_of_bytes([whole], 1000)


@pytest.mark.parametrize("path", [*AWKWARD, "top level+1.deb", "a b/c+d/é~:.deb"])
def test_metalink_urls_equal_join_url(tmp_path: Path, path: str) -> None:
    spec = BuildSpec(
        webseeds=("http://m.example", "http://n.example/x/", "http://m.example/"),
        trackers=(),
        public_url="http://p.example/",
    )
    built = build_packages(hash_files([write(tmp_path, path, b"payload")]), spec)
    meta = ET.fromstring(by_key(built.artifacts)[built.records[0].metalink])
    urls = [u.text for u in meta.iter(NS + "url")]
    assert urls == [join_url("http://m.example", path), join_url("http://n.example/x/", path)]
    torrent = built.records[0].torrent
    assert torrent is not None
    assert decode(by_key(built.artifacts)[torrent]).metainfo["url-list"] == [
        webseed_dir_url("http://m.example", path),
        webseed_dir_url("http://n.example/x", path),
    ]


def test_nodes_are_written_the_same_by_both_encoders_and_leave_the_infohash_alone() -> None:
    nodes = (("127.0.0.1", 6881), ("dht.example.org", 51413))
    pieces = random.Random(5).randbytes(40)
    args = {"name": "n.deb", "length": 20_000, "piece_size": 16384, "pieces": pieces}
    fast, infohash = _package_torrent(
        prefix=_announce_prefix(("http://t.example/announce",)), url_list=["http://m.example/"],
        nodes=nodes_item(nodes), **args,
    )  # fmt: skip
    reference, reference_infohash = build_torrent(
        files=None, webseeds=("http://m.example/",), trackers=("http://t.example/announce",), nodes=nodes, **args
    )  # type: ignore[arg-type]
    assert fast == reference and infohash == reference_infohash
    decoded = bencode.decode_dict(fast).value
    assert decoded[b"nodes"] == [[b"127.0.0.1", 6881], [b"dht.example.org", 51413]]
    plain, plain_infohash = _package_torrent(prefix=b"", url_list=[], **args)  # type: ignore[arg-type]
    assert b"5:nodes" not in plain and plain_infohash == infohash  # outside `info`: same swarm


def test_a_never_announced_package_is_private_and_names_no_tracker(tmp_path: Path) -> None:
    entries = [write(tmp_path, "pool/secret/s.deb", b"s" * 40_000), write(tmp_path, "pool/open/o.deb", b"o" * 40_000)]
    spec = replace(SPEC, nodes=(("127.0.0.1", 6881),), never_announce=("pool/secret/*",))
    hashed = hash_files(entries)
    public = {h.entry.path: digest_of(h) for h in hashed}
    private = {
        path: replace(d, infohash=infohash_for(name=path.rpartition("/")[2], length=d.entry.size,
                                               piece_size=d.piece_size, pieces=h.pieces, private=True))
        for h in hashed for path, d in [(h.entry.path, public[h.entry.path])]
    }  # fmt: skip
    digests = [private["pool/secret/s.deb"], public["pool/open/o.deb"]]
    records = {r.path: r for r in package_records(digests, spec)}
    pieces = {h.entry.path: h.pieces for h in hashed}
    artifacts = {a.key: a.data for a in iter_package_artifacts(((r, pieces[r.path]) for r in records.values()), spec)}
    secret = bencode.decode_dict(artifacts["torrents/pool/secret/s.deb.torrent"])
    shared = bencode.decode_dict(artifacts["torrents/pool/open/o.deb.torrent"])
    assert secret.value[b"info"][b"private"] == 1  # type: ignore[index]
    assert b"announce" not in secret.value and b"nodes" not in secret.value and secret.value[b"url-list"]
    assert b"private" not in shared.value[b"info"] and shared.value[b"announce"] and shared.value[b"nodes"]  # type: ignore[operator]
    assert hashlib.sha1(secret.info or b"").hexdigest() == records["pool/secret/s.deb"].infohash
    assert records["pool/secret/s.deb"].infohash != public["pool/secret/s.deb"].infohash
    assert "tr=" not in (records["pool/secret/s.deb"].magnet or "") and "tr=" in (
        records["pool/open/o.deb"].magnet or ""
    )


def _metalink_by_elementtree(
    *, name: str, size: int, sha256: str, piece_size: int | None, pieces: bytes, urls: Any, torrent_url: str | None
) -> bytes:
    """The ElementTree form build_metalink had before it wrote text: the oracle of its bytes."""
    root = ET.Element("metalink", xmlns="urn:ietf:params:xml:ns:metalink")
    file = ET.SubElement(root, "file", name=name)
    ET.SubElement(file, "size").text = str(size)
    ET.SubElement(file, "hash", type="sha-256").text = sha256
    if pieces:
        element = ET.SubElement(file, "pieces", length=str(piece_size), type="sha-1")
        for offset in range(0, len(pieces), 20):
            ET.SubElement(element, "hash").text = pieces[offset : offset + 20].hex()
    for position, item in enumerate(urls, start=1):
        url, priority, location = item if isinstance(item, tuple) else (item, position, None)
        attributes = {"priority": str(priority)} | ({"location": location.lower()} if location else {})
        ET.SubElement(file, "url", attributes).text = url
    if torrent_url is not None:
        ET.SubElement(file, "metaurl", mediatype="torrent").text = torrent_url
    ET.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n").encode()


def test_metalink_text_is_byte_identical_to_elementtree_output() -> None:
    rng = random.Random(5854)
    alphabet = "ab+ %#?&<>\"'\t\r\n;=é😀_.-~/"
    for _ in range(2000):
        pieces_count = rng.randint(0, 3)
        urls: list[Any] = []
        for position in range(rng.randint(0, 3)):
            url = "http://m.example/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            urls.append(url if rng.random() < 0.5 else (url, position + 1, rng.choice([None, "DE", 'a"<'])))
        arguments: dict[str, Any] = {
            "name": "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))),
            "size": rng.randint(0, 10**12),
            "sha256": rng.randbytes(32).hex(),
            "piece_size": 16384 if pieces_count else None,
            "pieces": rng.randbytes(20 * pieces_count),
            "urls": urls,
            "torrent_url": rng.choice([None, "https://s.example/t&<x>.torrent"]),
        }
        assert build_metalink(**arguments) == _metalink_by_elementtree(**arguments), arguments


@pytest.mark.parametrize(
    "value",
    [
        "pool/main/h/hello/hello_2.10-3_amd64.deb",
        "hello+1 ü.deb",
        "https://example.org/debian/torrents/pool/main/h/hello/hello_2.10-3_amd64.deb.torrent",
        "https://example.org:8443/pub/a%20b/c+d.torrent",
        "https://example.org/pub/torrents/pool/main/g/gcc-12/g%2B%2B-12_12.2.0-14_amd64.deb.torrent",
        "torrents/%/a%2F%%b.torrent",
        "http://[::1]:6969/announce?x=1&y=2",
        "https://example.org",
        "~user/.x_-",
        "",
    ],
)
def test_magnet_values_are_quoted_as_quote_does(value: str) -> None:
    """quote_value takes shortcuts for plain names and URLs with plain paths: the same bytes as quote."""
    assert quote_value(value) == quote(value, safe="")


def test_quote_shortcuts_match_quote_on_every_ascii_character() -> None:
    """Each ASCII character (and a few beyond) alone and inside a URL path: quote_value and quote_path give
    quote's bytes."""
    from pipeline.urls import quote_path

    for code in [*range(1, 128), 0xE9, 0x2028, 0x1F600]:
        char = chr(code)
        for value in (char, f"a{char}b", f"https://h.example/p/{char}.deb", f"dir/{char}/x"):
            assert quote_value(value) == quote(value, safe=""), repr(value)
            assert quote_path(value) == quote(value, safe="/"), repr(value)


def test_package_records_made_by_row_equal_the_records_built_at_once(hashed: tuple[HashedFile, ...]) -> None:
    digests = [digest_of(h) for h in hashed]
    table = FileTable.of(replace(d.entry, source=str(d.entry.source)) for d in digests)
    known = KnownDigests(len(table))
    for d in digests:
        known[table.paths.index(d.entry.path)] = CachedFile(d.sha256, d.piece_size, d.infohash)
    lazy = PackageRecords(table, known, SPEC)
    expected = package_records(digests, SPEC)
    assert len(lazy) == len(expected) == len(AWKWARD) + 2
    assert list(lazy) == list(expected)
    assert [r.description for r in lazy] == [r.description for r in expected]
    assert lazy[3] == expected[3] and lazy[-1] == expected[-1] and lazy[1:3] == expected[1:3]
    assert list(lazy.at([4, 0])) == [expected[4], expected[0]]
    assert lazy[0] is not lazy[0]  # made when read, never kept
    with pytest.raises(IndexError):
        lazy[len(lazy)]
    empty = next(r for r in lazy if r.size == 0)
    assert empty.torrent is None and empty.magnet is None and empty.infohash is None
    # what the objects are made from: each record's, field by field, and the same .torrent and .meta4 bytes
    fields = ("path", "size", "sha256", "piece_size", "infohash", "torrent", "metalink")
    facts = list(lazy.objects_at(range(len(lazy))))
    assert [tuple(f) for f in facts] == [tuple(getattr(r, name) for name in fields) for r in expected]
    pieces = {h.entry.path: h.pieces for h in hashed}
    from_facts = list(iter_package_artifacts(((f, pieces[f.path]) for f in facts), SPEC))
    from_records = list(iter_package_artifacts(((r, pieces[r.path]) for r in expected), SPEC))
    assert from_facts == from_records and len(from_facts) == 2 * len(expected) - 1  # no torrent of the empty file


def test_package_records_refuse_a_path_listed_twice(tmp_path: Path) -> None:
    entry = write(tmp_path, "pool/a.deb", b"a")
    table = FileTable.of([replace(entry, source=str(entry.source)), replace(entry, source=str(tmp_path / "other"))])
    with pytest.raises(SnapshotError, match="pool/a.deb: listed twice"):
        PackageRecords(table, KnownDigests(len(table)), SPEC)


@pytest.mark.parametrize("path", ["pool/main/a/a_1_amd64.deb", "top", "dir/x.torrent", "ü/ä b.meta4"])
def test_package_of_inverts_the_package_keys(path: str) -> None:
    assert package_of(torrent_key(path)) == (path, True)
    assert package_of(metalink_key(path)) == (path, False)


@pytest.mark.parametrize("key", ["index.html", "torrents/x.meta4", "metalinks/x.torrent", "browse/torrents/x.torrent"])
def test_package_of_other_keys_is_none(key: str) -> None:
    assert package_of(key) is None
