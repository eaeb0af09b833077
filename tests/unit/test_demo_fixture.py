"""pipeline.demo: real .deb repositories, the cached demo snapshot and the demo signing key."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from pipeline.demo import (
    DEMO_UID,
    MARKER,
    DebSpec,
    DemoSnapshot,
    build_deb,
    build_debian_repo,
    build_demo_snapshot,
    demo_key,
    run_command,
)
from pipeline.errors import SnapshotError
from tests.tools import require_tools


@pytest.fixture(autouse=True)
def tools() -> None:
    require_tools("dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "gpg")


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Minimal deb822: one dict per paragraph, continuation lines joined with newlines."""
    stanzas: list[dict[str, str]] = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith(" "):
                fields[last] += "\n" + line[1:]
            else:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        stanzas.append(fields)
    return stanzas


class CountingRunner:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
        self.calls.append(list(args))
        if self.fail_on is not None and args[0] == self.fail_on:
            raise subprocess.CalledProcessError(2, list(args), b"", b"boom: injected failure\n")
        return run_command(args, cwd=cwd, env=env)


# --------------------------------------------------------------------------------------------------------
# build_debian_repo

SMALL = (
    DebSpec("hello", "2.10-3", description="example package based on GNU hello", seed=1),
    DebSpec("libstdc++-demo6", "12.2.0-14+deb12u1", source="gcc-demo", seed=2),
    DebSpec("demo-doc", "2:1.0~rc1-1", arch="all", seed=3, payload_size=5000),
)


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    build_debian_repo(root, SMALL, architectures=("amd64", "arm64"), codename="demo")
    return root


def test_pool_paths_follow_debian_conventions() -> None:
    assert SMALL[0].pool_path() == "pool/main/h/hello/hello_2.10-3_amd64.deb"
    assert SMALL[1].pool_path("contrib") == "pool/contrib/g/gcc-demo/libstdc++-demo6_12.2.0-14+deb12u1_amd64.deb"
    assert SMALL[2].filename == "demo-doc_1.0~rc1-1_all.deb"  # the epoch is not part of the file name
    assert DebSpec("libfoo1", "1-1").pool_path() == "pool/main/libf/libfoo1/libfoo1_1-1_amd64.deb"
    assert DebSpec("aa", "1-1+b1", source="aa (1-1)").pool_path() == "pool/main/a/aa/aa_1-1+b1_amd64.deb"
    assert DebSpec("small", "1-1").compression_type == "xz"
    assert DebSpec("big", "1-1", payload_size=2_000_000).compression_type == "none"  # random data
    assert DebSpec("big", "1-1", payload_size=2_000_000, compression="gzip").compression_type == "gzip"


def test_debs_are_real_packages(small_repo: Path) -> None:
    deb = small_repo / SMALL[1].pool_path()
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    fields = parse_stanzas(info)[0]
    assert fields["Package"] == "libstdc++-demo6"
    assert fields["Version"] == "12.2.0-14+deb12u1"
    assert fields["Source"] == "gcc-demo"
    subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, check=True)
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/share/doc/libstdc++-demo6/payload.bin" in listing
    assert "root/root" in listing


def test_packages_list_every_file_with_size_and_sha256(small_repo: Path) -> None:
    binary = small_repo / "dists/stable/main/binary-amd64"
    text = (binary / "Packages").read_bytes()
    assert gzip.decompress((binary / "Packages.gz").read_bytes()) == text
    assert lzma.decompress((binary / "Packages.xz").read_bytes()) == text
    stanzas = {s["Filename"]: s for s in parse_stanzas(text.decode())}
    assert sorted(stanzas) == sorted(spec.pool_path() for spec in SMALL)
    for filename, fields in stanzas.items():
        data = (small_repo / filename).read_bytes()
        assert int(fields["Size"]) == len(data)
        assert fields["SHA256"] == hashlib.sha256(data).hexdigest()
    assert stanzas[SMALL[2].pool_path()]["Version"] == "2:1.0~rc1-1"


def test_all_packages_are_listed_for_every_arch(small_repo: Path) -> None:
    arm = parse_stanzas((small_repo / "dists/stable/main/binary-arm64/Packages").read_text())
    assert [s["Package"] for s in arm] == ["demo-doc"]


def test_release_lists_the_packages_files(small_repo: Path) -> None:
    release = parse_stanzas((small_repo / "dists/stable/Release").read_text())[0]
    assert release["Suite"] == "stable"
    assert release["Codename"] == "demo"
    assert release["Architectures"] == "amd64 arm64"
    assert release["Components"] == "main"
    assert release["Date"] == "Tue, 14 Nov 2023 22:13:20 UTC"
    listed = {}
    for line in release["SHA256"].strip().splitlines():
        digest, size, name = line.split()
        listed[name] = (digest, int(size))
    for arch in ("amd64", "arm64"):
        for suffix in ("", ".gz", ".xz"):
            name = f"main/binary-{arch}/Packages{suffix}"
            data = (small_repo / "dists/stable" / name).read_bytes()
            assert listed[name] == (hashlib.sha256(data).hexdigest(), len(data))


def test_deb_build_is_reproducible(tmp_path: Path) -> None:
    spec = DebSpec("repro", "1.0-1", seed=9)
    build_deb(spec, tmp_path / "a.deb")
    build_deb(spec, tmp_path / "b.deb")
    assert (tmp_path / "a.deb").read_bytes() == (tmp_path / "b.deb").read_bytes()


def test_duplicate_files_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same file"):
        build_debian_repo(tmp_path, (SMALL[0], SMALL[0]))


def test_missing_tool_is_one_line(tmp_path: Path) -> None:
    def missing(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
        raise FileNotFoundError(args[0])

    with pytest.raises(SnapshotError, match=r"^dpkg-deb: not installed; run ./bootstrap.sh"):
        build_debian_repo(tmp_path, SMALL[:1], run=missing)


# --------------------------------------------------------------------------------------------------------
# build_demo_snapshot


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("demo-cache")
    build_demo_snapshot(cache)
    return cache


def test_demo_snapshot_is_cached(demo_cache: Path) -> None:
    marker = demo_cache / "snapshot" / MARKER
    before = marker.stat().st_mtime_ns
    runner = CountingRunner()
    again = build_demo_snapshot(demo_cache, run=runner)
    assert runner.calls == []
    assert marker.stat().st_mtime_ns == before
    assert again == DemoSnapshot(root=demo_cache / "snapshot", package_count=again.package_count)


def test_demo_snapshot_contents(demo_cache: Path) -> None:
    snapshot = build_demo_snapshot(demo_cache)
    debs = sorted((snapshot.root / "pool").rglob("*.deb"))
    assert len(debs) == snapshot.package_count >= 20
    assert max(deb.stat().st_size for deb in debs) >= 3 * 1024 * 1024
    names = [deb.name for deb in debs]
    assert any("+" in name.split("_")[0] for name in names)  # a package name with '+'
    assert any("~" in name.split("_")[1] for name in names)  # a version with '~'
    assert any(name.endswith("_all.deb") for name in names)
    listed = set()
    for packages in (snapshot.root / "dists").glob("*/*/binary-*/Packages"):
        listed |= {s["Filename"] for s in parse_stanzas(packages.read_text())}
    assert listed == {deb.relative_to(snapshot.root).as_posix() for deb in debs}
    amd64 = (snapshot.root / "dists/stable/main/binary-amd64/Packages").read_text()
    assert "<b>bold</b> & <script>" in amd64
    assert not list(demo_cache.glob(".snapshot-*"))


def test_demo_snapshot_rebuilt_when_the_recipe_changes(demo_cache: Path) -> None:
    marker = demo_cache / "snapshot" / MARKER
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps({**doc, "recipe": "an older recipe"}))
    runner = CountingRunner()
    rebuilt = build_demo_snapshot(demo_cache, run=runner)
    assert any(call[0] == "dpkg-deb" for call in runner.calls)
    assert json.loads(marker.read_text())["recipe"] == doc["recipe"]
    assert rebuilt.package_count == doc["packages"]
    assert not list(demo_cache.glob(".snapshot-*"))


def test_interrupted_build_leaves_no_snapshot(tmp_path: Path) -> None:
    runner = CountingRunner(fail_on="dpkg-scanpackages")
    with pytest.raises(SnapshotError, match=r"^dpkg-scanpackages: failed with exit code 2 .*boom"):
        build_demo_snapshot(tmp_path, run=runner)
    assert not (tmp_path / "snapshot").exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# demo_key


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--batch", *args],
        input=stdin,
        env={**os.environ, "GNUPGHOME": str(home)},
        capture_output=True,
        check=False,
    )


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="msdt", dir="/tmp"))
    yield home
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
    shutil.rmtree(home, ignore_errors=True)


def test_demo_key_is_usable_cached_and_cleaned_up(tmp_path: Path) -> None:
    with demo_key(tmp_path) as key:
        home = key.gnupghome
        assert len(str(home)) < 30 and str(home).startswith("/tmp/msd")
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        listing = gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
        assert f"fpr:::::::::{key.fingerprint}:" in listing
        assert DEMO_UID in listing
        sec = next(line.split(":") for line in listing.splitlines() if line.startswith("sec"))
        assert sec[3] == "22"  # EdDSA
        assert 700 * 86400 < int(sec[6]) - time.time() < 732 * 86400  # about 2 years
        (tmp_path / "msg").write_bytes(b"hello")
        signed = gpg(home, "--local-user", key.fingerprint, "--detach-sign", str(tmp_path / "msg"))
        assert signed.returncode == 0, signed.stderr
        verified = gpg(home, "--status-fd", "1", "--verify", str(tmp_path / "msg.sig"), str(tmp_path / "msg"))
        assert f"VALIDSIG {key.fingerprint}" in verified.stdout.decode()
    assert not home.exists()
    cached = tmp_path / "demo-signing-key.asc"
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert cached.read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
    with demo_key(tmp_path) as again:
        assert again.fingerprint == key.fingerprint
        assert again.gnupghome != home
    assert not again.gnupghome.exists()


def test_demo_key_home_removed_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), demo_key(tmp_path) as key:
        raise RuntimeError("body failed")
    assert not key.gnupghome.exists()


def test_expiring_cached_key_is_regenerated(tmp_path: Path, scratch_home: Path) -> None:
    made = gpg(
        scratch_home,
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        DEMO_UID,
        "ed25519",
        "sign",
        "10d",
    )
    assert made.returncode == 0, made.stderr
    old = gpg(scratch_home, "--armor", "--export-secret-keys").stdout
    (tmp_path / "demo-signing-key.asc").write_bytes(old)
    old_fpr = next(
        line.split(":")[9]
        for line in gpg(scratch_home, "--with-colons", "--list-keys").stdout.decode().splitlines()
        if line.startswith("fpr")
    )
    with demo_key(tmp_path) as key:
        assert key.fingerprint != old_fpr
        listing = gpg(key.gnupghome, "--with-colons", "--list-secret-keys").stdout.decode()
        assert old_fpr not in listing
    assert (tmp_path / "demo-signing-key.asc").read_bytes() != old


def test_garbage_cached_key_is_regenerated(tmp_path: Path) -> None:
    (tmp_path / "demo-signing-key.asc").write_text("not a key\n")
    with demo_key(tmp_path) as key:
        assert len(key.fingerprint) == 40
    assert (tmp_path / "demo-signing-key.asc").read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
