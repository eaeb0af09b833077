"""The published scripts and the sharded index (docs/sharded-index.md), with real parts: a release into a
folder served on 127.0.0.1, the published recipe.sh / update.sh run with bash (aria2c, gpgv, zstd, jq) in a
user's folder, the destination's HTTP requests counted from its server's log.

- a recipe following one shard (MIRRORSEED_SHARDS) fetches that shard's objects and no other;
- a second publication with 1 % of one shard's packages changed reaches the recipe as the shard's delta
  (zstd --patch-from over the JSON it kept), never the new shard itself;
- a pointer of another format, a pattern matching no shard, a tampered delta or shard: one line, exit 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import bencode
from pipeline.config import Settings
from pipeline.demo import build_debian_repo
from pipeline.index import POINTER_FORMAT
from pipeline.objects import RECIPE_KEY, UPDATE_KEY
from pipeline.run import release
from pipeline.serve import serve_directory
from tests.integration.conftest import PACKAGES, SigningKey
from tests.mirror_servers import RequestLog, request_log
from tests.tools import require_tools

pytestmark = pytest.mark.integration

RECIPE_TIMEOUT = 120  # the script bounds each download itself; this bounds the whole run


@pytest.fixture(autouse=True)
def tools() -> None:
    require_tools("aria2c", "bash", "gpg", "gpgv", "jq", "zstd", "sha256sum", "timeout")


@dataclass
class World:
    snapshot: Path
    dest: Path
    public_url: str
    mirror_url: str
    key: SigningKey
    format: str
    log: RequestLog

    def publish(self) -> int:
        report = release(
            Settings(
                snapshot=self.snapshot,
                format=self.format,
                dest=str(self.dest),
                public_url=self.public_url,
                repo="shards",
                webseeds=(self.mirror_url,),
                key=self.key.fingerprint,
                gnupghome=self.key.gnupghome,
            )
        )
        assert report.action == "publish"
        return report.sequence

    def pointer(self) -> dict[str, Any]:
        """The payload of the destination's latest.asc (verified by gpgv with the test key)."""
        done = subprocess.run(
            ["gpgv", "--keyring", str(self.key.keyring), "--output", "-", str(self.dest / "latest.asc")],
            capture_output=True,
            timeout=60,
            check=True,
        )
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def shards(self) -> dict[str, dict[str, Any]]:
        shards = self.pointer()["shards"]
        assert isinstance(shards, list)
        return {shard["name"]: shard for shard in shards}

    def run(self, user: Path, *args: str, script: str = RECIPE_KEY, **env: str) -> subprocess.CompletedProcess[str]:
        """The published `script` run with bash in `user` (HOME there: no aria2 configuration, its own state)."""
        user.mkdir(exist_ok=True)
        (user / script).write_bytes((self.dest / script).read_bytes())
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSEED_")}
        environment |= {"HOME": str(user), "MIRRORSEED_LPD": "false", **env}
        return subprocess.run(
            ["bash", script, *args], cwd=user, env=environment, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=RECIPE_TIMEOUT, check=False,
        )  # fmt: skip

    def requested(self) -> list[str]:
        """The paths under index/ the destination served (GET, any status), in order."""
        return [path.lstrip("/") for method, path, _ in self.log.under("index") if method == "GET"]


@pytest.fixture
def debian(debian_repo: Path, servers: tuple[Path, str, str], signing_key: SigningKey) -> Iterator[World]:
    dest, public_url, mirror_url = servers
    with request_log() as log:
        yield World(debian_repo, dest, public_url, mirror_url, signing_key, "debian", log)


def make_flat(root: Path, count: int) -> None:
    """`count` small files in pool/ (one shard) and two at the top (the `.` shard)."""
    for i in range(count):
        path = root / "pool" / f"file-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * (8 + i % 5))
    for name in ("README", "TIME"):
        (root / name).write_text(f"{name}\n")


@pytest.fixture
def flat(tmp_path: Path, signing_key: SigningKey) -> Iterator[World]:
    snapshot = tmp_path / "flat"
    make_flat(snapshot, 100)
    dest = tmp_path / "public"
    dest.mkdir()
    with request_log() as log, serve_directory(dest) as public, serve_directory(snapshot) as mirror:
        yield World(snapshot, dest, public.url, mirror.url, signing_key, "flat", log)


def kept(user: Path) -> set[str]:
    """The shard JSONs the scripts keep: shards/<SHA-256>.json, by SHA-256."""
    return {p.name.removesuffix(".json") for p in (user / "shards").iterdir()}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- choosing shards ---------------------------------------------------------------------------------


def test_a_recipe_following_one_shard_fetches_only_that_shard(debian: World, tmp_path: Path) -> None:
    debian.publish()
    shards = debian.shards()
    amd64 = next(name for name in shards if name.endswith("/amd64"))
    suite = amd64.split("/")[0]
    assert set(shards) == {f"{suite}/main/amd64", f"{suite}/main/all"}
    # the recipe shows how to follow one suite and architecture (the snapshot's first), which matches
    recipe = (debian.dest / RECIPE_KEY).read_text()
    assert f"#    For example: MIRRORSEED_SHARDS='{suite}/*/amd64 {suite}/*/all' bash recipe.sh\n" in recipe

    debian.log.clear()
    user = tmp_path / "user"
    done = debian.run(user, "hello", MIRRORSEED_SHARDS=f"{suite}/*/amd64")
    assert done.returncode == 0, done.stdout + done.stderr
    chosen = shards[amd64]
    assert sorted(debian.requested()) == sorted([chosen["torrent"], chosen["path"]])
    assert kept(user) == {chosen["uncompressed_sha256"]}
    assert sorted(p.name for p in (user / "index" / "shards").iterdir()) == [str(chosen["path"]).rsplit("/", 1)[1]]
    index = json.loads((user / "index.json").read_text())
    assert len(index["packages"]) == chosen["packages"] == 4
    assert all(p["arch"] == "amd64" for p in index["packages"])
    assert [p.name for p in (user / "packages").iterdir()] == ["hello_2.10-3_amd64.deb"]
    assert f"shard {amd64}: fetched" in done.stdout
    done = debian.run(user, "markup-demo", MIRRORSEED_SHARDS=f"{suite}/*/amd64")  # in the other shard
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"markup-demo: not in the current index (the shards MIRRORSEED_SHARDS={suite}/*/amd64 follows; "
        "unset it for all)"
    )

    # following more (every shard) fetches just the other one; the first is kept
    debian.log.clear()
    done = debian.run(user, "markup-demo")
    assert done.returncode == 0, done.stdout + done.stderr
    other = shards[f"{suite}/main/all"]
    assert sorted(debian.requested()) == sorted([other["torrent"], other["path"]])
    assert f"shard {amd64}: kept" in done.stdout
    assert kept(user) == {chosen["uncompressed_sha256"], other["uncompressed_sha256"]}
    assert len(json.loads((user / "index.json").read_text())["packages"]) == 5

    # update.sh in the same folder, back to one shard: nothing of the index fetched again, the other shard's
    # JSON kept (the pointer still names it), index.json that shard's packages only
    debian.log.clear()
    done = debian.run(user, "hello", "tilde-demo", script=UPDATE_KEY, MIRRORSEED_SHARDS=f"{suite}/*/amd64")
    assert done.returncode == 0, done.stdout + done.stderr
    assert debian.requested() == [] and f"shard {amd64}: kept" in done.stdout
    assert len(json.loads((user / "index.json").read_text())["packages"]) == 4
    assert sorted(p.name for p in (user / "packages").iterdir()) == [
        "hello_2.10-3_amd64.deb", "markup-demo_1.0-1_all.deb", "tilde-demo_1.0~rc1-1_amd64.deb",
    ]  # fmt: skip


def test_a_file_in_two_shards_is_listed_once(
    debian_repo: Path, servers: tuple[Path, str, str], signing_key: SigningKey, tmp_path: Path
) -> None:
    """Two suites list the same pool files: each file is in two shards, once in index.json."""
    build_debian_repo(debian_repo, PACKAGES, suite="testing", reuse_pool=True)
    dest, public_url, mirror_url = servers
    with request_log() as log:
        world = World(debian_repo, dest, public_url, mirror_url, signing_key, "debian", log)
        world.publish()
        shards = world.shards()
        assert set(shards) == {f"{s}/main/{a}" for s in ("stable", "testing") for a in ("amd64", "all")}
        user = tmp_path / "user"
        done = world.run(user, "hello")
        assert done.returncode == 0, done.stdout + done.stderr
        paths = [p["path"] for p in json.loads((user / "index.json").read_text())["packages"]]
        assert len(paths) == len(PACKAGES) and paths == sorted(paths)
        assert len(kept(user)) == 4


def test_a_pattern_matching_no_shard_is_one_line_naming_the_shards(debian: World, tmp_path: Path) -> None:
    debian.publish()
    names = sorted(debian.shards())
    debian.log.clear()
    user = tmp_path / "user"
    done = debian.run(user, MIRRORSEED_SHARDS="*/amd64 trixie/*")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"MIRRORSEED_SHARDS: trixie/* matches no shard of index 1; its shards: {' '.join(names)}"
    )
    assert debian.requested() == [] and not (user / "index.json").exists()


# --- a new publication: the delta ----------------------------------------------------------------------


def change_one_file(world: World) -> None:
    """1 % of the pool/ shard: one file of 100 gets other bytes."""
    (world.snapshot / "pool" / "file-042.bin").write_bytes(b"changed " * 100)


def test_a_changed_shard_comes_as_its_delta(flat: World, tmp_path: Path) -> None:
    assert flat.publish() == 1
    first = flat.shards()
    assert set(first) == {".", "pool"} and first["pool"]["packages"] == 100
    user = tmp_path / "user"
    legacy = user / "index" / "3-0123456789ab"  # what the scripts kept of a mirrorseed-index/1: deleted
    legacy.mkdir(parents=True)
    (legacy / "index.json.zst").write_bytes(b"old")
    done = flat.run(user, "pool/file-001.bin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert kept(user) == {first["pool"]["uncompressed_sha256"], first["."]["uncompressed_sha256"]}
    assert sorted(p.name for p in (user / "index").iterdir()) == ["shards"]

    change_one_file(flat)
    assert flat.publish() == 2
    second = flat.shards()
    assert second["."] == first["."]  # unchanged: same object, no delta
    pool = second["pool"]
    delta = pool["delta"]
    assert isinstance(delta, dict) and delta["from_sha256"] == first["pool"]["uncompressed_sha256"]
    assert int(delta["size"]) * 10 < int(pool["size"])
    # the new shard and its torrent are not even there: the recipe must build it from the delta
    (flat.dest / str(pool["path"])).unlink()
    (flat.dest / str(pool["torrent"])).unlink()

    flat.log.clear()
    done = flat.run(user, "pool/file-042.bin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert flat.requested() == [delta["path"]]
    assert f"shard pool: updated by a delta of {delta['size']} bytes" in done.stdout
    assert "shard .: kept" in done.stdout
    # the old JSON is gone, the new one checks out; the old compressed shard is deleted too
    assert kept(user) == {pool["uncompressed_sha256"], first["."]["uncompressed_sha256"]}
    assert sha256_file(user / "shards" / f"{pool['uncompressed_sha256']}.json") == pool["uncompressed_sha256"]
    assert sorted(p.name for p in (user / "index" / "shards").iterdir()) == [str(first["."]["path"]).rsplit("/")[-1]]
    assert (user / "packages" / "file-042.bin").read_bytes() == b"changed " * 100
    index = json.loads((user / "index.json").read_text())
    assert [p["path"] for p in index["packages"]] == sorted(p["path"] for p in index["packages"])
    assert len(index["packages"]) == 102


def test_a_shard_in_parts_is_fetched_part_by_part_and_a_change_comes_as_that_part_delta(
    flat: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.index

    monkeypatch.setattr(pipeline.index, "PART_MAX_BYTES", 12_000)  # pool/'s 100 records: about 45 kB of JSON
    assert flat.publish() == 1
    parts = [shard for shard in flat.pointer()["shards"] if shard["name"] == "pool"]
    assert len(parts) >= 3 and [p["part"] for p in parts] == list(range(len(parts)))
    assert sum(p["packages"] for p in parts) == 100 and all(p["uncompressed_size"] <= 12_000 for p in parts)
    user = tmp_path / "user"
    done = flat.run(user, "pool/file-001.bin", MIRRORSEED_SHARDS="pool")
    assert done.returncode == 0, done.stdout + done.stderr
    assert kept(user) == {p["uncompressed_sha256"] for p in parts}
    assert "shard pool: fetched" in done.stdout and "shard pool part 1: fetched" in done.stdout
    index = json.loads((user / "index.json").read_text())
    assert [p["path"] for p in index["packages"]] == [f"pool/file-{i:03d}.bin" for i in range(100)]

    change_one_file(flat)
    assert flat.publish() == 2
    now = [shard for shard in flat.pointer()["shards"] if shard["name"] == "pool"]
    changed = [shard for shard in now if shard not in parts]
    assert len(now) == len(parts) and len(changed) == 1, "only the part listing file-042 changed"
    delta = changed[0]["delta"]
    assert delta["from_sha256"] == parts[changed[0]["part"]]["uncompressed_sha256"]
    flat.log.clear()
    done = flat.run(user, "pool/file-042.bin", MIRRORSEED_SHARDS="pool")
    assert done.returncode == 0, done.stdout + done.stderr
    assert flat.requested() == [delta["path"]], "the changed part's delta, and nothing else of the index"
    assert kept(user) == {p["uncompressed_sha256"] for p in now}
    assert (user / "packages" / "file-042.bin").read_bytes() == b"changed " * 100


def test_a_tampered_delta_is_refused(flat: World, tmp_path: Path) -> None:
    flat.publish()
    first = flat.shards()["pool"]
    user = tmp_path / "user"
    assert flat.run(user, "README").returncode == 0
    change_one_file(flat)
    flat.publish()
    delta = flat.shards()["pool"]["delta"]
    assert isinstance(delta, dict)
    tampered = bytearray((flat.dest / delta["path"]).read_bytes())
    tampered[-5] ^= 0xFF
    (flat.dest / delta["path"]).write_bytes(bytes(tampered))

    done = flat.run(user, "README")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"{delta['path']}: not the SHA-256 latest.asc gives it (the delta of shard pool): run again later, "
        f"or tell the operator of {flat.public_url}"
    )
    assert not (user / delta["path"]).exists()
    assert first["uncompressed_sha256"] in kept(user)  # the old shard is kept for the next try


def retorrent(torrent: Path, data: bytes) -> None:
    """Rewrite the single-file torrent `torrent` so that its pieces are those of `data` (same length)."""
    decoded = bencode.decode_dict(torrent.read_bytes())
    meta: Any = decoded.value
    info = meta[b"info"]
    size = info[b"piece length"]
    info[b"pieces"] = b"".join(hashlib.sha1(data[i : i + size]).digest() for i in range(0, len(data), size))
    torrent.write_bytes(bencode.encode(meta))


def test_a_tampered_shard_is_refused_even_with_a_matching_torrent(flat: World, tmp_path: Path) -> None:
    flat.publish()
    pool = flat.shards()["pool"]
    shard = flat.dest / str(pool["path"])
    tampered = bytearray(shard.read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    shard.write_bytes(bytes(tampered))
    retorrent(flat.dest / str(pool["torrent"]), bytes(tampered))  # aria2's piece checks pass

    user = tmp_path / "user"
    done = flat.run(user, "README")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"{pool['path']}: not the size and SHA-256 latest.asc gives it (shard pool); deleted: run again later, "
        f"or tell the operator of {flat.public_url}"
    )
    assert not (user / str(pool["path"])).exists() and not (user / "index.json").exists()
    assert pool["uncompressed_sha256"] not in kept(user)


# --- a pointer of another format -------------------------------------------------------------------------


def sign(key: SigningKey, payload: bytes, out: Path) -> None:
    subprocess.run(
        ["gpg", "--homedir", str(key.gnupghome), "--batch", "--yes", "--pinentry-mode", "loopback",
         "--passphrase", "", "--local-user", key.fingerprint, "--sign", "--output", str(out)],
        input=payload, capture_output=True, timeout=60, check=True,
    )  # fmt: skip


@pytest.mark.parametrize("script", [RECIPE_KEY, UPDATE_KEY])
@pytest.mark.parametrize("found", ["mirrorseed-pointer/2", "mirrorseed-pointer/4"])
def test_a_pointer_of_another_format_is_one_clear_line(debian: World, tmp_path: Path, script: str, found: str) -> None:
    debian.publish()
    payload = {
        "format": found,
        "repo": "shards",
        "sequence": 7,
        "generated": "2026-05-01T12:00:00Z",
        "expires": "2099-05-08T12:00:00Z",
        "index": {"path": "index/7-0123456789ab/index.json.zst", "size": 1, "sha256": "ab" * 32,
                  "uncompressed_size": 2},
    }  # fmt: skip
    sign(debian.key, json.dumps(payload, indent=2).encode(), debian.dest / "latest.asc")
    debian.log.clear()
    user = tmp_path / "user"
    done = debian.run(user, "hello", script=script)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"latest.asc: format {found}; this script reads {POINTER_FORMAT}: a current copy of it is at "
        f"{debian.public_url}/{script}"
    )
    assert debian.requested() == [] and not (user / "pointer.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", "recipe.sh"),
        ("path", "index/../recipe.sh"),
        ("torrent", "/etc/passwd"),
        ("uncompressed_sha256", "../x"),
    ],
)
def test_a_signed_pointer_naming_a_path_outside_index_is_refused(
    debian: World, tmp_path: Path, field: str, value: str
) -> None:
    """Every path and hash of a shard becomes a file name here: only `index/…` paths and hex hashes pass."""
    debian.publish()
    payload = debian.pointer()
    payload["shards"][0][field] = value
    sign(debian.key, json.dumps(payload, indent=2).encode(), debian.dest / "latest.asc")
    debian.log.clear()
    user = tmp_path / "user"
    done = debian.run(user, "hello")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"latest.asc: its list of shards is malformed; tell the operator of {debian.public_url}"
    )
    assert debian.requested() == [] and not (user / "pointer.json").exists()
    assert not {"shards", "index", "index.json"} & {p.name for p in user.iterdir()}  # nothing written from it
