"""The publisher's side of the sharded index (docs/sharded-index.md): which shards, which objects a change
writes, deltas that the real zstd applies, and a destination of the earlier format upgraded."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from pipeline.demo import DebSpec, build_debian_repo
from pipeline.errors import ConfigError
from pipeline.index import apply_delta, decode_pointer, encode_pointer
from pipeline.model import Pointer
from pipeline.run import release
from pipeline.signing import Signer, verify_signed_message
from tests.integration.conftest import SigningKey
from tests.integration.test_incremental import make_flat, settings

pytestmark = pytest.mark.integration


def pointer_of(dest: Path, key: SigningKey) -> Pointer:
    signed = (dest / "latest.asc").read_bytes()
    return decode_pointer(verify_signed_message(signed, keyring=key.keyring, fingerprint=key.fingerprint))


def shard_json(dest: Path, path: str) -> bytes:
    return zstandard.ZstdDecompressor().decompress((dest / path).read_bytes())


def zstd_patched(tmp_path: Path, old_json: bytes, delta: Path) -> bytes:
    """What the real `zstd -d --patch-from=OLD` gives from `delta` (a failure fails the test)."""
    (tmp_path / "old.json").write_bytes(old_json)
    patched = subprocess.run(
        ["zstd", "-d", "-q", "-c", f"--patch-from={tmp_path / 'old.json'}", str(delta)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    return patched.stdout


def test_debian_shards_per_suite_component_and_architecture_with_all_once(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    hello = DebSpec(name="hello", version="1.0-1", description="amd64 only")
    arm = DebSpec(name="arm-demo", version="1.0-1", arch="arm64", description="arm64 only")
    common = DebSpec(name="common-demo", version="1.0-1", arch="all", description="every architecture")
    build_debian_repo(snap, (hello, arm, common), suite="stable", architectures=("amd64", "arm64"))
    build_debian_repo(snap, (hello, common), suite="testing", architectures=("amd64",), reuse_pool=True)
    base = replace(settings(snap, dest, signing_key, tmp_path / "state.sqlite"), format="debian", repo="shards")
    assert release(base).action == "publish"

    pointer = pointer_of(dest, signing_key)
    shards = {shard.name: shard for shard in pointer.shards}
    assert list(shards) == ["stable/main/all", "stable/main/amd64", "stable/main/arm64", "testing/main/all",
                            "testing/main/amd64"]  # fmt: skip
    names = {}
    for name, shard in shards.items():
        raw = shard_json(dest, shard.path)
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == (shard.uncompressed_size, shard.uncompressed_sha256)
        doc = json.loads(raw)
        assert (doc["format"], doc["repo"], doc["shard"]) == ("mirrorseed-index/2", "shards", name)
        assert "sequence" not in doc and "generated" not in doc, "a shard carries no time: unchanged, it keeps its key"
        names[name] = [p["name"] for p in doc["packages"]]
        assert shard.packages == len(doc["packages"]) and shard.delta is None
    assert names == {
        "stable/main/all": ["common-demo"],  # once, though both binary-amd64 and binary-arm64 list it
        "stable/main/amd64": ["hello"],
        "stable/main/arm64": ["arm-demo"],
        "testing/main/all": ["common-demo"],
        "testing/main/amd64": ["hello"],  # the same pool file as in stable: listed in both suites' shards
    }
    torrent = (dest / shards["stable/main/amd64"].torrent).read_bytes()
    assert b"url-list" in torrent and b"/index/shards/" in torrent


def test_a_change_writes_only_its_shard_and_a_delta_that_zstd_applies(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, count=30)
    (snap / "top.bin").write_bytes(b"t" * 3000)
    run = settings(snap, dest, signing_key, tmp_path / "state.sqlite")
    assert release(run).action == "publish"
    first = pointer_of(dest, signing_key)
    assert [shard.name for shard in first.shards] == [".", "dir0", "dir1", "dir2"]

    (snap / "dir1" / "file-04.bin").write_bytes(b"changed" * 5000)
    report = release(run)
    assert report.action == "publish" and report.sequence == 2
    second = pointer_of(dest, signing_key)
    before, after = {s.name: s for s in first.shards}, {s.name: s for s in second.shards}
    assert {name for name in after if after[name] != before[name]} == {"dir1"}, "the other shards are as they were"
    changed = after["dir1"]
    assert changed.delta is not None and changed.delta.from_sha256 == before["dir1"].uncompressed_sha256
    index_keys = sorted(key for key in report.planned_keys if key.startswith("index/"))
    assert index_keys == sorted([changed.path, changed.torrent, changed.delta.path])

    old_json, new_json = shard_json(dest, before["dir1"].path), shard_json(dest, changed.path)
    delta = (dest / changed.delta.path).read_bytes()
    assert (len(delta), hashlib.sha256(delta).hexdigest()) == (changed.delta.size, changed.delta.sha256)
    assert apply_delta(old_json, delta, uncompressed_size=changed.uncompressed_size) == new_json
    assert zstd_patched(tmp_path, old_json, dest / changed.delta.path) == new_json

    assert release(run).action == "noop"


def test_a_destination_of_the_earlier_format_is_upgraded_by_the_next_run(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    run = settings(snap, dest, signing_key, tmp_path / "state.sqlite")
    release(run)
    # what an earlier version left: a mirrorseed-pointer/1 naming one whole index
    old_index = "index/7-0123456789ab/index.json.zst"
    for key in (old_index, old_index + ".sig", "index/7-0123456789ab.torrent"):
        (dest / key).parent.mkdir(parents=True, exist_ok=True)
        (dest / key).write_bytes(b"old")
    legacy = {
        "format": "mirrorseed-pointer/1", "repo": "incr", "sequence": 7, "generated": "2026-11-01T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z", "index_torrent": "index/7-0123456789ab.torrent", "infohash": "a" * 40,
        "magnet": "magnet:?xt=urn:btih:" + "a" * 40,
        "index": {"path": old_index, "size": 3, "uncompressed_size": 3, "sha256": "b" * 64},
    }  # fmt: skip
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    (dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(legacy).encode()))

    report = release(replace(run, state=tmp_path / "fresh.sqlite"))
    assert report.action == "publish" and report.sequence == 8
    upgraded = pointer_of(dest, signing_key)
    assert upgraded.sequence == 8 and [s.name for s in upgraded.shards] == ["dir0", "dir1", "dir2"]
    assert all(s.delta is None for s in upgraded.shards)
    assert (dest / old_index).is_file(), "the earlier index ages out with the retention period, not at once"


def test_a_pointer_larger_than_clients_read_is_refused_before_anything_is_written(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.run

    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    monkeypatch.setattr(pipeline.run, "POINTER_MAX_BYTES", 1000)  # three shards sign to about 2.5 kB
    with pytest.raises(ConfigError, match=r"^latest\.asc: [0-9,]+ bytes with 3 index shards, over the 1,000 bytes"):
        release(settings(snap, dest, signing_key, tmp_path / "state.sqlite"))
    assert not dest.exists() or not any(dest.rglob("*.torrent")), "nothing published"


def test_a_shard_over_the_part_size_comes_in_parts_and_a_change_rewrites_one_part_and_its_delta(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.index

    monkeypatch.setattr(pipeline.index, "PART_MAX_BYTES", 4000)  # dir1's 20 records: about 9 kB of JSON
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, count=60)
    run = settings(snap, dest, signing_key, tmp_path / "state.sqlite")
    assert release(run).action == "publish"
    first = pointer_of(dest, signing_key)
    parts = [shard for shard in first.shards if shard.name == "dir1"]
    assert len(parts) >= 3 and [shard.part for shard in parts] == list(range(len(parts)))
    listed = []
    for shard in parts:
        raw = shard_json(dest, shard.path)
        doc = json.loads(raw)
        assert len(raw) == shard.uncompressed_size <= 4000 and doc["shard"] == "dir1"
        assert shard.packages == len(doc["packages"]) and shard.delta is None
        listed += [package["path"] for package in doc["packages"]]
    assert listed == [f"dir1/file-{i:02d}.bin" for i in range(1, 60, 3)], "every file once, in order"

    # other bytes of the same size: the records keep their lengths, so only the part listing it changes
    target = snap / "dir1" / "file-31.bin"
    target.write_bytes(bytes([200]) * target.stat().st_size)
    report = release(run)
    assert report.action == "publish"
    second = pointer_of(dest, signing_key)
    changed = [shard for shard in second.shards if shard not in first.shards]
    assert [(shard.name, len(second.shards)) for shard in changed] == [("dir1", len(first.shards))]
    before = next(shard for shard in first.shards if (shard.name, shard.part) == ("dir1", changed[0].part))
    delta = changed[0].delta
    assert delta is not None and delta.from_sha256 == before.uncompressed_sha256
    index_keys = sorted(key for key in report.planned_keys if key.startswith("index/"))
    assert index_keys == sorted([changed[0].path, changed[0].torrent, delta.path])
    assert zstd_patched(tmp_path, shard_json(dest, before.path), dest / delta.path) == shard_json(dest, changed[0].path)
    assert release(run).action == "noop"


def test_a_destination_of_pointer_format_2_is_published_again_in_format_3_with_the_same_shards(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap)
    run = settings(snap, dest, signing_key, tmp_path / "state.sqlite")
    assert release(run).action == "publish"
    current = pointer_of(dest, signing_key)
    # what the previous version signed: the same shards, without their part numbers
    payload = json.loads(encode_pointer(current))
    payload["format"] = "mirrorseed-pointer/2"
    for shard in payload["shards"]:
        del shard["part"]
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    (dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(payload, indent=2, sort_keys=True).encode()))

    report = release(run)  # the same state: an unchanged tree, yet its pointer is of the earlier format
    assert report.action == "publish" and report.sequence == current.sequence + 1
    upgraded = pointer_of(dest, signing_key)
    assert not upgraded.outdated and json.loads(encode_pointer(upgraded))["format"] == "mirrorseed-pointer/3"
    assert [(s.name, s.part, s.path, s.torrent) for s in upgraded.shards] == [
        (s.name, 0, s.path, s.torrent) for s in current.shards
    ], "the shards keep their bytes and keys"
    assert release(run).action == "noop"
