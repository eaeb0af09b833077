"""The swarm, from standard parts: what a release tells the operator's tracker (issue 12, in progress)."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import bencode
from pipeline.config import Settings
from pipeline.index import decode_index
from pipeline.model import Pointer
from pipeline.run import published_records, read_pointer, release
from pipeline.serve import serve_directory
from pipeline.storage import open_storage
from tests.integration.conftest import SigningKey, aria2_command
from tests.integration.test_incremental import make_flat
from tests.integration.test_tracker import DOWNLOAD_TIMEOUT, seeder_command, stop, wait_for_peer
from tests.tracker import Tracker, free_port

pytestmark = pytest.mark.integration


def current(dest: Path, key: SigningKey) -> Pointer:
    """The pointer the destination's latest.asc names (verified)."""
    found = read_pointer(open_storage(str(dest)), repo="swarm", keyring=key.keyring, fingerprint=key.fingerprint)
    assert found is not None
    return found.pointer


def published_infohashes(dest: Path, key: SigningKey) -> set[str]:
    """Every package torrent's infohash, as the shards of the current pointer list them."""
    records = published_records(open_storage(str(dest)), current(dest, key))
    return {r.infohash for r in records if r.infohash}


def test_release_writes_the_tracker_whitelist_of_the_current_publication(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest, whitelist = tmp_path / "snap", tmp_path / "dest", tmp_path / "tracker" / "whitelist.txt"
    make_flat(snap, 5)
    with serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="swarm",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite", tracker_whitelist=whitelist,
        )  # fmt: skip
        dry = release(replace(settings, dry_run=True))
        assert dry.action == "publish" and not whitelist.exists()  # a dry run writes nothing
        first = release(settings)
        listed = whitelist.read_text().split()
        packages = published_infohashes(dest, signing_key)
        shards = set(current(dest, signing_key).infohashes)
        assert len(shards) == 3  # dir0, dir1, dir2
        assert len(packages) == 5 and set(listed) == packages | shards  # + the index shards' torrents
        assert listed == sorted(listed)

        (snap / "dir0" / "file-00.bin").write_bytes(b"changed" * 9000)  # a new version: the old one goes
        second = release(settings)
        assert second.sequence == first.sequence + 1
        now = whitelist.read_text().split()
        assert set(now) & set(listed) != set(listed)
        assert set(now) == published_infohashes(dest, signing_key) | set(current(dest, signing_key).infohashes)
        assert len(now) == 8

        whitelist.unlink()  # a tracker host rebuilt: a no-change run writes it again
        assert release(settings).action == "noop"
        assert whitelist.read_text().split() == now


def test_a_never_announced_package_is_private_webseed_only_and_not_whitelisted(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest, whitelist = tmp_path / "snap", tmp_path / "dest", tmp_path / "whitelist.txt"
    make_flat(snap, 4)  # dir0/file-00, dir1/file-01, dir2/file-02, dir0/file-03
    tracker = "http://127.0.0.1:9/announce"
    with serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="swarm",
            webseeds=(mirror.url,), trackers=(tracker,), key=signing_key.fingerprint,
            gnupghome=signing_key.gnupghome, state=tmp_path / "state.sqlite", tracker_whitelist=whitelist,
            never_announce=("dir1/*",),
        )  # fmt: skip
        assert release(settings).action == "publish"
        secret = bencode.decode_dict((dest / "torrents/dir1/file-01.bin.torrent").read_bytes())
        shared = bencode.decode_dict((dest / "torrents/dir0/file-00.bin.torrent").read_bytes())
        assert b"announce" not in secret.value and secret.value[b"info"][b"private"] == 1  # type: ignore[index]
        assert shared.value[b"announce"] == tracker.encode()
        records = {r.path: r.to_json() for r in published_records(open_storage(str(dest)), current(dest, signing_key))}
        assert "tr=" not in records["dir1/file-01.bin"]["magnet"] and "tr=" in records["dir0/file-00.bin"]["magnet"]
        assert records["dir1/file-01.bin"]["infohash"] == hashlib.sha1(secret.info or b"").hexdigest()
        listed = set(whitelist.read_text().split())
        assert (
            records["dir1/file-01.bin"]["infohash"] not in listed and records["dir0/file-00.bin"]["infohash"] in listed
        )
        assert release(settings).action == "noop"  # stable: the private infohash is computed the same way

        # a private torrent still downloads, from its webseed
        user = tmp_path / "user"
        user.mkdir()
        done = subprocess.run(
            aria2_command("-d", str(user), str(dest / "torrents/dir1/file-01.bin.torrent")),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (user / "file-01.bin").read_bytes() == (snap / "dir1/file-01.bin").read_bytes()


def test_dht_nodes_go_into_announced_torrents_and_the_index_and_a_change_republishes(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, 3)  # dir0/file-00, dir1/file-01, dir2/file-02
    nodes = ("router.example.org:6881", "[2001:db8::1]:6881")
    with serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="swarm",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite", never_announce=("dir1/*",), dht_nodes=nodes,
        )  # fmt: skip
        first = release(settings)
        assert first.action == "publish"
        expected = [[b"router.example.org", 6881], [b"2001:db8::1", 6881]]
        shared = bencode.decode_dict((dest / "torrents/dir0/file-00.bin.torrent").read_bytes()).value
        secret = bencode.decode_dict((dest / "torrents/dir1/file-01.bin.torrent").read_bytes()).value
        assert shared[b"nodes"] == expected and b"nodes" not in secret  # never announced: no nodes either
        shards = current(dest, signing_key).shards
        assert len(shards) == 3  # dir0, dir1, dir2: each a torrent with the nodes, a header naming them
        for shard in shards:
            assert bencode.decode_dict((dest / shard.torrent).read_bytes()).value[b"nodes"] == expected
            doc = decode_index((dest / shard.path).read_bytes(), uncompressed_size=shard.uncompressed_size)
            assert doc["dht_nodes"] == list(nodes)
        recipe = (dest / "index.html").read_text()
        assert "--dht-entry-point=router.example.org:6881" in recipe

        assert release(settings).action == "noop"  # same nodes: nothing to publish
        second = release(replace(settings, dht_nodes=nodes[:1]))
        assert second.action == "publish" and second.sequence == first.sequence + 1
        third = release(replace(settings, dht_nodes=()))  # back to none: the header key goes, torrents too
        assert third.action == "publish"
        shared = bencode.decode_dict((dest / "torrents/dir0/file-00.bin.torrent").read_bytes()).value
        assert b"nodes" not in shared
        assert release(replace(settings, dht_nodes=())).action == "noop"


def test_release_feeds_a_real_tracker_and_a_peer_serves_with_every_mirror_dead(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    """Points 1, 2 and 7 end to end: the torrents name the tracker, the release writes opentracker's whitelist
    and SIGHUPs it (by its PID file), and a fresh aria2 gets the exact bytes from a peer, the mirror dead."""
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, 3)
    with Tracker() as tracker:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="swarm",
            webseeds=("http://127.0.0.1:9/dead",), allow_peer_only=True, trackers=(tracker.announce_url,),
            key=signing_key.fingerprint, gnupghome=signing_key.gnupghome, state=tmp_path / "state.sqlite",
            tracker_whitelist=tracker.whitelist_path, tracker_pid_file=tracker.pid_file,
        )  # fmt: skip
        release(settings)
        torrent = dest / "torrents/dir1/file-01.bin.torrent"
        infohash = hashlib.sha1(bencode.decode_dict(torrent.read_bytes()).info or b"").hexdigest()
        tracker.wait_tracked([infohash])  # the release's SIGHUP (by tracker.pid_file) made it re-read the whitelist

        seed_dir = tmp_path / "seed"  # a copy: a seeder never writes into the snapshot
        seed_dir.mkdir()
        (seed_dir / "file-01.bin").write_bytes((snap / "dir1/file-01.bin").read_bytes())
        seed_port = free_port()
        seeder = subprocess.Popen(
            seeder_command(torrent, seed_dir, seed_port), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_peer(tracker, infohash, seed_port, seeder)
            user = tmp_path / "user"
            done = subprocess.run(
                aria2_command(f"--listen-port={free_port()}", "--interface=127.0.0.1", "-d", str(user), str(torrent)),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False,
            )  # fmt: skip
        finally:
            stop(seeder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (user / "file-01.bin").read_bytes() == (snap / "dir1/file-01.bin").read_bytes()
