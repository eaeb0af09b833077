"""Defects an adversarial run found (lost objects, rolled-back pointers, stale state entries, peer-only
publications), each reproduced as it was found: these tests fail on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.demo import build_debian_repo
from pipeline.errors import PipelineError
from pipeline.run import release
from pipeline.serve import serve_directory
from tests.integration.conftest import PACKAGES, SigningKey, run_cli
from tests.integration.test_incremental import make_flat

pytestmark = pytest.mark.integration


@pytest.fixture
def published(tmp_path: Path, signing_key: SigningKey) -> Iterator[tuple[Settings, Path, Path]]:
    """(settings, snapshot, destination) of a flat snapshot of 6 files, served by a live mirror on 127.0.0.1
    and published once (sequence 1)."""
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, 6)  # dir0/file-00, dir1/file-01, dir2/file-02, dir0/file-03, …
    with serve_directory(snap) as mirror:
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="hard",
            webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite",
        )  # fmt: skip
        first = release(settings)
        assert first.action == "publish" and first.sequence == 1
        yield settings, snap, dest


def index_entries(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in (dest / "index").rglob("*") if p.is_file())


# --- 4. lost objects are restored -------------------------------------------------------------------


def test_a_lost_signing_key_makes_the_run_put_back_every_lost_object(
    published: tuple[Settings, Path, Path],
) -> None:
    """The probe finds the signing key gone: the run reads the whole destination before it writes, and so
    puts back the package objects and pages lost with it, audit or not."""
    settings, _, dest = published
    lost = {
        key: (dest / key).read_bytes()
        for key in (
            "torrents/dir0/file-00.bin.torrent",
            "metalinks/dir1/file-01.bin.meta4",
            "browse/dir0/index.html",
            "signing-key.gpg",
        )
    }
    for key in lost:
        (dest / key).unlink()
    altered = dest / "metalinks/dir2/file-02.bin.meta4"
    original = altered.read_bytes()
    altered.write_bytes(original.replace(b"<size>", b"<size>1"))

    again = release(settings)
    assert again.action == "finish" and again.sequence == 1  # no new index: the same publication, complete
    for key, data in lost.items():
        assert (dest / key).read_bytes() == data, key
    assert altered.read_bytes() == original
    assert set(again.planned_keys) >= {*lost, "metalinks/dir2/file-02.bin.meta4"}

    third = release(settings)
    assert third.action == "noop" and third.objects_put == 0


def test_package_objects_wait_for_the_audit_and_the_fixed_objects_do_not(
    published: tuple[Settings, Path, Path],
) -> None:
    """A run that audits nothing probes, key by key, only the objects that do not grow with the snapshot
    (index, signing keys, clients, top pages): one of them deleted is put back at once. A package object or
    browse page deleted or altered is put back when `audit_interval` has passed since the last audit, or
    with `audit` (which lists the destination and checks sizes, ETags and the manifest)."""
    settings, _, dest = published
    altered = dest / "metalinks/dir2/file-02.bin.meta4"
    original = altered.read_bytes()
    altered.write_bytes(original.replace(b"<size>", b"<size>1"))
    torrent, page = dest / "torrents/dir0/file-00.bin.torrent", dest / "browse/dir1/index.html"
    torrent_bytes, page_bytes = torrent.read_bytes(), page.read_bytes()
    torrent.unlink()
    page.unlink()

    within = release(settings)  # the publish just audited the destination: a probe only
    assert within.action == "noop" and altered.read_bytes() != original
    assert not torrent.exists() and not page.exists()

    audited = release(replace(settings, audit=True))
    assert audited.action == "finish" and altered.read_bytes() == original
    assert torrent.read_bytes() == torrent_bytes and page.read_bytes() == page_bytes
    assert {"metalinks/dir2/file-02.bin.meta4", "torrents/dir0/file-00.bin.torrent"} <= set(audited.planned_keys)

    altered.write_bytes(original.replace(b"<size>", b"<size>2"))
    every_run = release(replace(settings, audit_interval=timedelta(0)))
    assert every_run.action == "finish" and altered.read_bytes() == original

    for key in ("signing-key.gpg", "index.html", "clients/apt/mirrorseed"):
        data = (dest / key).read_bytes()
        (dest / key).unlink()
        again = release(settings)  # audited a moment ago, yet the probe finds it gone
        assert again.action == "finish" and (dest / key).read_bytes() == data, key
    assert release(settings).action == "noop"


def test_lost_objects_are_put_back_even_when_the_state_cache_is_gone(
    published: tuple[Settings, Path, Path], tmp_path: Path
) -> None:
    settings, _, dest = published
    (dest / "torrents/dir0/file-03.bin.torrent").unlink()
    again = release(replace(settings, state=tmp_path / "other.sqlite"))
    assert again.action == "finish" and (dest / "torrents/dir0/file-03.bin.torrent").is_file()


def test_a_lost_index_object_is_replaced_by_a_new_sequence(published: tuple[Settings, Path, Path]) -> None:
    settings, _, dest = published
    torrent = next(p for p in (dest / "index/shards").iterdir() if p.suffix == ".torrent")
    data = torrent.read_bytes()
    torrent.unlink()
    again = release(settings)
    assert again.action == "publish" and again.sequence == 2
    assert torrent.read_bytes() == data  # content-addressed: the same shard torrent, put back under its key


# --- 5. a rolled-back destination never reuses a sequence -------------------------------------------


def test_rolled_back_pointer_is_published_above_the_highest_sequence(published: tuple[Settings, Path, Path]) -> None:
    settings, snap, dest = published
    pointer_one = (dest / "latest.asc").read_bytes()
    for n in (2, 3):
        (snap / f"dir0/new-{n}.bin").write_bytes(b"n" * 5000 * n)
        assert release(settings).sequence == n
    before = {key: (dest / key).read_bytes() for key in index_entries(dest)}

    (dest / "latest.asc").write_bytes(pointer_one)  # the destination is rolled back to sequence 1
    (snap / "dir1/new-4.bin").write_bytes(b"four" * 3000)
    report = release(settings)
    assert report.action == "publish" and report.sequence == 4  # never a second "sequence 2"
    for key, data in before.items():  # the signed states 2 and 3 are untouched
        assert (dest / key).read_bytes() == data
    assert [k for k in index_entries(dest) if k.startswith("index/2-")] == [
        k for k in before if k.startswith("index/2-")
    ]


def test_rolled_back_pointer_without_changes_is_not_resigned_at_its_old_sequence(
    published: tuple[Settings, Path, Path],
) -> None:
    settings, snap, dest = published
    pointer_one = (dest / "latest.asc").read_bytes()
    (snap / "dir0/extra.bin").write_bytes(b"x" * 7000)
    assert release(settings).sequence == 2
    (snap / "dir0/extra.bin").unlink()  # the snapshot is again what sequence 1 published
    (dest / "latest.asc").write_bytes(pointer_one)
    report = release(settings)
    assert report.action == "publish" and report.sequence == 3


# --- 7. a stale state entry is hashed again before the mirror is blamed -----------------------------


def test_file_rewritten_in_place_with_mtime_restored_is_hashed_again(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path
) -> None:
    dest, state = tmp_path / "dest", tmp_path / "state.sqlite"
    with serve_directory(debian_repo) as mirror:
        settings = Settings(
            snapshot=debian_repo, format="debian", dest=str(dest), public_url="http://127.0.0.1:9/pub",
            repo="stale", webseeds=(mirror.url,), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=state,
        )  # fmt: skip
        assert release(settings).sequence == 1
        deb = next(debian_repo.glob("pool/**/hello_*.deb"))
        stat = deb.stat()
        with deb.open("r+b") as handle:  # in place: same inode, same size, different bytes
            handle.seek(stat.st_size - 1)
            last = handle.read(1)
            handle.seek(stat.st_size - 1)
            handle.write(bytes([last[0] ^ 0xFF]))
        os.utime(deb, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what some sync tools do
        assert deb.stat().st_mtime_ns == stat.st_mtime_ns and deb.stat().st_ino == stat.st_ino
        build_debian_repo(debian_repo, PACKAGES, reuse_pool=True)  # Packages now lists the new SHA-256
        report = release(settings)
    assert report.action == "publish" and report.sequence == 2
    assert report.files_hashed == 1
    assert [p for p in report.changed if p.endswith(deb.name)]


def test_file_that_differs_from_both_cache_and_metadata_is_still_refused(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path
) -> None:
    dest, state = tmp_path / "dest", tmp_path / "state.sqlite"
    settings = Settings(
        snapshot=debian_repo, format="debian", dest=str(dest), public_url="http://127.0.0.1:9/pub",
        repo="stale", webseeds=("http://127.0.0.1:9/m",), key=signing_key.fingerprint,
        gnupghome=signing_key.gnupghome, state=state, allow_peer_only=True,
    )  # fmt: skip
    release(settings)
    deb = next(debian_repo.glob("pool/**/hello_*.deb"))
    stat = deb.stat()

    def flip_last_byte(mask: int) -> None:
        with deb.open("r+b") as handle:
            handle.seek(stat.st_size - 1)
            last = handle.read(1)
            handle.seek(stat.st_size - 1)
            handle.write(bytes([last[0] ^ mask]))
        os.utime(deb, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    flip_last_byte(0xFF)
    build_debian_repo(debian_repo, PACKAGES, reuse_pool=True)  # Packages lists these bytes ...
    flip_last_byte(0x0F)  # ... but the file changes again: cache, metadata and disk all differ
    with pytest.raises(PipelineError, match=r"hello_.*SHA-256 .* != repository metadata .*re-sync the mirror"):
        release(settings)


# --- 6. release and verify agree: a package nobody can serve is not published -------------------------


def release_cli(snapshot: Path, dest: Path, key: SigningKey, *extra: str) -> list[str]:
    return [
        "release", "--snapshot", str(snapshot), "--dest", str(dest), "--key", key.fingerprint, "--repo", "peer",
        "--format", "flat", "--public-url", "http://127.0.0.1:9/pub", "--state", str(dest.parent / "s.sqlite"),
        "--json", *extra,
    ]  # fmt: skip


def test_release_refuses_when_every_webseed_is_down(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    env = {"GNUPGHOME": str(signing_key.gnupghome), "MIRRORSEED_MIRROR_TIMEOUT": "2"}
    done = run_cli(*release_cli(snap, dest, signing_key, "--webseed", "http://127.0.0.1:9/debian"), env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "http://127.0.0.1:9/debian" in lines[0] and "--allow-peer-only" in lines[0]
    assert "no webseed" in lines[0] and "Traceback" not in done.stderr
    assert not (dest / "latest.asc").exists()


def test_release_without_any_webseed_is_refused(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    done = run_cli(*release_cli(snap, dest, signing_key), env={"GNUPGHOME": str(signing_key.gnupghome)})
    assert done.returncode != 0 and "no webseed" in done.stderr and "--webseed" in done.stderr
    assert not (dest / "latest.asc").exists()


def test_peer_only_release_is_published_and_verified_when_both_are_told(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    dest.mkdir()
    keyring = tmp_path / "pinned.gpg"
    shutil.copy(signing_key.keyring, keyring)
    env = {"GNUPGHOME": str(signing_key.gnupghome), "MIRRORSEED_MIRROR_TIMEOUT": "2"}
    with serve_directory(dest) as public:
        args = release_cli(snap, dest, signing_key, "--webseed", "http://127.0.0.1:9/debian", "--allow-peer-only")
        args[args.index("--public-url") + 1] = public.url
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["action"] == "publish"
        check = ["verify", "--public-url", public.url, "--keyring", str(keyring), "--state-file", str(tmp_path / "v")]
        strict = run_cli(*check)
        lenient = run_cli(*check, "--allow-peer-only")
    assert strict.returncode != 0 and "no url-list" in strict.stdout + strict.stderr
    assert "--allow-peer-only" in strict.stdout + strict.stderr
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
