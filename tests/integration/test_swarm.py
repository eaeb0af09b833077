"""The swarm, from standard parts: what a release tells the operator's tracker (issue 12, in progress)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from pipeline.config import Settings
from pipeline.run import release
from pipeline.serve import serve_directory
from tests.integration.conftest import SigningKey
from tests.integration.test_incremental import make_flat

pytestmark = pytest.mark.integration


def published_infohashes(dest: Path) -> set[str]:
    """Every package torrent's infohash, as the newest published index lists them."""
    index_path = max((dest / "index").rglob("index.json.zst"), key=lambda p: int(p.parent.name.split("-")[0]))
    index = json.loads(zstandard.ZstdDecompressor().decompress(index_path.read_bytes()))
    return {p["infohash"] for p in index["packages"] if p["infohash"]}


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
        packages = published_infohashes(dest)
        assert len(packages) == 5 and packages < set(listed) and len(listed) == 6  # + the index torrent
        assert listed == sorted(listed)

        (snap / "dir0" / "file-00.bin").write_bytes(b"changed" * 9000)  # a new version: the old one goes
        second = release(settings)
        assert second.sequence == first.sequence + 1
        now = whitelist.read_text().split()
        assert set(now) & set(listed) != set(listed) and published_infohashes(dest) < set(now) and len(now) == 6

        whitelist.unlink()  # a tracker host rebuilt: a no-change run writes it again
        assert release(settings).action == "noop"
        assert whitelist.read_text().split() == now
