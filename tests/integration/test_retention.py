"""Retention: objects a publication of the last `retention` reaches are kept; older ones go after the commit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from pipeline.config import MirrorConfig, Settings
from pipeline.run import release
from pipeline.serve import serve_directory
from tests.integration.conftest import SigningKey

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_unreferenced_objects_are_kept_for_the_retention_window_then_deleted(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    snap.mkdir()
    for name in ("a", "b", "c"):
        (snap / name).mkdir()
        (snap / name / f"{name}.bin").write_bytes(name.encode() * 30_000)
    settings = Settings(
        snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="ret",
        key=signing_key.fingerprint, gnupghome=signing_key.gnupghome, state=tmp_path / "state.sqlite",
        allow_peer_only=True,  # no webseed: this test is about retention
    )  # fmt: skip
    first = release(settings, now=lambda: T0)
    shards = [dest / k for k in first.planned_keys if k.endswith(".json.zst")]
    assert len(shards) == 3, "one shard per top-level directory"
    # the shard of c/: gone from the second publication on, so unreferenced since day 1
    (first_index,) = [p for p in shards if b'"shard":"c"' in zstandard.ZstdDecompressor().decompress(p.read_bytes())]
    kept = [p for p in shards if p != first_index]

    (snap / "c" / "c.bin").unlink()
    second = release(settings, now=lambda: T0 + timedelta(days=1))
    # a listing no pointer reaches goes at once; the first index (1 day old) still names the torrent
    assert second.removed == ("c/c.bin",) and second.deleted_keys == ("browse/c/index.html",)
    assert (dest / "torrents/c/c.bin.torrent").is_file() and not (dest / "browse/c/index.html").exists()

    (snap / "d.bin").write_bytes(b"d" * 5000)
    plan = release(replace(settings, dry_run=True), now=lambda: T0 + timedelta(days=16))
    assert "torrents/c/c.bin.torrent" in plan.deleted_keys
    assert (dest / "torrents/c/c.bin.torrent").is_file()  # a dry run deletes nothing

    third = release(settings, now=lambda: T0 + timedelta(days=16))
    assert third.sequence == 3
    deleted = set(third.deleted_keys)
    assert {"torrents/c/c.bin.torrent", "metalinks/c/c.bin.meta4"} <= deleted
    assert str(first_index.relative_to(dest)) in deleted  # shard c was last current 15 days ago
    assert all(p.is_file() for p in kept), "the shards of a/ and b/ did not change: still current"
    assert not (dest / "torrents/c/c.bin.torrent").exists() and not first_index.exists()
    # everything the current publication reaches is still there
    for key in ("torrents/a/a.bin.torrent", "torrents/b/b.bin.torrent", "torrents/d.bin.torrent", "latest.asc"):
        assert (dest / key).is_file(), key
    assert not any(k.startswith(("torrents/a/", "torrents/b/", "torrents/d")) for k in deleted)


def test_the_lists_of_a_dropped_mirror_go_with_the_next_publication(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    snap.mkdir()
    (snap / "a.bin").write_bytes(b"a" * 30_000)
    with serve_directory(snap) as german, serve_directory(snap) as french:
        both = (MirrorConfig(url=german.url, country="DE"), MirrorConfig(url=french.url, country="FR"))
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="ret",
            key=signing_key.fingerprint, gnupghome=signing_key.gnupghome, state=tmp_path / "state.sqlite",
            mirrors=both,
        )  # fmt: skip
        assert release(settings, now=lambda: T0).action == "publish"
        assert (dest / "mirrors/country/FR.txt").read_text().strip() == french.url.rstrip("/")
        dropped = release(replace(settings, mirrors=both[:1]), now=lambda: T0 + timedelta(hours=1))
    assert dropped.action == "publish"
    assert "mirrors/country/FR.txt" in dropped.deleted_keys and not (dest / "mirrors/country/FR.txt").exists()
    assert (dest / "mirrors/country/DE.txt").is_file() and french.url not in (dest / "mirrors/all.txt").read_text()
