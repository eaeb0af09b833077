"""Arch end to end with the real tools: makepkg + repo-add -> release -> aria2 (webseed only) -> gpgv -> pacman -U.

The packages are built once per session by makepkg, as the unprivileged user `mirrorseed-build` when
the tests run as root (Debian's makepkg refuses root). A missing tool fails the test: it never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import zstandard

from pipeline.config import MirrorConfig, Settings
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import Signer
from tests.fixtures.archrepo import ArchPkgSpec, build_arch_repo
from tests.integration.conftest import SigningKey, aria2_command, run_cli, tree_state

pytestmark = pytest.mark.integration

TOOLS = ("makepkg", "repo-add", "pacman", "bsdtar", "zstd", "fakeroot", "runuser", "aria2c", "gpgv")

LIBFOO = ArchPkgSpec("libfoo++", "1.2.3", description="a library with plus signs in its name")
PYTHING = ArchPkgSpec("py.thing", "0.9", arch="any", description="an arch-independent <b>module</b> & friends")
EPOCH = ArchPkgSpec("epoch-tool", "2.0", epoch=1, pkgrel="3", description="a version with an epoch")
UNDER = ArchPkgSpec("under_score", "0.1_beta", pkgrel="2", description="underscores everywhere")
BIG = ArchPkgSpec("bigdata", "5.0", payload_size=4_000_000, seed=11, description="several MB of random payload")
REPOS = {"core": (LIBFOO, PYTHING, EPOCH), "extra": (UNDER, BIG)}


def repo_path(repo: str, spec: ArchPkgSpec) -> str:
    return f"{repo}/os/x86_64/{spec.filename()}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def arch_repo_template(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)}: not installed; run ./bootstrap.sh "
            "(apt-get install makepkg pacman-package-manager libarchive-tools aria2 gnupg)"
        )
    root = tmp_path_factory.mktemp("arch-template") / "mirror"
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    build_arch_repo(root, REPOS, sign=signer.sign_detached)
    return root


@pytest.fixture
def arch_repo(arch_repo_template: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the Arch mirror per test (pool/ links kept as links)."""
    root = tmp_path / "mirror"
    shutil.copytree(arch_repo_template, root, symlinks=True)
    return root


@pytest.fixture
def arch_servers(arch_repo: Path, tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """(destination dir, public URL serving it, mirror URL serving the snapshot) on 127.0.0.1."""
    dest = tmp_path / "public"
    dest.mkdir()
    with serve_directory(dest) as public, serve_directory(arch_repo) as mirror:
        yield dest, public.url, mirror.url


def read_index(dest: Path) -> dict[str, dict[str, object]]:
    """Every record of the shards in `dest` (one publication): one shard per repo and architecture."""
    shards = [
        json.loads(zstandard.ZstdDecompressor().decompress(f.read_bytes()))
        for f in dest.glob("index/shards/*.json.zst")
    ]
    assert sorted(shard["shard"] for shard in shards) == sorted({f"{repo}/x86_64" for repo in REPOS})
    return {record["path"]: record for shard in shards for record in shard["packages"]}


def pacman_install(root: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    """`pacman -U` into a private root: own config, db, cache, gpg dir and log; no scriptlets, no signatures."""
    for sub in ("var/lib/pacman", "var/cache/pacman/pkg", "etc/pacman.d/gnupg", "var/log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "etc" / "pacman.conf"
    config.write_text(
        "[options]\n"
        f"RootDir = {root}\n"
        f"DBPath = {root}/var/lib/pacman/\n"
        f"CacheDir = {root}/var/cache/pacman/pkg/\n"
        f"GPGDir = {root}/etc/pacman.d/gnupg/\n"
        f"LogFile = {root}/var/log/pacman.log\n"
        "Architecture = x86_64\n"
        "SigLevel = Never\n"
        "LocalFileSigLevel = Never\n"
    )
    return subprocess.run(
        [
            "pacman",
            "--config",
            str(config),
            "--root",
            str(root),
            "--dbpath",
            f"{root}/var/lib/pacman",
            "--cachedir",
            f"{root}/var/cache/pacman/pkg",
            "--gpgdir",
            f"{root}/etc/pacman.d/gnupg",
            "--logfile",
            f"{root}/var/log/pacman.log",
            "--noconfirm",
            "--noscriptlet",
            "--noprogressbar",
            "-U",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_publish_fetch_by_torrent_verify_and_install_with_pacman(
    arch_repo: Path, arch_servers: tuple[Path, str, str], signing_key: SigningKey, tmp_path: Path
) -> None:
    dest, public_url, mirror_url = arch_servers
    settings = Settings(
        snapshot=arch_repo,
        format="auto",
        dest=str(dest),
        public_url=public_url,
        repo="arch-test",
        mirrors=(MirrorConfig(url=mirror_url, country="DE", continent="EU", name="test mirror", priority=1),),
        key=signing_key.fingerprint,
        gnupghome=signing_key.gnupghome,
    )
    report = release(settings)
    assert report.action == "publish" and report.files == 5
    assert [status for _, status, _ in report.mirrors] == ["ok"]

    # Arch users' listings: a pacman mirrorlist per country, the Arch recipe on the front page
    mirrorlist = (dest / "mirrors" / "country" / "DE.mirrorlist").read_text()
    assert f"Server = {mirror_url}/$repo/os/$arch" in mirrorlist.splitlines()
    front = (dest / "index.html").read_text()
    assert "pacman -U" in front and ".sig" in front and "mirrors/index.html" in front

    # the index: exactly the packages the dbs list, under the paths mirrors serve, with db metadata
    records = read_index(dest)
    expected = {repo_path(repo, spec): spec for repo, specs in REPOS.items() for spec in specs}
    assert set(records) == set(expected)
    for path, spec in expected.items():
        record = records[path]
        assert (record["name"], record["version"], record["arch"]) == (spec.name, spec.version, spec.arch)
        pool_file = arch_repo / "pool" / "packages" / spec.filename()
        assert record["sha256"] == sha256_file(pool_file) and record["size"] == pool_file.stat().st_size
        assert record["signature"] == {
            "path": f"{path}.sig",
            "size": (arch_repo / f"{path}.sig").stat().st_size,
            "sha256": sha256_file(arch_repo / f"{path}.sig"),
        }
        assert record["torrent"] == f"torrents/{path}.torrent"
        assert (dest / str(record["torrent"])).is_file() and (dest / str(record["metalink"])).is_file()
    assert not list((dest / "torrents").rglob("*.sig*")), "a .sig gets no torrent"
    assert not list((dest / "torrents").rglob("*.db*")), "the repo db gets no torrent"

    # three packages by their .torrent, webseed only ('+', ':' from the epoch, several MB)
    wanted = [repo_path("core", LIBFOO), repo_path("core", EPOCH), repo_path("extra", BIG)]
    user = tmp_path / "user"
    urls = [f"{public_url}/{quote(str(records[path]['torrent']))}" for path in wanted]
    fetched = subprocess.run(
        aria2_command("-Z", "-d", str(user), "--follow-torrent=mem", *urls),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    files = [user / path.rsplit("/", 1)[1] for path in wanted]
    for path, file in zip(wanted, files, strict=True):
        assert sha256_file(file) == records[path]["sha256"], path

    # the detached .sig over plain HTTP from the mirror: the index's SHA-256, and gpgv accepts it
    signature = records[wanted[0]]["signature"]
    assert isinstance(signature, dict)
    sig_fetch = subprocess.run(
        aria2_command("-d", str(user), f"{mirror_url}/{quote(signature['path'])}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sig_fetch.returncode == 0, sig_fetch.stdout + sig_fetch.stderr
    sig_file = user / signature["path"].rsplit("/", 1)[1]
    assert sha256_file(sig_file) == signature["sha256"]
    subprocess.run(
        ["gpgv", "--keyring", str(signing_key.keyring), str(sig_file), str(files[0])],
        check=True,
        capture_output=True,
        timeout=60,
    )

    # pacman installs what aria2 fetched
    target = tmp_path / "target"
    installed = pacman_install(target, files)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    for spec in (LIBFOO, EPOCH, BIG):
        assert (target / "usr" / "share" / spec.name / "README").is_file(), spec.name
    payload = target / "usr" / "share" / BIG.name / "payload.bin"
    assert payload.stat().st_size == BIG.payload_size
    query = subprocess.run(
        ["pacman", "--root", str(target), "--dbpath", f"{target}/var/lib/pacman", "-Q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert sorted(query.stdout.splitlines()) == sorted(f"{s.name} {s.version}" for s in (LIBFOO, EPOCH, BIG))


def release_args(snapshot: Path, dest: Path, key: str) -> list[str]:
    return [
        "release",
        "--snapshot",
        str(snapshot),
        "--format",
        "arch",
        "--dest",
        str(dest),
        "--key",
        key,
        "--public-url",
        "http://127.0.0.1:9/pub",
        "--webseed",
        "http://127.0.0.1:9/mirror",
        "--allow-peer-only",
        "--repo",
        "arch-test",
    ]


def refused_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_corrupt_package_is_refused_in_one_line(arch_repo: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    corrupt = arch_repo / "pool" / "packages" / UNDER.filename()
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the SHA-256 can tell
    corrupt.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    before = tree_state(dest)
    result = run_cli(
        *release_args(arch_repo, dest, signing_key.fingerprint), env={"GNUPGHOME": str(signing_key.gnupghome)}
    )
    line = refused_line(result)
    assert repo_path("extra", UNDER) in line and "SHA-256" in line, line
    assert tree_state(dest) == before


def test_a_db_naming_a_missing_file_is_refused_in_one_line(
    arch_repo: Path, signing_key: SigningKey, tmp_path: Path
) -> None:
    (arch_repo / repo_path("core", PYTHING)).unlink()  # the db still lists it
    dest = tmp_path / "dest"
    before = tree_state(dest)
    args = release_args(arch_repo, dest, signing_key.fingerprint)
    args[args.index("arch")] = "auto"
    result = run_cli(*args, env={"GNUPGHOME": str(signing_key.gnupghome)})
    line = refused_line(result)
    assert f"{repo_path('core', PYTHING)}: missing" in line and "re-sync the mirror" in line, line
    assert tree_state(dest) == before
    assert not os.path.exists(dest / "latest.asc")
