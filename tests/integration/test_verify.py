"""`invoke verify`: the audit a user can run over HTTP, on a good publication and deliberately broken ones.

One publication (the test Debian repo, two webseeds) is built per module with release() and served on
127.0.0.1; each test breaks a copy of it in place and the `pub` fixture restores it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pipeline import bencode
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.index import decode_pointer, encode_pointer
from pipeline.model import IndexRef
from pipeline.objects import index_key, index_torrent_key
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import Signer, verify_signed_message
from pipeline.urls import join_url
from pipeline.verify import MAX_POINTER_BYTES, VerifySpec, default_state_file, verify_publication
from tests.gpg_helpers import export_keyring, make_key, temp_gnupghome
from tests.integration.conftest import PACKAGES, SigningKey, run_cli
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
    assert report.checked["index_webseed_probes"] == 1
    assert (
        report.summary() == f"OK: sequence 1, {count} packages, {count} torrents, {count} metalinks, 10 webseed probes"
    )
    assert json.loads(state.read_text()) == {"public_url": pub.public_url, "repo": "test", "sequence": 1}

    # the user's defaults: the keyring's only key is pinned, the state goes to $XDG_CACHE_HOME
    again = verify_publication(VerifySpec(public_url=pub.public_url + "/", keyring=pub.key.keyring, sample=2))
    assert again.ok, again.problems
    assert again.checked["webseed_probes"] == 4
    default = default_state_file(pub.public_url)
    assert default.parent == isolated_cache / "mirrorseed" and default.name.startswith("verify-127.0.0.1_")
    assert json.loads(default.read_text())["sequence"] == 1


def test_tampered_index_is_named_and_nothing_is_trusted(pub: Published, tmp_path: Path) -> None:
    index = next((pub.dest / "index").rglob("index.json.zst"))
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0x01
    index.write_bytes(bytes(data))
    state = tmp_path / "state.json"
    report = verify_publication(pub.spec(state_file=state))
    assert not report.ok
    url = pub.url(index)
    assert any(p.startswith(f"{url}: SHA-256 ") and "altered" in p for p in report.problems), report.problems
    assert report.checked["torrents"] == 0  # no record of an unverified index is used
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
    assert report.checked["index"] == report.checked["torrents"] == 0 and report.sequence is None
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
        f"OK: sequence 1, {len(PACKAGES)} packages, 5 torrents, 5 metalinks, 10 webseed probes"
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
    assert len(report.problems) == 1 and "more than the 1048576 bytes expected" in report.problems[0]

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
    assert report.problems == (f"{url}/latest.asc: more than the 1048576 bytes expected: refused (endless data?)",)


def test_validly_signed_pointer_to_a_zstd_bomb_is_cut_off(pub: Published) -> None:
    """A8 at the client: the frame does not declare its size; decompression stops at uncompressed_size."""
    key = pub.key
    current = decode_pointer(
        verify_signed_message((pub.dest / "latest.asc").read_bytes(), keyring=key.keyring, fingerprint=key.fingerprint)
    )
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 4_000_000)
    sha = hashlib.sha256(bomb).hexdigest()
    target = pub.dest / index_key(1, sha)
    target.parent.mkdir(parents=True)
    target.write_bytes(bomb)
    hostile = replace(
        current,
        index=IndexRef(index_key(1, sha), len(bomb), 1000, sha),
        index_torrent=index_torrent_key(1, sha),
    )
    signer = Signer(gnupghome=key.gnupghome, key=key.fingerprint)
    (pub.dest / "latest.asc").write_bytes(signer.sign_message(encode_pointer(hostile)))
    report = verify_publication(pub.spec(state_file=pub.dest.parent / "bomb.json"))
    url = join_url(pub.public_url, index_key(1, sha))
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
