"""A run killed (SIGKILL) at each fault point of the publish stage leaves the old or the new publication, complete.

A client only ever sees a pointer whose index, torrents and metalinks all exist and agree; re-running finishes
the publication without re-uploading what is already there.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torf
import zstandard

from pipeline.demo import DebSpec, build_debian_repo
from pipeline.signing import verify_signed_message
from tests.integration.conftest import PACKAGES, SigningKey, run_cli

pytestmark = pytest.mark.integration

Fetch = Callable[[str], bytes | None]

FAULT_POINTS = ["content:1", "content:3", "index", "pointer", "listings", "delete"]


def client_view(fetch: Fetch, key: SigningKey) -> int:
    """What a user sees: verify latest.asc, the index it names, and every object the index names. -> sequence."""
    signed = fetch("latest.asc")
    assert signed is not None, "latest.asc missing"
    pointer = json.loads(verify_signed_message(signed, keyring=key.keyring, fingerprint=key.fingerprint))
    records = []
    for shard in pointer["shards"]:
        shard_zst = fetch(shard["path"])
        assert shard_zst is not None, shard["path"]
        assert hashlib.sha256(shard_zst).hexdigest() == shard["sha256"]
        assert fetch(shard["torrent"]) is not None
        assert shard["delta"] is None or fetch(shard["delta"]["path"]) is not None
        records += json.loads(zstandard.ZstdDecompressor().decompress(shard_zst))["packages"]
    assert records, "the shards list the packages"
    for record in records:
        assert fetch(record["metalink"]) is not None, record["metalink"]
        if record["torrent"] is not None:
            torrent = fetch(record["torrent"])
            assert torrent is not None, record["torrent"]
            assert torf.Torrent.read_stream(io.BytesIO(torrent)).infohash == record["infohash"], record["path"]
    sequence: int = pointer["sequence"]
    return sequence


def release_args(snapshot: Path, dest: str, key: SigningKey) -> list[str]:
    return [
        "release", "--snapshot", str(snapshot), "--dest", dest, "--key", key.fingerprint, "--repo", "crash",
        "--public-url", "http://127.0.0.1:9/pub", "--webseed", "http://127.0.0.1:9/mirror", "--allow-peer-only",
        "--json",
    ]  # fmt: skip


def crash_and_recover(
    debian_repo: Path, dest: str, fetch: Fetch, key: SigningKey, fault: str, env: dict[str, str]
) -> None:
    env = {**env, "GNUPGHOME": str(key.gnupghome)}
    first = run_cli(*release_args(debian_repo, dest, key), env=env)
    assert first.returncode == 0, first.stderr
    assert client_view(fetch, key) == 1

    # the next sync: two packages added, one removed -> a run that is killed at `fault`
    for pool_deb in debian_repo.glob("pool/**/tilde-demo_*.deb"):
        pool_deb.unlink()
    build_debian_repo(
        debian_repo,
        (
            *[p for p in PACKAGES if p.name != "tilde-demo"],
            DebSpec(name="added-one", version="1.0-1", description="new"),
            DebSpec(name="added-two", version="2.0-1", description="new too"),
        ),
    )
    killed = run_cli(*release_args(debian_repo, dest, key), env={**env, "MIRRORSEED_FAULT": fault})
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (killed.returncode, killed.stderr)
    seen = client_view(fetch, key)
    assert seen == (1 if fault.startswith(("content", "index", "pointer")) else 2)

    rerun = run_cli(*release_args(debian_repo, dest, key), env=env)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert client_view(fetch, key) == 2
    if fault in ("index", "pointer"):
        # every torrent and metalink went up before the kill: none is uploaded again
        assert not [k for k in report["planned_keys"] if k.startswith(("torrents/", "metalinks/"))]
    if fault.startswith("content"):
        uploaded = int(fault.split(":")[1])
        again = [k for k in report["planned_keys"] if k.startswith(("torrents/", "metalinks/"))]
        assert len(again) == 2 * 2 - uploaded  # two new packages: a torrent and a metalink each
    if fault in ("listings", "delete"):
        assert report["action"] == "finish" and report["sequence"] == 2
        assert not [k for k in report["planned_keys"] if k.startswith(("torrents/", "metalinks/", "index/"))]
    front = fetch("index.html")
    assert front is not None and b"Index sequence 2," in front
    browse = fetch("browse/pool/main/a/added-one/index.html")
    assert browse is not None and b"added-one" in browse
    final = run_cli(*release_args(debian_repo, dest, key), env=env)
    assert json.loads(final.stdout)["action"] == "noop"


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_local_destination_survives_a_kill_at_every_point(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path, fault: str
) -> None:
    dest = tmp_path / "dest"

    def fetch(key: str) -> bytes | None:
        path = dest / key
        return path.read_bytes() if path.is_file() else None

    crash_and_recover(debian_repo, str(dest), fetch, signing_key, fault, env={})


def test_rerun_after_a_crash_before_the_pointer_reuses_the_orphan_shards(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run dies after uploading its shards but before its pointer; the re-run, an hour later, builds the same
    shard bytes (a shard carries no time), finds them in the destination and writes none of them again."""
    import pipeline.publish
    from pipeline.config import Settings
    from pipeline.run import release

    settings = Settings(
        snapshot=debian_repo, format="debian", dest=str(tmp_path / "dest"), public_url="http://127.0.0.1:9/p",
        repo="crash", webseeds=("http://127.0.0.1:9/m",), allow_peer_only=True, key=signing_key.fingerprint,
        gnupghome=signing_key.gnupghome,
    )  # fmt: skip
    moment = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    original = pipeline.publish.fault_point

    def die_before_pointer(name: str, count: int = 0) -> None:
        if name == "pointer":
            raise KeyboardInterrupt("simulated crash")
        original(name, count)

    monkeypatch.setattr(pipeline.publish, "fault_point", die_before_pointer)
    with pytest.raises(KeyboardInterrupt):
        release(settings, now=lambda: moment)
    index_dir = tmp_path / "dest" / "index"
    orphans = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*") if p.is_file()}
    assert not (tmp_path / "dest" / "latest.asc").exists()
    assert sorted(p.name.rsplit(".", 2)[-2:][-1] for p in orphans) == ["torrent", "torrent", "zst", "zst"]

    monkeypatch.setattr(pipeline.publish, "fault_point", original)
    report = release(settings, now=lambda: moment + timedelta(hours=1))
    assert report.action == "publish" and report.sequence == 1
    assert {p: p.stat().st_mtime_ns for p in index_dir.rglob("*") if p.is_file()} == orphans, "nothing rewritten"
    assert not any(key.startswith("index/") for key in report.planned_keys)

    def fetch(key: str) -> bytes | None:
        path = tmp_path / "dest" / key
        return path.read_bytes() if path.is_file() else None

    assert client_view(fetch, signing_key) == 1


def test_objects_a_killed_run_left_partly_written_are_written_again(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path
) -> None:
    """A new key is created in place on local disk: a run killed while writing one leaves it partly written.
    The next run (an audit: the killed run recorded none) finds it unlike its bytes and writes it whole."""
    dest = tmp_path / "dest"
    env = {"GNUPGHOME": str(signing_key.gnupghome)}
    assert run_cli(*release_args(debian_repo, str(dest), signing_key), env=env).returncode == 0
    build_debian_repo(debian_repo, (*PACKAGES, DebSpec(name="added-one", version="1.0-1", description="new")))
    killed = run_cli(*release_args(debian_repo, str(dest), signing_key), env={**env, "MIRRORSEED_FAULT": "index"})
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr
    partial = sorted(p for p in dest.rglob("added-one_*") if p.parent.name == "added-one")
    assert [p.suffix for p in partial] == [".meta4", ".torrent"], partial
    whole = {p: p.read_bytes() for p in partial}
    for path in partial:
        path.write_bytes(whole[path][: len(whole[path]) // 2])  # as a kill in the middle of its write leaves it

    rerun = run_cli(*release_args(debian_repo, str(dest), signing_key), env=env)
    assert rerun.returncode == 0, rerun.stderr
    planned = json.loads(rerun.stdout)["planned_keys"]
    assert sorted(str(p.relative_to(dest)) for p in partial) == sorted(
        k for k in planned if k.startswith(("torrents/", "metalinks/"))
    )
    assert {p: p.read_bytes() for p in partial} == whole

    def fetch(key: str) -> bytes | None:
        path = dest / key
        return path.read_bytes() if path.is_file() else None

    assert client_view(fetch, signing_key) == 2
