"""`invoke verify`: the audit a user can run over HTTP, on a good publication and deliberately broken ones.

One publication (the test Debian repo, two webseeds; its index in two shards, stable/main/all and
stable/main/amd64) is built per module with release() and served on 127.0.0.1; each test breaks a copy
of it in place and the `pub` fixture restores it afterwards. The delta tests publish twice (flat).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pipeline import bencode
from pipeline.config import Settings, split_node
from pipeline.demo import DebSpec, build_debian_repo
from pipeline.errors import ConfigError
from pipeline.hashing import piece_size_for
from pipeline.index import decode_pointer, encode_document, encode_pointer, make_delta
from pipeline.model import DeltaRef, Pointer, ShardRef
from pipeline.objects import shard_key, shard_torrent_key
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import Signer, verify_signed_message
from pipeline.torrents import build_torrent, hash_pieces_of_bytes
from pipeline.urls import join_url
from pipeline.verify import MAX_POINTER_BYTES, VerifySpec, default_state_file, verify_publication
from tests.gpg_helpers import export_keyring, make_key, temp_gnupghome
from tests.integration.conftest import PACKAGES, SigningKey, run_cli
from tests.integration.test_incremental import make_flat
from tests.mirror_servers import TricklingServer

pytestmark = pytest.mark.integration
NODES = ("router.example.org:6881", "[2001:db8::1]:6881")  # DHT nodes of the publication (never contacted)


@dataclass(frozen=True)
class Published:
    dest: Path  # served at public_url
    pristine: Path  # a copy of dest as release() wrote it
    public_url: str
    mirror_url: str  # the snapshot itself
    alt_root: Path  # a second mirror (copy of the snapshot), served at alt_url
    alt_pristine: Path
    alt_url: str
    key: SigningKey

    def spec(self, **extra: Any) -> VerifySpec:
        return VerifySpec(
            public_url=self.public_url, keyring=self.key.keyring, fingerprint=self.key.fingerprint, **extra
        )

    def torrent(self, fragment: str) -> Path:
        return next(p for p in (self.dest / "torrents").rglob("*.torrent") if fragment in p.name)

    def url(self, path: Path) -> str:
        return join_url(self.public_url, path.relative_to(self.dest).as_posix())

    def pointer(self) -> Pointer:
        return pointer_of(self.dest, self.key)

    def shard(self, name: str) -> ShardRef:
        return next(shard for shard in self.pointer().shards if shard.name == name)


AMD64, ALL = "stable/main/amd64", "stable/main/all"


def pointer_of(dest: Path, key: SigningKey) -> Pointer:
    signed = (dest / "latest.asc").read_bytes()
    return decode_pointer(verify_signed_message(signed, keyring=key.keyring, fingerprint=key.fingerprint))


def sign_pointer(dest: Path, key: SigningKey, pointer: Pointer) -> None:
    """Publish `pointer` as the signed latest.asc (what a compromised or buggy publisher could sign)."""
    signer = Signer(gnupghome=key.gnupghome, key=key.fingerprint)
    (dest / "latest.asc").write_bytes(signer.sign_message(encode_pointer(pointer)))


def shard_doc(dest: Path, shard: ShardRef) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().decompress((dest / shard.path).read_bytes()))
    return doc


def republish_shard(pub: Published, name: str, mutate: Callable[[dict[str, Any]], None]) -> ShardRef:
    """Shard `name` with its document changed by `mutate`, written with a torrent of its own as the publisher
    writes them, named by a newly signed pointer: everything the pointer says of it holds, but the content."""
    pointer = pub.pointer()
    old = next(shard for shard in pointer.shards if shard.name == name)
    doc = shard_doc(pub.dest, old)
    mutate(doc)
    encoded = encode_document(doc)
    key = shard_key(encoded.sha256)
    (pub.dest / key).write_bytes(encoded.data)
    piece_size = piece_size_for(encoded.size)
    torrent, infohash = build_torrent(
        name=key.rpartition("/")[2], files=None, length=encoded.size, piece_size=piece_size,
        pieces=hash_pieces_of_bytes([encoded.data], piece_size),
        webseeds=[join_url(pub.public_url, "index/shards") + "/"], trackers=doc["trackers"],
        nodes=[split_node(node) for node in doc.get("dht_nodes", ())],
    )  # fmt: skip
    torrent_key = shard_torrent_key(hashlib.sha256(torrent).hexdigest())
    (pub.dest / torrent_key).write_bytes(torrent)
    new = replace(
        old, path=key, size=encoded.size, sha256=encoded.sha256, uncompressed_size=encoded.uncompressed_size,
        uncompressed_sha256=encoded.uncompressed_sha256, packages=len(doc["packages"]), torrent=torrent_key,
        infohash=infohash,
    )  # fmt: skip
    shards = tuple(new if shard.name == name else shard for shard in pointer.shards)
    sign_pointer(pub.dest, pub.key, replace(pointer, shards=shards))
    return new


@pytest.fixture(scope="module")
def published(
    signing_key: SigningKey, debian_repo_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    base = tmp_path_factory.mktemp("verify")
    snapshot, alt, dest = base / "snapshot", base / "alt", base / "public"
    shutil.copytree(debian_repo_template, snapshot, symlinks=True)
    shutil.copytree(debian_repo_template, alt, symlinks=True)
    dest.mkdir()
    with ExitStack() as stack:
        public = stack.enter_context(serve_directory(dest))
        mirror = stack.enter_context(serve_directory(snapshot))
        alt_server = stack.enter_context(serve_directory(alt))
        settings = Settings(
            snapshot=snapshot,
            format="debian",
            dest=str(dest),
            public_url=public.url,
            repo="test",
            webseeds=(mirror.url, alt_server.url),
            key=signing_key.fingerprint,
            gnupghome=signing_key.gnupghome,
            state=base / "state.sqlite",  # module scope: not the per-test XDG cache
            dht_nodes=NODES,
        )
        assert release(settings).sequence == 1
        shutil.copytree(dest, base / "pristine")
        shutil.copytree(alt, base / "alt-pristine", symlinks=True)
        yield Published(
            dest, base / "pristine", public.url, mirror.url, alt, base / "alt-pristine", alt_server.url, signing_key
        )


def _restore(target: Path, pristine: Path) -> None:
    shutil.rmtree(target)
    shutil.copytree(pristine, target, symlinks=True)


@pytest.fixture
def pub(published: Published) -> Iterator[Published]:
    """The module's publication; whatever a test breaks is restored afterwards."""
    yield published
    _restore(published.dest, published.pristine)
    _restore(published.alt_root, published.alt_pristine)


def test_good_publication_passes_and_records_the_sequence(pub: Published, tmp_path: Path, isolated_cache: Path) -> None:
    state = tmp_path / "state.json"
    report = verify_publication(pub.spec(state_file=state))
    assert report.ok, report.problems
    assert report.sequence == 1
    count = len(PACKAGES)
    assert report.checked["packages"] == report.checked["torrents"] == report.checked["metalinks"] == count
    assert report.checked["webseed_probes"] == 2 * count  # every package on both webseeds (sample 20 > 5)
    assert [shard.name for shard in pub.pointer().shards] == [ALL, AMD64]
    assert report.checked["shards"] == report.checked["shard_torrents"] == report.checked["shard_webseed_probes"] == 2
    assert report.checked["deltas"] == report.checked["deltas_not_checkable"] == 0 and report.notes == ()
    assert report.summary() == (
        f"OK: sequence 1, 2 shards, 0 deltas applied, {count} packages, {count} torrents, {count} metalinks, "
        "10 webseed probes"
    )
    assert json.loads(state.read_text()) == {"public_url": pub.public_url, "repo": "test", "sequence": 1}

    # the user's defaults: the keyring's only key is pinned, the state goes to $XDG_CACHE_HOME
    again = verify_publication(VerifySpec(public_url=pub.public_url + "/", keyring=pub.key.keyring, sample=2))
    assert again.ok, again.problems
    assert again.checked["webseed_probes"] == 4
    default = default_state_file(pub.public_url)
    assert default.parent == isolated_cache / "mirrorseed" and default.name.startswith("verify-127.0.0.1_")
    assert json.loads(default.read_text())["sequence"] == 1


def test_tampered_shard_is_named_and_none_of_its_records_is_trusted(pub: Published, tmp_path: Path) -> None:
    shard = pub.dest / pub.shard(AMD64).path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    state = tmp_path / "state.json"
    report = verify_publication(pub.spec(state_file=state))
    url = pub.url(shard)
    assert len(report.problems) == 2, report.problems
    assert report.problems[0].startswith(f"{url}: SHA-256 ") and "the shard was altered" in report.problems[0]
    assert report.problems[1] == f"{url}: not usable, so no package of shard {AMD64!r} was checked"
    assert report.checked["packages"] == report.checked["torrents"] == 1  # markup-demo, of the good shard (all)
    assert not state.exists()


def test_a_shard_whose_shard_field_lies_is_refused(pub: Published) -> None:
    """Signed by the pointer (size, SHA-256, its JSON's too), with a torrent of its own: only `shard` lies."""

    def lie(doc: dict[str, Any]) -> None:
        doc["shard"] = "stable/main/i386"

    shard = republish_shard(pub, AMD64, lie)
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "lie.json"))
    url = join_url(pub.public_url, shard.path)
    assert report.problems == (
        f"{url}: shard is 'stable/main/i386', the signed pointer names it {AMD64!r}",
        f"{url}: not usable, so no package of shard {AMD64!r} was checked",
    )
    assert report.checked["packages"] == 1


def test_a_shard_listing_other_records_than_its_neighbours_is_named(pub: Published) -> None:
    """The same path in two shards must be the same record: one is checked, the other would be trusted."""
    amd64 = shard_doc(pub.dest, pub.shard(AMD64))

    def add_hello_changed(doc: dict[str, Any]) -> None:
        hello = dict(next(p for p in amd64["packages"] if p["path"].endswith(".deb") and "/hello_" in p["path"]))
        hello["version"] = "9.9-9"
        doc["packages"] = sorted([*doc["packages"], hello], key=lambda p: p["path"])

    republish_shard(pub, ALL, add_hello_changed)
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "two.json"))
    assert len(report.problems) == 1, report.problems
    assert "/hello_" in report.problems[0] and "its record differs from the one in" in report.problems[0]
    assert report.checked["packages"] == len(PACKAGES)  # hello checked once


def test_a_shard_torrent_of_another_shard_is_named(pub: Published) -> None:
    amd64, everything = pub.shard(AMD64), pub.shard(ALL)
    shutil.copyfile(pub.dest / everything.torrent, pub.dest / amd64.torrent)
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "shard-torrent.json"))
    url = join_url(pub.public_url, amd64.torrent)
    assert report.problems == (f"{url}: infohash {everything.infohash}, the signed pointer says {amd64.infohash}",)
    assert report.checked["packages"] == len(PACKAGES)  # the shard itself is fine: its packages are checked


def test_a_shard_torrent_pointing_elsewhere_is_named(pub: Published) -> None:
    """Outside `info` (same infohash): a url-list that does not lead to the publication's shards."""
    shard = pub.shard(ALL)
    path = pub.dest / shard.torrent
    meta = bencode.decode_dict(path.read_bytes()).value
    assert meta[b"url-list"] == [(pub.public_url + "/index/shards/").encode()]
    meta[b"url-list"] = [(pub.public_url + "/index/").encode()]
    path.write_bytes(bencode.encode(meta))
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "url-list.json"))
    url = join_url(pub.public_url, shard.torrent)
    assert report.problems == (
        f"{url}: its SHA-256 does not begin with the digest in its name (altered after publishing?)",
        f"{url}: url-list entry '{pub.public_url}/index/' is not <public url>/index/shards/",
    )


def test_a_pointer_of_the_earlier_format_is_one_line(pub: Published, tmp_path: Path) -> None:
    legacy = {
        "format": "mirrorseed-pointer/1", "repo": "test", "sequence": 1, "generated": "2026-01-01T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z",
        "index": {"path": "index/1-0123456789ab/index.json.zst", "size": 10, "uncompressed_size": 20,
                  "sha256": "0" * 64},
        "index_torrent": "index/1-0123456789ab.torrent", "infohash": "1" * 40,
        "magnet": "magnet:?xt=urn:btih:" + "1" * 40,
    }  # fmt: skip
    signer = Signer(gnupghome=pub.key.gnupghome, key=pub.key.fingerprint)
    (pub.dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(legacy, indent=2).encode()))
    state = tmp_path / "state.json"
    report = verify_publication(pub.spec(state_file=state))
    assert report.problems == (
        f"{pub.public_url}/latest.asc: mirrorseed-pointer/1: published by an older version of mirrorseed (one "
        "whole index, not shards), which this verify does not check; the next `invoke release` upgrades it",
    )
    assert not state.exists()


def test_missing_torrent_is_named(pub: Published) -> None:
    torrent = pub.torrent("hello_")
    torrent.unlink()
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "missing.json"))
    assert report.problems == (f"{pub.url(torrent)}: HTTP 404 Not Found",)
    assert report.checked["torrents"] == len(PACKAGES)


def test_a_dht_node_the_index_does_not_list_is_named(pub: Published) -> None:
    victim = pub.torrent("hello_")
    meta = bencode.decode_dict(victim.read_bytes()).value
    assert meta[b"nodes"] == [[b"router.example.org", 6881], [b"2001:db8::1", 6881]]
    meta[b"nodes"] = [[b"router.example.org", 6881], [b"203.0.113.9", 6881]]  # outside info: same infohash
    victim.write_bytes(bencode.encode(meta))
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "nodes.json"))
    assert report.problems == (
        f"{pub.url(victim)}: names the DHT node '203.0.113.9:6881', which is not one of the index's dht_nodes",
    )


def test_swapped_torrent_has_the_wrong_infohash(pub: Published) -> None:
    victim = pub.torrent("tilde-demo")
    shutil.copyfile(pub.torrent("hello_"), victim)
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "swapped.json"))
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"{pub.url(victim)}: infohash ")
    assert "the index says" in report.problems[0]


def test_expired_pointer_and_rollback_are_refused_and_state_is_kept(pub: Published, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    late = datetime.now(UTC) + timedelta(days=8)  # release() signs for 7 days
    stale = verify_publication(pub.spec(state_file=state, now=late))
    assert len(stale.problems) == 1 and "latest.asc: expired at " in stale.problems[0], stale.problems
    assert not state.exists()

    saved = json.dumps({"public_url": pub.public_url, "repo": "test", "sequence": 5}).encode()
    state.write_bytes(saved)
    rolled = verify_publication(pub.spec(state_file=state))
    assert len(rolled.problems) == 1, rolled.problems
    assert "sequence 1 is lower than 5" in rolled.problems[0] and "rollback" in rolled.problems[0]
    assert state.read_bytes() == saved

    # a state file of another publication is a setting to fix, not something to overwrite
    state.write_text(json.dumps({"public_url": "http://127.0.0.1:9/other", "sequence": 1}))
    with pytest.raises(ConfigError, match="--state-file"):
        verify_publication(pub.spec(state_file=state))


def test_wrong_key_stops_at_the_pointer(pub: Published, tmp_path: Path) -> None:
    with temp_gnupghome() as home:
        other = make_key(home, uid="attacker <evil@example.invalid>", expire="1y")
        other_keyring = export_keyring(home, other, tmp_path / "other.gpg")
    state = tmp_path / "state.json"
    report = verify_publication(VerifySpec(public_url=pub.public_url, keyring=other_keyring, state_file=state))
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(join_url(pub.public_url, "latest.asc") + ": signature rejected")
    assert "nothing else was checked" in report.problems[0]
    assert report.checked["shards"] == report.checked["torrents"] == 0 and report.sequence is None
    assert not state.exists()

    # both keys trusted by gpgv, but the pinned one is the attacker's: the real signature is refused
    both = tmp_path / "both.gpg"
    both.write_bytes(pub.key.keyring.read_bytes() + other_keyring.read_bytes())
    pinned = verify_publication(
        VerifySpec(public_url=pub.public_url, keyring=both, fingerprint=other, state_file=state)
    )
    assert len(pinned.problems) == 1 and f"not by the pinned key {other}" in pinned.problems[0]
    with pytest.raises(ConfigError, match="holds 2 primary keys"):
        verify_publication(VerifySpec(public_url=pub.public_url, keyring=both, state_file=state))


def test_webseed_serving_wrong_bytes_is_named(pub: Published) -> None:
    hello = next(pub.alt_root.rglob("hello_*.deb"))
    data = bytearray(hello.read_bytes())
    data[len(data) // 2] ^= 0xFF
    hello.write_bytes(bytes(data))  # same size, different bytes
    tilde = next(pub.alt_root.rglob("tilde-demo_*.deb"))
    tilde.unlink()
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "webseed.json"))
    hello_url = join_url(pub.alt_url, hello.relative_to(pub.alt_root).as_posix())
    tilde_url = join_url(pub.alt_url, tilde.relative_to(pub.alt_root).as_posix())
    assert len(report.problems) == 2, report.problems
    assert report.problems[0].startswith(f"{hello_url}: Range bytes=") or report.problems[1].startswith(
        f"{hello_url}: Range bytes="
    )
    assert any("the mirror serves different bytes" in p for p in report.problems)
    assert f"{tilde_url}: HEAD: HTTP 404 Not Found" in report.problems
    assert not any(pub.mirror_url in p for p in report.problems)  # the good mirror is not blamed


def test_cli_exit_codes_and_one_line_per_problem(pub: Published, tmp_path: Path) -> None:
    state = tmp_path / "cli-state.json"
    base = ["verify", "--public-url", pub.public_url, "--keyring", str(pub.key.keyring), "--state-file", str(state)]
    good = run_cli(*base)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines() == [
        f"OK: sequence 1, 2 shards, 0 deltas applied, {len(PACKAGES)} packages, 5 torrents, 5 metalinks, "
        "10 webseed probes"
    ]
    assert json.loads(state.read_text())["sequence"] == 1

    gone = [pub.torrent("hello_"), pub.torrent("tilde-demo")]
    for path in gone:
        path.unlink()
    bad = run_cli(*base, "--fingerprint", pub.key.fingerprint, "--sample", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert sorted(bad.stdout.splitlines()) == sorted(f"{pub.url(p)}: HTTP 404 Not Found" for p in gone)
    assert "FAILED: 2 problems" in bad.stderr

    as_json = run_cli(*base, "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and doc["sequence"] == 1 and len(doc["problems"]) == 2

    missing = run_cli("verify", "--public-url", pub.public_url)
    assert missing.returncode == 2 and "--keyring" in missing.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_destination_is_one_line(signing_key: SigningKey, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/pub"
    report = verify_publication(
        VerifySpec(public_url=url, keyring=signing_key.keyring, state_file=tmp_path / "s.json", timeout=2)
    )
    assert report.problems == (f"{url}/latest.asc: cannot connect: Connection refused",)
    assert report.sequence is None and not (tmp_path / "s.json").exists()


class _Endless(BaseHTTPRequestHandler):
    """Answers every GET with an endless body and no Content-Length (a hostile or broken server)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        chunk = b"A" * 65536
        try:
            for _ in range(10_000):
                self.wfile.write(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_oversized_and_endless_pointers_are_cut_off(signing_key: SigningKey, tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    (root / "latest.asc").write_bytes(b"-----BEGIN PGP MESSAGE-----\n" + b"A" * (2 * MAX_POINTER_BYTES))
    with serve_directory(root) as server:
        report = verify_publication(
            VerifySpec(public_url=server.url, keyring=signing_key.keyring, state_file=tmp_path / "s.json")
        )
    assert len(report.problems) == 1 and f"more than the {MAX_POINTER_BYTES} bytes expected" in report.problems[0]

    endless = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=endless.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{endless.server_address[1]}"
        report = verify_publication(
            VerifySpec(public_url=url, keyring=signing_key.keyring, state_file=tmp_path / "s.json")
        )
    finally:
        endless.shutdown()
        endless.server_close()
        thread.join()
    assert report.problems == (
        f"{url}/latest.asc: more than the {MAX_POINTER_BYTES} bytes expected: refused (endless data?)",
    )


def test_validly_signed_pointer_to_a_zstd_bomb_is_cut_off(pub: Published) -> None:
    """A8 at the client: the frame does not declare its size; decompression stops at uncompressed_size."""
    current = pub.pointer()
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 4_000_000)
    sha = hashlib.sha256(bomb).hexdigest()
    (pub.dest / shard_key(sha)).write_bytes(bomb)
    amd64 = next(shard for shard in current.shards if shard.name == AMD64)
    hostile = replace(amd64, path=shard_key(sha), size=len(bomb), sha256=sha, uncompressed_size=1000)
    sign_pointer(pub.dest, pub.key, replace(current, shards=(hostile,)))
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "bomb.json"))
    url = join_url(pub.public_url, shard_key(sha))
    assert f"{url}: index: decompresses to more than the 1000 bytes the pointer declares: refused (zstd bomb?)" in (
        report.problems
    ), report.problems
    assert report.checked["torrents"] == 0


def test_a_server_trickling_its_headers_fails_at_the_deadline(signing_key: SigningKey, tmp_path: Path) -> None:
    """`HTTP/1.1 200 OK`, then one header byte every 0.2 s: no read ever waits `timeout`, yet the audit
    ends at the headers' deadline (3 x timeout) and says so, not '0 bytes before the deadline'."""
    with TricklingServer(0.2, in_headers=True) as server:
        started = time.monotonic()
        report = verify_publication(
            VerifySpec(public_url=server.url, keyring=signing_key.keyring, state_file=tmp_path / "s.json", timeout=1)
        )
        elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert report.problems == (f"{server.url}/latest.asc: too slow: the headers did not arrive within 3 s (timed out)",)
    assert "0 bytes" not in report.problems[0] and not (tmp_path / "s.json").exists()


# --- deltas: two publications ------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoReleases:
    dest: Path
    public_url: str
    key: SigningKey

    def spec(self, state: Path) -> VerifySpec:
        return VerifySpec(
            public_url=self.public_url, keyring=self.key.keyring, fingerprint=self.key.fingerprint, state_file=state
        )


@pytest.fixture
def two_releases(signing_key: SigningKey, tmp_path: Path) -> Iterator[TwoReleases]:
    """A flat snapshot published, one file of dir0 changed, published again: shard dir0 has a delta."""
    snap, dest = tmp_path / "snap", tmp_path / "public"
    make_flat(snap, 5)
    dest.mkdir()
    with serve_directory(dest) as public, serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url=public.url, repo="deltas",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite",
        )  # fmt: skip
        assert release(settings).sequence == 1
        (snap / "dir0" / "file-00.bin").write_bytes(b"new version" * 5000)
        assert release(settings).sequence == 2
        yield TwoReleases(dest, public.url, signing_key)


def _delta_shard(pub: TwoReleases) -> tuple[Pointer, ShardRef, DeltaRef]:
    pointer = pointer_of(pub.dest, pub.key)
    shard = next(shard for shard in pointer.shards if shard.name == "dir0")
    assert shard.delta is not None and [s.name for s in pointer.shards if s.delta] == ["dir0"]
    return pointer, shard, shard.delta


def _base_key(delta: DeltaRef) -> str:
    """The key of the shard a delta was made from: `<h16>.from-<old16>.zst` -> `<old16>.json.zst`."""
    return "index/shards/" + delta.path.rpartition(".from-")[2].removesuffix(".zst") + ".json.zst"


def test_a_delta_is_applied_to_the_shard_it_was_made_from(two_releases: TwoReleases, tmp_path: Path) -> None:
    pointer, shard, delta = _delta_shard(two_releases)
    report = verify_publication(two_releases.spec(tmp_path / "good.json"))
    assert report.ok, report.problems
    assert report.sequence == 2 and report.checked["deltas"] == 1 and report.notes == ()
    assert report.summary().startswith("OK: sequence 2, 3 shards, 1 deltas applied, 5 packages, ")

    # the shard it was made from aged out: not checkable, which is no failure
    old = (
        two_releases.dest / "index" / "shards" / (delta.path.rpartition(".from-")[2].removesuffix(".zst") + ".json.zst")
    )
    old.unlink()
    aged = verify_publication(two_releases.spec(tmp_path / "aged.json"))
    assert aged.ok, aged.problems
    assert aged.checked["deltas"] == 0 and aged.checked["deltas_not_checkable"] == 1
    url = join_url(two_releases.public_url, delta.path)
    old_url = join_url(two_releases.public_url, old.relative_to(two_releases.dest).as_posix())
    assert aged.notes == (
        f"{url}: not checkable: the shard it was made from ({old_url}) is no longer in the destination",
    )
    assert aged.lines()[1:] == list(aged.notes)


def test_a_tampered_delta_is_named(two_releases: TwoReleases, tmp_path: Path) -> None:
    pointer, shard, delta = _delta_shard(two_releases)
    path = two_releases.dest / delta.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_publication(two_releases.spec(tmp_path / "tampered.json"))
    url = join_url(two_releases.public_url, delta.path)
    assert report.problems == (
        f"{url}: size or SHA-256 differs from the signed pointer's delta of shard 'dir0': the delta was altered",
    )
    assert report.checked["packages"] == 5  # the shard itself is good


def test_a_signed_delta_that_gives_other_json_is_named(two_releases: TwoReleases, tmp_path: Path) -> None:
    """The pointer binds the delta's bytes, but applied to the previous shard they give another document."""
    pointer, shard, delta = _delta_shard(two_releases)
    dest = two_releases.dest
    old_key = _base_key(delta)
    old_json = zstandard.ZstdDecompressor().decompress((dest / old_key).read_bytes())
    new_json = zstandard.ZstdDecompressor().decompress((dest / shard.path).read_bytes())
    wrong = make_delta(old_json, new_json.replace(b'"dir0"', b'"dir9"', 1))
    (dest / delta.path).write_bytes(wrong)
    hostile = replace(shard, delta=replace(delta, size=len(wrong), sha256=hashlib.sha256(wrong).hexdigest()))
    sign_pointer(dest, two_releases.key, replace(pointer, shards=tuple(
        hostile if s.name == "dir0" else s for s in pointer.shards
    )))  # fmt: skip
    report = verify_publication(two_releases.spec(tmp_path / "wrong.json"))
    url = join_url(two_releases.public_url, delta.path)
    assert report.problems == (
        f"{url}: applied to the previous shard it does not give the JSON of shard 'dir0' ({shard.uncompressed_sha256})",
    )


def test_a_package_listed_in_two_shards_is_checked_once(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "public"
    hello = DebSpec(name="hello", version="1.0-1", description="in both suites")
    other = DebSpec(name="other-demo", version="1.0-1", description="in both suites")
    build_debian_repo(snap, (hello, other), suite="stable", architectures=("amd64",))
    build_debian_repo(snap, (hello, other), suite="testing", architectures=("amd64",), reuse_pool=True)
    dest.mkdir()
    with serve_directory(dest) as public, serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="debian", dest=str(dest), public_url=public.url, repo="two",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite",
        )  # fmt: skip
        release(settings)
        shards = pointer_of(dest, signing_key).shards
        assert [(s.name, s.packages) for s in shards] == [("stable/main/amd64", 2), ("testing/main/amd64", 2)]
        report = verify_publication(
            VerifySpec(public_url=public.url, keyring=signing_key.keyring, state_file=tmp_path / "s.json")
        )
    assert report.ok, report.problems
    assert report.checked["shards"] == 2 and report.checked["packages"] == report.checked["metalinks"] == 2


def test_a_pointer_whose_shards_are_not_sorted_is_refused(pub: Published, tmp_path: Path) -> None:
    pointer = pub.pointer()
    sign_pointer(pub.dest, pub.key, replace(pointer, shards=tuple(reversed(pointer.shards))))
    report = verify_publication(pub.spec(state_file=tmp_path / "s.json"))
    assert report.problems == (
        f"{pub.public_url}/latest.asc: the shards are not sorted by name and part, or a part repeats",
    )
    assert report.checked["shards"] == 0


def test_a_publication_with_shards_in_parts_verifies_each_part_and_its_delta(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.index

    monkeypatch.setattr(pipeline.index, "PART_MAX_BYTES", 1500)  # each directory's 4 records: 2 parts or more
    snap, dest = tmp_path / "snap", tmp_path / "public"
    make_flat(snap, 12)
    dest.mkdir()
    with serve_directory(dest) as public, serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url=public.url, repo="parts",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite",
        )  # fmt: skip
        assert release(settings).sequence == 1
        target = snap / "dir0" / "file-06.bin"
        target.write_bytes(b"\xee" * target.stat().st_size)
        assert release(settings).sequence == 2
        pointer = pointer_of(dest, signing_key)
        assert {(s.name, s.part) for s in pointer.shards} >= {(f"dir{n}", part) for n in range(3) for part in (0, 1)}
        assert [s.name for s in pointer.shards if s.delta] == ["dir0"]
        spec = VerifySpec(
            public_url=public.url, keyring=signing_key.keyring, fingerprint=signing_key.fingerprint,
            state_file=tmp_path / "verify.json",
        )  # fmt: skip
        report = verify_publication(spec)
        assert report.ok, report.problems
        assert report.checked["shards"] == report.checked["shard_torrents"] == len(pointer.shards)
        assert report.checked["deltas"] == 1 and report.checked["packages"] == 12

        # parts no more (the limit back up): each shard one part again, part 0's delta from the old part 0
        monkeypatch.undo()
        for n in range(3):  # a change in each directory: the next publication writes every shard
            (snap / f"dir{n}" / f"file-{n:02d}.bin").write_bytes(
                b"\xdd" * (snap / f"dir{n}" / f"file-{n:02d}.bin").stat().st_size
            )
        assert release(settings).sequence == 3
        pointer = pointer_of(dest, signing_key)
        assert [(s.name, s.part) for s in pointer.shards] == [("dir0", 0), ("dir1", 0), ("dir2", 0)]
        report = verify_publication(replace(spec, state_file=tmp_path / "whole.json"))
        assert report.ok, report.problems
        assert report.checked["deltas"] == 3

        # the same shards under a pointer of format 2 (as the previous version signed it): named, still checked
        payload = json.loads(encode_pointer(pointer))
        payload["format"] = "mirrorseed-pointer/2"
        for shard in payload["shards"]:
            del shard["part"]
        signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
        (dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(payload, indent=2).encode()))
        old = verify_publication(replace(spec, state_file=tmp_path / "old.json"))
        assert old.problems == (
            f"{public.url}/latest.asc: mirrorseed-pointer/2: published by an older version of mirrorseed, which "
            "the current clients refuse (they read mirrorseed-pointer/3); the next `invoke release` upgrades it",
        )
        assert old.checked["packages"] == 12
