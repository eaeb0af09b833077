"""apt through the torrents (issue 13, points 1 and 5): the real apt-get, with the mirrorseed method, on a
throwaway root (tests/fixtures/aptroot.py), against a real dpkg-deb/dpkg-scanpackages repository with a
signed InRelease, a real publication, opentracker and aria2 on 127.0.0.1.

`apt-get update` reads the metadata over plain HTTP through the method; `apt-get install` gets every
`.deb` the publication lists by its `.torrent` (the publication's request log) from the mirror as
aria2's webseed (ranged GETs in the mirror's log), a `.deb` the publication lacks over plain HTTP; a
tampered `.torrent` is refused and apt says so; with the mirror dead, a peer found through the tracker
serves the file. DHT and LPD are off; nothing leaves loopback.

The index is sharded (docs/sharded-index.md): `stable/main/amd64` and `stable/main/all`. A method set to
follow one shard fetches only that one; after a second publication it updates its kept shard by the delta
(the whole shard is not fetched again); a tampered delta and a pointer of another format are refused.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import MirrorConfig, Settings
from pipeline.demo import DebSpec, build_debian_repo
from pipeline.run import release
from pipeline.serve import RangeServer, serve_directory
from pipeline.signing import Signer
from tests.fixtures.aptroot import AptRoot, DebWithDeps
from tests.integration.conftest import SigningKey
from tests.integration.test_tracker import seeder_command, stop, wait_for_peer
from tests.mirror_servers import RequestLog, request_log
from tests.tools import require_tools
from tests.tracker import Tracker, free_port

pytestmark = pytest.mark.integration

TOOLS = ("apt-get", "dpkg", "dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "aria2c", "gpgv", "zstd", "gpg")

LIB = DebSpec(name="ms-lib", version="1.0-1", description="a library ms-tool needs", payload_size=400_000, seed=3)
TOOL = DebWithDeps(name="ms-tool", version="1.2-1", description="a tool", depends="ms-lib (>= 1.0)", seed=4)
EPOCH = DebSpec(name="ms-epoch", version="2:1.0-1", description="a version with an epoch", seed=5)
DOC = DebSpec(name="ms-doc", version="1.0-1", arch="all", description="Architecture: all, its own shard", seed=7)
LATE = DebSpec(name="ms-late", version="0.1-1", description="on the mirror, not in the publication", seed=6)
PUBLISHED = (LIB, TOOL, EPOCH, DOC)
AMD64, ALL = "stable/main/amd64", "stable/main/all"  # the publication's shards


@dataclass(frozen=True)
class Published:
    """A snapshot (the mirror's tree: the published packages plus LATE) and its publication, module-wide."""

    mirror_root: Path
    dest: Path
    mirror_port: int
    public_port: int
    tracker: Tracker
    records: dict[str, dict[str, object]]  # repo path -> index record
    pointer: dict[str, Any]  # the payload of latest.asc

    def shard(self, name: str) -> dict[str, Any]:
        return next(shard for shard in self.pointer["shards"] if shard["name"] == name)


def read_pointer(dest: Path) -> dict[str, Any]:
    """The payload of the signed `latest.asc` in `dest` (checked by gpgv against the published key)."""
    out = subprocess.run(
        ["gpgv", "--keyring", str(dest / "signing-key.gpg"), "--output", "-", str(dest / "latest.asc")],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    payload: dict[str, Any] = json.loads(out.stdout)
    return payload


def read_records(dest: Path, pointer: dict[str, Any]) -> dict[str, dict[str, object]]:
    """Every record of the pointer's shards."""
    records: dict[str, dict[str, object]] = {}
    for shard in pointer["shards"]:
        out = subprocess.run(["zstd", "-dc", str(dest / shard["path"])], capture_output=True, check=True, timeout=60)
        records.update({record["path"]: record for record in json.loads(out.stdout)["packages"]})
    return records


def publish(root: Path, dest: Path, key: SigningKey, *, public_url: str, mirror_url: str, tracker: Tracker) -> None:
    report = release(
        Settings(
            snapshot=root,
            format="auto",
            dest=str(dest),
            public_url=public_url,
            repo="apt-test",
            mirrors=(MirrorConfig(url=mirror_url, country="DE", name="test mirror"),),
            trackers=(tracker.announce_url,),
            key=key.fingerprint,
            gnupghome=key.gnupghome,
            state=dest.parent / "state.sqlite",
        )  # fmt: skip
    )
    assert report.action == "publish"


def sign_release(root: Path, key: SigningKey) -> None:
    dist = root / "dists" / "stable"
    (dist / "InRelease").unlink(missing_ok=True)
    subprocess.run(
        ["gpg", "--homedir", str(key.gnupghome), "--batch", "--local-user", key.fingerprint, "--clearsign",
         "--output", str(dist / "InRelease"), str(dist / "Release")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Iterator[Published]:
    require_tools(*TOOLS)
    base = tmp_path_factory.mktemp("apt-method")
    root, dest = base / "snapshot", base / "public"
    dest.mkdir()
    build_debian_repo(root, PUBLISHED)
    sign_release(root, signing_key)
    mirror_port, public_port = free_port(), free_port()
    with Tracker() as tracker:
        with serve_directory(root, port=mirror_port) as mirror, serve_directory(dest, port=public_port) as public:
            publish(root, dest, signing_key, public_url=public.url, mirror_url=mirror.url, tracker=tracker)
        pointer = read_pointer(dest)
        assert [shard["name"] for shard in pointer["shards"]] == [ALL, AMD64]
        records = read_records(dest, pointer)
        assert len(records) == len(PUBLISHED)
        tracker.write_whitelist(sorted(str(r["infohash"]) for r in records.values()))
        tracker.reload()
        # the mirror moves on: one more package the publication does not list (plain HTTP for it)
        build_debian_repo(root, (*PUBLISHED, LATE), reuse_pool=True)
        sign_release(root, signing_key)
        yield Published(root, dest, mirror_port, public_port, tracker, records, pointer)


@dataclass
class World:
    apt: AptRoot
    mirror_root: Path
    dest: Path
    log: RequestLog
    mirror: RangeServer
    public: RangeServer


def make_world(
    published: Published,
    tmp_path: Path,
    *,
    method: Path | None = None,
    config: bool = True,
    extra: dict[str, str] | None = None,
) -> AptRoot:
    keyring = tmp_path / "etc-mirrorseed" / "signing-key.gpg"  # pinned at install: the published key
    keyring.parent.mkdir()
    shutil.copyfile(published.dest / "signing-key.gpg", keyring)
    settings = {
        "Acquire::mirrorseed::Keyring": str(keyring),
        "Acquire::mirrorseed::StateDir": str(tmp_path / "state"),
        "Acquire::mirrorseed::DHT": "false",
        "Acquire::mirrorseed::LPD": "false",
    }
    settings.update(extra or {})
    if config:
        settings["Acquire::mirrorseed::Publication"] = f"http://127.0.0.1:{published.public_port}"
    mirror = f"mirrorseed+http://127.0.0.1:{published.mirror_port}"
    sources = [f"deb [signed-by={published.dest / 'signing-key.gpg'}] {mirror} stable main"]
    kwargs = {} if method is None else {"client": method}
    return AptRoot.create(tmp_path / "apt", sources=sources, config=settings, **kwargs)


@contextmanager
def running_world(published: Published, tmp_path: Path, extra: dict[str, str] | None = None) -> Iterator[World]:
    """Copies of the mirror tree and the publication, served on the ports the publication names."""
    mirror_root = shutil.copytree(published.mirror_root, tmp_path / "mirror", symlinks=True)
    dest = shutil.copytree(published.dest, tmp_path / "public", symlinks=True)
    apt = make_world(published, tmp_path, extra=extra)
    with request_log() as log:
        with serve_directory(mirror_root, port=published.mirror_port) as mirror:
            with serve_directory(dest, port=published.public_port) as public:
                yield World(apt, mirror_root, dest, log, mirror, public)


@pytest.fixture
def world(published: Published, tmp_path: Path) -> Iterator[World]:
    with running_world(published, tmp_path) as world:
        yield world


def deb_path(spec: DebSpec) -> str:
    return spec.pool_path()


def check(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output  # apt ends its methods by SIGINT: the method exits quietly
    return output


def test_apt_installs_through_the_torrents_with_http_for_what_the_publication_lacks(
    published: Published, tmp_path: Path
) -> None:
    """The published copy of the method (publication URL and key fingerprint written in, no Publication setting)."""
    mirror_root = shutil.copytree(published.mirror_root, tmp_path / "mirror", symlinks=True)
    dest = shutil.copytree(published.dest, tmp_path / "public", symlinks=True)
    method = dest / "clients" / "apt" / "mirrorseed"
    method.chmod(0o755)
    apt = make_world(published, tmp_path, method=method, config=False)
    with request_log() as log:
        with (
            serve_directory(mirror_root, port=published.mirror_port),
            serve_directory(dest, port=published.public_port),
        ):
            check(apt.apt_get("update"))
            check(apt.apt_get("update"))  # again, with apt's copies (If-Modified-Since)
            assert not log.under("torrents") and not log.under("index")  # metadata: the mirror alone
            output = check(apt.apt_get("install", "ms-tool", "ms-epoch", "ms-doc", "ms-late"))

    assert "ms-lib" in output  # pulled in as a dependency
    assert apt.installed() == {
        "ms-lib": "1.0-1", "ms-tool": "1.2-1", "ms-epoch": "2:1.0-1", "ms-doc": "1.0-1", "ms-late": "0.1-1"
    }  # fmt: skip
    shards = sorted(path for method_, path, status in log.under("index") if method_ == "GET" and status == 200)
    assert shards == sorted("/" + shard["path"] for shard in published.pointer["shards"])  # each once, whole
    for spec in (*PUBLISHED, LATE):
        assert (apt.root / "usr/share/doc" / spec.name / "README.demo").is_file()
    torrents = {path for method_, path, status in log.under("torrents") if method_ == "GET" and status == 200}
    assert torrents == {f"/torrents/{deb_path(spec)}.torrent" for spec in PUBLISHED}
    for spec in PUBLISHED:  # aria2's webseed: ranged GETs
        statuses = {status for method_, path, status in log.entries if path == "/" + deb_path(spec)}
        assert statuses == {206}, (spec.name, statuses)
    late = {status for _, path, status in log.entries if path == "/" + deb_path(LATE)}
    assert late == {200}  # not in the publication: one plain GET
    # apt's cache names, epoch included, so that the next run finds them
    assert (apt.archives / "ms-epoch_2%3a1.0-1_amd64.deb").is_file()
    assert (tmp_path / "state").is_dir()  # the sequence seen is kept (rollback protection)
    assert kept_shards(tmp_path) == {shard["uncompressed_sha256"] for shard in published.pointer["shards"]}


def kept_shards(tmp_path: Path) -> set[str]:
    """The shards the method keeps in its state directory (their JSON, by its SHA-256)."""
    return {path.stem for path in (tmp_path / "state").glob("*/shards/*.json")}


def index_gets(world: World) -> list[str]:
    return sorted(path for method_, path, _ in world.log.under("index") if method_ == "GET")


def test_a_tampered_torrent_is_refused_and_apt_says_so(world: World) -> None:
    lib_torrent = world.dest / "torrents" / f"{deb_path(LIB)}.torrent"
    lib_torrent.write_bytes((world.dest / "torrents" / f"{deb_path(EPOCH)}.torrent").read_bytes())
    check(world.apt.apt_get("update"))
    result = world.apt.apt_get("install", "ms-lib")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert f"torrents/{deb_path(LIB)}.torrent: infohash" in output
    assert "is not" in output and "(the index)" in output
    assert "ms-lib" not in world.apt.installed()
    assert not list(world.apt.archives.glob("ms-lib*.deb"))
    assert not [e for e in world.log.entries if e[1] == "/" + deb_path(LIB)]  # nothing fetched for it


def test_a_bad_pointer_signature_fails_every_package_by_name(world: World, signing_key: SigningKey) -> None:
    (world.dest / "latest.asc").write_bytes(b"-----BEGIN PGP MESSAGE-----\n\nnot signed\n-----END PGP MESSAGE-----\n")
    check(world.apt.apt_get("update"))
    result = world.apt.apt_get("install", "ms-lib")
    assert result.returncode != 0
    assert "latest.asc: not signed by" in result.stdout + result.stderr
    assert not world.log.under("torrents")


def test_the_mirror_dead_a_peer_serves_the_package(published: Published, world: World, tmp_path: Path) -> None:
    check(world.apt.apt_get("update"))
    world.mirror.close()  # from now on, connection refused
    record = published.records[deb_path(LIB)]
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    shutil.copyfile(world.mirror_root / deb_path(LIB), seed_dir / LIB.filename)
    port = free_port()
    seeder = subprocess.Popen(
        seeder_command(world.dest / str(record["torrent"]), seed_dir, port),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_peer(published.tracker, str(record["infohash"]), port, seeder)
        check(world.apt.apt_get("install", "ms-lib"))
    finally:
        stop(seeder)
    assert world.apt.installed() == {"ms-lib": "1.0-1"}
    assert not [e for e in world.log.entries if e[1] == "/" + deb_path(LIB)]  # the mirror answered nothing


def test_a_method_following_one_shard_fetches_that_shard_alone(published: Published, tmp_path: Path) -> None:
    """`Shards` = `stable/main/amd*`: the `all` shard is never fetched, so ms-doc comes over plain HTTP."""
    with running_world(published, tmp_path, {"Acquire::mirrorseed::Shards": "nothing/* stable/main/amd*"}) as world:
        check(world.apt.apt_get("update"))
        refused = world.apt.apt_get("install", "ms-lib")
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "Traceback" not in output, output
        assert (
            f"Shards: nothing/* matches no shard of {world.public.url}/latest.asc; its shards: {ALL} {AMD64}" in output
        )
        assert not world.log.under("index") and not world.log.under("torrents")

    with running_world(published, tmp_path / "amd64", {"Acquire::mirrorseed::Shards": "stable/main/amd*"}) as world:
        check(world.apt.apt_get("update"))
        check(world.apt.apt_get("install", "ms-lib", "ms-doc"))
    assert world.apt.installed() == {"ms-lib": "1.0-1", "ms-doc": "1.0-1"}
    assert index_gets(world) == ["/" + published.shard(AMD64)["path"]]
    assert kept_shards(tmp_path / "amd64") == {published.shard(AMD64)["uncompressed_sha256"]}
    torrents = {path for _, path, _ in world.log.under("torrents")}
    assert torrents == {f"/torrents/{deb_path(LIB)}.torrent"}
    assert {status for _, path, status in world.log.entries if path == "/" + deb_path(DOC)} == {200}  # plain HTTP


def second_publication(published: Published, world: World, signing_key: SigningKey) -> dict[str, Any]:
    """The method has fetched ms-lib from the first publication; the mirror's ms-late is then published too
    (a new `stable/main/amd64` shard with a delta, `stable/main/all` unchanged). The new pointer."""
    check(world.apt.apt_get("update"))
    check(world.apt.apt_get("install", "ms-lib"))
    publish(world.mirror_root, world.dest, signing_key, public_url=world.public.url, mirror_url=world.mirror.url,
            tracker=published.tracker)  # fmt: skip
    pointer = read_pointer(world.dest)
    assert pointer["sequence"] == published.pointer["sequence"] + 1
    (all_shard,) = (shard for shard in pointer["shards"] if shard["name"] == ALL)
    assert all_shard == published.shard(ALL) | {"delta": None}  # unchanged: the same object
    (amd64,) = (shard for shard in pointer["shards"] if shard["name"] == AMD64)
    assert amd64["delta"]["from_sha256"] == published.shard(AMD64)["uncompressed_sha256"]
    published.tracker.write_whitelist(sorted(str(r["infohash"]) for r in read_records(world.dest, pointer).values()))
    published.tracker.reload()
    world.log.clear()
    return amd64


def test_after_a_second_publication_the_method_updates_its_shard_by_the_delta(
    published: Published, world: World, signing_key: SigningKey, tmp_path: Path
) -> None:
    amd64 = second_publication(published, world, signing_key)
    (world.dest / amd64["path"]).unlink()  # the whole shard is not needed: the delta is enough
    check(world.apt.apt_get("install", "ms-late"))
    assert world.apt.installed() == {"ms-lib": "1.0-1", "ms-late": "0.1-1"}
    assert index_gets(world) == ["/" + amd64["delta"]["path"]]  # the unchanged `all` shard is kept
    assert {path for _, path, _ in world.log.under("torrents")} == {f"/torrents/{deb_path(LATE)}.torrent"}
    # the previous amd64 shard is no longer named: deleted
    assert kept_shards(tmp_path) == {amd64["uncompressed_sha256"], published.shard(ALL)["uncompressed_sha256"]}
    # the first publication's pointer served again (a rollback): refused, the sequence seen is higher
    shutil.copyfile(published.dest / "latest.asc", world.dest / "latest.asc")
    result = world.apt.apt_get("install", "ms-epoch")
    assert result.returncode != 0
    assert f"{world.public.url}/latest.asc: sequence 1 is older than 2 seen before" in result.stdout + result.stderr


def test_the_publication_unreachable_packages_come_over_plain_http(world: World) -> None:
    check(world.apt.apt_get("update"))
    world.public.close()  # connection refused
    output = check(world.apt.apt_get("install", "ms-lib"))
    assert "plain HTTP instead of torrents" in output
    assert world.apt.installed() == {"ms-lib": "1.0-1"}
    assert {status for _, path, status in world.log.entries if path == "/" + deb_path(LIB)} == {200}


def test_a_tampered_delta_is_refused(published: Published, world: World, signing_key: SigningKey) -> None:
    amd64 = second_publication(published, world, signing_key)
    delta = world.dest / amd64["delta"]["path"]
    data = bytearray(delta.read_bytes())
    data[len(data) // 2] ^= 0xFF
    delta.write_bytes(bytes(data))
    result = world.apt.apt_get("install", "ms-late")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert f"{world.public.url}/{amd64['delta']['path']}: not the delta latest.asc names (size, SHA-256)" in output
    assert "ms-late" not in world.apt.installed()
    assert not world.log.under("torrents") and index_gets(world) == ["/" + amd64["delta"]["path"]]


def test_a_pointer_of_an_earlier_format_is_refused_in_one_line(world: World, signing_key: SigningKey) -> None:
    legacy = {"format": "mirrorseed-pointer/2", "repo": "apt-test", "sequence": 9, "expires": "2999-01-01T00:00:00Z"}
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    (world.dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(legacy).encode()))
    check(world.apt.apt_get("update"))
    result = world.apt.apt_get("install", "ms-lib")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    line = (
        f"{world.public.url}/latest.asc: format 'mirrorseed-pointer/2', this client reads 'mirrorseed-pointer/3': "
        f"the publication's current client is at {world.public.url}/clients/apt/mirrorseed"
    )
    assert re.search(rf"^E: Failed to fetch .*{re.escape(line)}$", output, re.MULTILINE), output
    assert not world.log.under("index") and not world.log.under("torrents")
    assert "ms-lib" not in world.apt.installed()
