"""apt through the torrents (issue 13, points 1 and 5): the real apt-get, with the mirrorseed method, on a
throwaway root (tests/fixtures/aptroot.py), against a real dpkg-deb/dpkg-scanpackages repository with a
signed InRelease, a real publication, opentracker and aria2 on 127.0.0.1.

`apt-get update` reads the metadata over plain HTTP through the method; `apt-get install` gets every
`.deb` the publication lists by its `.torrent` (the publication's request log) from the mirror as
aria2's webseed (ranged GETs in the mirror's log), a `.deb` the publication lacks over plain HTTP; a
tampered `.torrent` is refused and apt says so; with the mirror dead, a peer found through the tracker
serves the file. DHT and LPD are off; nothing leaves loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from pipeline.config import MirrorConfig, Settings
from pipeline.demo import DebSpec, build_debian_repo
from pipeline.run import release
from pipeline.serve import RangeServer, serve_directory
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
LATE = DebSpec(name="ms-late", version="0.1-1", description="on the mirror, not in the publication", seed=6)
PUBLISHED = (LIB, TOOL, EPOCH)


@dataclass(frozen=True)
class Published:
    """A snapshot (the mirror's tree: the published packages plus LATE) and its publication, module-wide."""

    mirror_root: Path
    dest: Path
    mirror_port: int
    public_port: int
    tracker: Tracker
    records: dict[str, dict[str, object]]  # repo path -> index record


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
            report = release(
                Settings(
                    snapshot=root,
                    format="auto",
                    dest=str(dest),
                    public_url=public.url,
                    repo="apt-test",
                    mirrors=(MirrorConfig(url=mirror.url, country="DE", name="test mirror"),),
                    trackers=(tracker.announce_url,),
                    key=signing_key.fingerprint,
                    gnupghome=signing_key.gnupghome,
                    state=base / "state.sqlite",
                )  # fmt: skip
            )
        assert report.action == "publish" and report.files == len(PUBLISHED)
        (index_zst,) = dest.glob("index/*/index.json.zst")
        index = json.loads(zstandard.ZstdDecompressor().decompress(index_zst.read_bytes()))
        records = {record["path"]: record for record in index["packages"]}
        tracker.write_whitelist(sorted(r["infohash"] for r in records.values()))
        tracker.reload()
        # the mirror moves on: one more package the publication does not list (plain HTTP for it)
        build_debian_repo(root, (*PUBLISHED, LATE), reuse_pool=True)
        sign_release(root, signing_key)
        yield Published(root, dest, mirror_port, public_port, tracker, records)


@dataclass
class World:
    apt: AptRoot
    mirror_root: Path
    dest: Path
    log: RequestLog
    mirror: RangeServer
    public: RangeServer


def make_world(published: Published, tmp_path: Path, *, method: Path | None = None, config: bool = True) -> AptRoot:
    keyring = tmp_path / "etc-mirrorseed" / "signing-key.gpg"  # pinned at install: the published key
    keyring.parent.mkdir()
    shutil.copyfile(published.dest / "signing-key.gpg", keyring)
    settings = {
        "Acquire::mirrorseed::Keyring": str(keyring),
        "Acquire::mirrorseed::StateDir": str(tmp_path / "state"),
        "Acquire::mirrorseed::DHT": "false",
        "Acquire::mirrorseed::LPD": "false",
    }
    if config:
        settings["Acquire::mirrorseed::Publication"] = f"http://127.0.0.1:{published.public_port}"
    mirror = f"mirrorseed+http://127.0.0.1:{published.mirror_port}"
    sources = [f"deb [signed-by={published.dest / 'signing-key.gpg'}] {mirror} stable main"]
    kwargs = {} if method is None else {"client": method}
    return AptRoot.create(tmp_path / "apt", sources=sources, config=settings, **kwargs)


@pytest.fixture
def world(published: Published, tmp_path: Path) -> Iterator[World]:
    """Copies of the mirror tree and the publication, served on the ports the publication names."""
    mirror_root = shutil.copytree(published.mirror_root, tmp_path / "mirror", symlinks=True)
    dest = shutil.copytree(published.dest, tmp_path / "public", symlinks=True)
    apt = make_world(published, tmp_path)
    with request_log() as log:
        with serve_directory(mirror_root, port=published.mirror_port) as mirror:
            with serve_directory(dest, port=published.public_port) as public:
                yield World(apt, mirror_root, dest, log, mirror, public)


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
            output = check(apt.apt_get("install", "ms-tool", "ms-epoch", "ms-late"))

    assert "ms-lib" in output  # pulled in as a dependency
    assert apt.installed() == {"ms-lib": "1.0-1", "ms-tool": "1.2-1", "ms-epoch": "2:1.0-1", "ms-late": "0.1-1"}
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
