"""Debian snapshots: a tiny archive written by hand (pool files, Packages, Release, InRelease)."""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import io
import itertools
import lzma
import marshal
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pipeline import sequences
from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import FileEntry
from pipeline.snapshot import ScanSpec, bounded, debian, recheck_snapshot, scan_snapshot, snapshot_mark
from pipeline.snapshot.debian import _PLAIN_REPO_PATH, signature_problem
from pipeline.snapshot.paths import check_repo_path
from pipeline.state import StateCache
from tests.tools import require_tools


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    arch: str
    component: str = "main"
    data: bytes = b""
    filename: str | None = None
    size: int | None = None  # override the Size written into Packages

    @property
    def path(self) -> str:
        if self.filename is not None:
            return self.filename
        return f"pool/{self.component}/{self.name[0]}/{self.name}/{self.name}_{self.version}_{self.arch}.deb"

    @property
    def content(self) -> bytes:
        return self.data or f"{self.name} {self.version} {self.arch}".encode()


def stanza(pkg: Pkg, content: bytes | None = None) -> str:
    data = pkg.content if content is None else content
    return (
        f"Package: {pkg.name}\nVersion: {pkg.version}\nArchitecture: {pkg.arch}\n"
        f"Maintainer: Someone <someone@example.org>\n"
        f"Filename: {pkg.path}\nSize: {pkg.size if pkg.size is not None else len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        f"Description: {pkg.name} synopsis\n long description of {pkg.name}\n .\n more\n"
    )


def write_archive(
    root: Path,
    suite: str,
    packages: list[Pkg],
    *,
    architectures: tuple[str, ...] = ("amd64", "all"),
    components: tuple[str, ...] = ("main",),
    compression: str = "",
    write_pool: bool = True,
) -> Path:
    """Pool files, one Packages per (component, arch) and a Release listing their hashes."""
    release_lines: list[str] = []
    for component in components:
        for arch in architectures:
            chosen = [p for p in packages if p.component == component and p.arch == arch]
            text = "\n".join(stanza(p) for p in chosen).encode()
            directory = root / "dists" / suite / component / f"binary-{arch}"
            directory.mkdir(parents=True, exist_ok=True)
            variants = {"Packages": text}
            if compression == "xz":
                variants["Packages.xz"] = lzma.compress(text)
            if compression == "gz":
                variants["Packages.gz"] = gzip.compress(text)
            for name, data in variants.items():
                if not compression or name != "Packages":
                    (directory / name).write_bytes(data)
                digest = hashlib.sha256(data).hexdigest()
                release_lines.append(f" {digest} {len(data):>8} {component}/binary-{arch}/{name}")
    if write_pool:
        for pkg in packages:
            target = root / pkg.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(pkg.content)
    release = root / "dists" / suite / "Release"
    release.write_text(
        f"Origin: Test\nSuite: {suite}\nCodename: {suite}\n"
        f"Architectures: {' '.join(a for a in architectures)}\nComponents: {' '.join(components)}\n"
        "SHA256:\n" + "\n".join(release_lines) + "\n"
    )
    return release


HELLO = Pkg("hello", "2.10-3", "amd64")
HELLO_DOC = Pkg("hello-doc", "2.10-3", "all")


def scan(root: Path, **options: object) -> dict[str, object]:
    snapshot = scan_snapshot(ScanSpec(root=root, **options))  # type: ignore[arg-type]
    assert snapshot.format == "debian"
    return {entry.path: entry for entry in snapshot.files}


def scan_error(root: Path, **options: object) -> str:
    with pytest.raises(SnapshotError) as caught:
        scan_snapshot(ScanSpec(root=root, **options))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_entries_carry_packages_metadata(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    (tmp_path / "pool" / "main" / "unlisted.deb").write_bytes(b"not in Packages")

    snapshot = scan_snapshot(ScanSpec(root=tmp_path))

    assert snapshot.format == "debian" and snapshot.suites == ("bookworm",)
    assert [entry.path for entry in snapshot.files] == [HELLO_DOC.path, HELLO.path]
    hello = snapshot.files[1]
    assert hello.source == str((tmp_path / HELLO.path).resolve())
    assert hello.size == len(HELLO.content)
    assert hello.expected_sha256 == hashlib.sha256(HELLO.content).hexdigest()
    assert (hello.name, hello.version, hello.arch) == ("hello", "2.10-3", "amd64")
    assert hello.description == "hello synopsis"


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_compressed_packages_only(tmp_path: Path, compression: str) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC], compression=compression)
    assert not (tmp_path / "dists/bookworm/main/binary-amd64/Packages").exists()

    assert sorted(scan(tmp_path)) == sorted([HELLO.path, HELLO_DOC.path])


def test_uncompressed_packages_is_preferred(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    (tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz").write_bytes(b"garbage, never read")

    assert sorted(scan(tmp_path)) == sorted([HELLO.path, HELLO_DOC.path])


def filtered_archive(root: Path) -> dict[str, Pkg]:
    pkgs = {
        "stable-main-amd64": Pkg("a", "1", "amd64"),
        "stable-main-arm64": Pkg("b", "1", "arm64"),
        "stable-main-all": Pkg("c", "1", "all"),
        "stable-contrib-amd64": Pkg("d", "1", "amd64", component="contrib"),
    }
    write_archive(
        root,
        "stable",
        list(pkgs.values()),
        architectures=("amd64", "arm64", "all"),
        components=("main", "contrib"),
    )
    pkgs["testing-main-amd64"] = Pkg("e", "2", "amd64")
    write_archive(root, "testing", [pkgs["testing-main-amd64"]], architectures=("amd64",))
    return pkgs


def test_suite_component_and_architecture_filters(tmp_path: Path) -> None:
    pkgs = filtered_archive(tmp_path)

    def paths(*keys: str) -> list[str]:
        return sorted(pkgs[key].path for key in keys)

    assert sorted(scan(tmp_path)) == paths(*pkgs)
    assert sorted(scan(tmp_path, suites=("testing",))) == paths("testing-main-amd64")
    assert sorted(scan(tmp_path, components=("contrib",))) == paths("stable-contrib-amd64")
    assert sorted(scan(tmp_path, suites=("stable",), architectures=("arm64",))) == paths(
        "stable-main-arm64", "stable-main-all"
    )


@pytest.mark.parametrize(
    ("setting", "value", "available"),
    [
        ("suites", ("sid",), "available: stable, testing"),
        ("components", ("non-free",), "available: contrib, main"),
        ("architectures", ("riscv64",), "available: all, amd64, arm64"),
    ],
)
def test_unknown_selection_is_a_config_error_listing_what_exists(
    tmp_path: Path, setting: str, value: tuple[str, ...], available: str
) -> None:
    filtered_archive(tmp_path)

    with pytest.raises(ConfigError) as caught:
        scan_snapshot(ScanSpec(root=tmp_path, **{setting: value}))  # type: ignore[arg-type]

    assert str(caught.value).startswith(f"{setting}: {value[0]!r} not")
    assert available in str(caught.value)


def test_missing_and_truncated_files_are_all_named_in_one_error(tmp_path: Path) -> None:
    gone, short = Pkg("gone", "1", "amd64"), Pkg("short", "1", "amd64")
    write_archive(tmp_path, "bookworm", [HELLO, gone, short])
    (tmp_path / gone.path).unlink()
    (tmp_path / short.path).write_bytes(b"tr")

    message = scan_error(tmp_path)

    assert message.startswith(f"{gone.path}: missing; {short.path}: size 2 != Packages Size {len(short.content)}")
    assert "(dists/bookworm/main/binary-amd64/Packages)" in message
    assert HELLO.path not in message
    assert message.endswith("re-sync the mirror")


def test_many_problems_are_truncated(tmp_path: Path) -> None:
    pkgs = [Pkg(f"p{i:02}", "1", "amd64") for i in range(25)]
    write_archive(tmp_path, "bookworm", pkgs, write_pool=False)

    message = scan_error(tmp_path)

    assert "and 5 more" in message and pkgs[19].path in message and pkgs[20].path not in message


def test_sync_lock_refuses(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])
    (tmp_path / "Archive-Update-in-Progress-mirror1").touch()

    message = scan_error(tmp_path, sync_lock=(Path("Archive-Update-in-Progress-*"),))

    assert message.endswith("a sync is in progress (lock file exists); run again after the sync finishes")
    assert "Archive-Update-in-Progress-mirror1" in message


def test_packages_not_matching_release_hash_fails(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    packages = tmp_path / "dists/bookworm/main/binary-amd64/Packages"
    packages.write_bytes(packages.read_bytes() + b"\n")

    message = scan_error(tmp_path)

    assert message.startswith("dists/bookworm/main/binary-amd64/Packages: size/SHA256")
    assert "dists/bookworm/Release" in message


def test_compressed_packages_with_wrong_content_fails(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC], compression="xz")
    release = tmp_path / "dists/bookworm/Release"
    packages_xz = tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz"
    other = lzma.compress(stanza(Pkg("evil", "1", "amd64")).encode())
    packages_xz.write_bytes(other)  # the uncompressed SHA256 line in Release no longer matches
    lines = [
        line
        if not line.endswith(" main/binary-amd64/Packages.xz")
        else f" {hashlib.sha256(other).hexdigest()} {len(other)} main/binary-amd64/Packages.xz"
        for line in release.read_text().splitlines()
    ]
    release.write_text("\n".join(lines) + "\n")

    assert scan_error(tmp_path).startswith("dists/bookworm/main/binary-amd64/Packages.xz (decompressed)")


def test_release_listing_a_missing_packages_file_fails(tmp_path: Path) -> None:
    write_archive(
        tmp_path, "bookworm", [HELLO, Pkg("x", "1", "amd64", component="contrib")], components=("main", "contrib")
    )
    (tmp_path / "dists/bookworm/contrib/binary-amd64/Packages").unlink()

    assert scan_error(tmp_path).startswith("dists/bookworm/contrib/binary-amd64/Packages: listed in")


def test_mirror_of_a_subset_of_architectures_is_accepted(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, Pkg("z", "1", "s390x")], architectures=("amd64", "s390x"))
    shutil.rmtree(tmp_path / "dists/bookworm/main/binary-s390x")

    assert list(scan(tmp_path)) == [HELLO.path]


@pytest.mark.parametrize("filename", ["../outside.deb", "pool/../../outside.deb", "/etc/passwd", "pool\\x.deb"])
def test_unsafe_filename_is_refused(tmp_path: Path, filename: str) -> None:
    write_archive(
        tmp_path / "root", "bookworm", [HELLO, Pkg("evil", "1", "amd64", filename=filename)], write_pool=False
    )
    (tmp_path / "outside.deb").write_bytes(b"x")

    message = scan_error(tmp_path / "root")

    assert "dists/bookworm/main/binary-amd64/Packages" in message
    assert "metadata is unsafe" in message and "missing" not in message


def test_symlinked_pool_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC])
    shutil.move(root / "pool", tmp_path / "elsewhere")
    (root / "pool").symlink_to(tmp_path / "elsewhere")

    assert scan_error(root).startswith("pool: symlink points outside the snapshot")


@pytest.mark.parametrize("cached", [65536, 1])
def test_symlinks_inside_the_root_are_followed(tmp_path: Path, cached: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with the directories' real paths forgotten after every one (`DIRS_CACHED`): found again."""
    monkeypatch.setattr(debian, "DIRS_CACHED", cached)
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    (tmp_path / "store").mkdir()
    real = shutil.move(tmp_path / HELLO.path, tmp_path / "store" / "hello.deb")
    (tmp_path / HELLO.path).symlink_to(real)
    (tmp_path / "dists" / "stable").symlink_to("bookworm")  # an alias suite is not scanned twice

    snapshot = scan_snapshot(ScanSpec(root=tmp_path))

    assert snapshot.suites == ("bookworm",)
    entries = {entry.path: entry for entry in snapshot.files}
    assert entries[HELLO.path].source == str(Path(real).resolve())
    assert sorted(scan(tmp_path, suites=("stable",))) == sorted([HELLO.path, HELLO_DOC.path])


@pytest.mark.parametrize("run", [1, 32768])  # every stanza a spilled run of its own, or all in one
def test_same_file_in_two_suites_is_listed_once(tmp_path: Path, run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequences, "SPILL_RUN", run)
    write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    write_archive(tmp_path, "trixie", [HELLO])

    snapshot = scan_snapshot(ScanSpec(root=tmp_path))

    assert snapshot.suites == ("bookworm", "trixie")
    assert [entry.path for entry in snapshot.files] == [HELLO_DOC.path, HELLO.path]


@pytest.mark.parametrize("run", [1, 32768])  # every stanza a spilled run of its own, or all in one
def test_same_filename_with_different_hash_in_two_suites_fails(
    tmp_path: Path, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sequences, "SPILL_RUN", run)
    write_archive(tmp_path, "bookworm", [HELLO])
    write_archive(tmp_path, "trixie", [Pkg("hello", "2.10-3", "amd64", data=b"other bytes")], write_pool=False)

    message = scan_error(tmp_path)

    assert message.startswith(f"{HELLO.path}: listed with different Size/SHA256")


def test_stanza_without_sha256_fails(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])
    packages = tmp_path / "dists/bookworm/main/binary-amd64/Packages"
    text = "".join(line for line in packages.read_text().splitlines(keepends=True) if not line.startswith("SHA256"))
    packages.write_text(text)
    (tmp_path / "dists/bookworm/Release").write_text("Suite: bookworm\nComponents: main\nArchitectures: amd64\n")

    assert "lacks SHA256" in scan_error(tmp_path)


def test_forced_debian_on_a_non_debian_tree_fails(tmp_path: Path) -> None:
    (tmp_path / "a.deb").write_bytes(b"x")

    assert "dists: not found" in scan_error(tmp_path, format="debian")


# --- upstream keyring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotGpg:
    home: str
    keyring: Path
    signer: str
    stranger: str

    def run(self, *args: str) -> None:
        env = {**os.environ, "GNUPGHOME": self.home}
        subprocess.run(["gpg", "--batch", "--quiet", *args], env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def snapshot_gpg() -> Iterator[SnapshotGpg]:
    home = tempfile.mkdtemp(prefix="g", dir="/tmp")  # short: gpg-agent's socket path is limited
    gpg = SnapshotGpg(home, Path(home) / "upstream.gpg", "t@example.org", "o@example.org")
    try:
        for uid in ("Test <t@example.org>", "Other <o@example.org>"):
            gpg.run("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "1d")
        gpg.run("--output", str(gpg.keyring), "--export", gpg.signer)
        yield gpg
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": home}, check=False)
        shutil.rmtree(home, ignore_errors=True)


def clearsign(gpg: SnapshotGpg, release: Path, signer: str) -> Path:
    in_release = release.with_name("InRelease")
    gpg.run("--local-user", signer, "--output", str(in_release), "--clearsign", str(release))
    return in_release


def test_signed_in_release_is_verified_and_its_signed_text_used(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO, HELLO_DOC])
    clearsign(snapshot_gpg, release, snapshot_gpg.signer)
    release.write_text("Suite: bookworm\nComponents: main\nArchitectures: amd64\nSHA256:\n 00 1 x\n")  # ignored

    assert sorted(scan(tmp_path, upstream_keyring=snapshot_gpg.keyring)) == sorted([HELLO.path, HELLO_DOC.path])


def test_tampered_in_release_fails(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    in_release = clearsign(snapshot_gpg, write_archive(tmp_path, "bookworm", [HELLO]), snapshot_gpg.signer)
    in_release.write_text(in_release.read_text().replace("Origin: Test", "Origin: Evil"))

    message = scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)

    assert message.startswith("dists/bookworm/InRelease: signature not accepted (BADSIG)")


def test_in_release_signed_by_another_key_fails(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    clearsign(snapshot_gpg, write_archive(tmp_path, "bookworm", [HELLO]), snapshot_gpg.stranger)

    message = scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)

    assert message.startswith("dists/bookworm/InRelease: signature not accepted (no signature by a key")


def test_detached_release_gpg_is_verified(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO])
    signature = release.with_name("Release.gpg")
    snapshot_gpg.run("--local-user", snapshot_gpg.signer, "--output", str(signature), "--detach-sign", str(release))
    assert list(scan(tmp_path, upstream_keyring=snapshot_gpg.keyring)) == [HELLO.path]

    release.write_text(release.read_text() + "Label: changed\n")

    assert "signature not accepted" in scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)


def test_recheck_verifies_the_release_signatures_again(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    """An unchanged tree is not scanned again, but its signatures are checked again: what the keyring accepts
    may change with time (an expired key) while the tree does not."""
    root = tmp_path / "snap"
    clearsign(snapshot_gpg, write_archive(root, "bookworm", [HELLO]), snapshot_gpg.signer)
    spec = ScanSpec(root=root, format="debian", upstream_keyring=snapshot_gpg.keyring)
    recheck_snapshot(spec, "debian")

    other = tmp_path / "other.gpg"
    snapshot_gpg.run("--output", str(other), "--export", snapshot_gpg.stranger)
    with pytest.raises(SnapshotError, match="^dists/bookworm/InRelease: signature not accepted"):
        recheck_snapshot(ScanSpec(root=root, format="debian", upstream_keyring=other), "debian")
    recheck_snapshot(ScanSpec(root=root, format="debian"), "debian")  # no keyring: nothing to verify


def test_keyring_requires_a_signature(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])

    assert scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring).startswith("dists/bookworm/InRelease: missing")


def test_signed_release_must_list_the_packages_file(tmp_path: Path, snapshot_gpg: SnapshotGpg) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO])
    release.write_text("Suite: bookworm\nComponents: main\nArchitectures: amd64\n")
    clearsign(snapshot_gpg, release, snapshot_gpg.signer)

    message = scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)

    assert message.startswith("dists/bookworm/main/binary-amd64/Packages: not listed in the signed")


def test_missing_keyring_file_is_a_config_error(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])

    with pytest.raises(ConfigError, match="upstream_keyring"):
        scan_snapshot(ScanSpec(root=tmp_path, upstream_keyring=tmp_path / "nope.gpg"))


def test_signature_status_rules() -> None:
    good = "[GNUPG:] GOODSIG AB Test\n[GNUPG:] VALIDSIG FPR 2026-01-01 0 0 4 0 22 8 01 FPR\n"
    unknown_second = "[GNUPG:] ERRSIG CD 22 8 01 0 9 FPR2\n[GNUPG:] NO_PUBKEY CD\n"
    assert signature_problem(0, good) is None
    assert signature_problem(2, good + unknown_second) is None
    assert signature_problem(0, good + "[GNUPG:] EXPKEYSIG AB Test\n") == "EXPKEYSIG"
    assert signature_problem(2, good + "[GNUPG:] ERRSIG CD 22 8 01 0 4 -\n") == "gpgv exit status 2"
    assert signature_problem(0, "[GNUPG:] GOODSIG AB Test\n") == "no valid signature"
    assert signature_problem(0, "gpgv: [GNUPG:] GOODSIG spoofed\n") == "no valid signature"


def test_archive_made_by_dpkg_deb_and_apt_ftparchive(tmp_path: Path) -> None:
    require_tools("dpkg-deb", "apt-ftparchive")
    package_dir = tmp_path / "build" / "DEBIAN"
    package_dir.mkdir(parents=True)
    (package_dir / "control").write_text(
        "Package: tiny\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: T <t@example.org>\n"
        "Description: a tiny <b>test</b> package\n Longer text.\n"
    )
    root = tmp_path / "mirror"
    deb = root / "pool" / "main" / "t" / "tiny" / "tiny_1.0-1_amd64.deb"
    deb.parent.mkdir(parents=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tmp_path / "build"), str(deb)],
        check=True,
        capture_output=True,
    )
    binary = root / "dists" / "stable" / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    packages = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=root, check=True, capture_output=True).stdout
    (binary / "Packages.xz").write_bytes(lzma.compress(packages))
    (binary / "Packages.gz").write_bytes(gzip.compress(packages))
    options = ["-o", "APT::FTPArchive::Release::Components=main", "-o", "APT::FTPArchive::Release::Architectures=amd64"]
    release = subprocess.run(
        ["apt-ftparchive", *options, "release", "."], cwd=root / "dists" / "stable", check=True, capture_output=True
    ).stdout
    (root / "dists" / "stable" / "Release").write_bytes(release)

    (entry,) = scan_snapshot(ScanSpec(root=root)).files

    assert entry.path == "pool/main/t/tiny/tiny_1.0-1_amd64.deb"
    assert entry.expected_sha256 == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert (entry.name, entry.version, entry.arch, entry.description) == (
        "tiny",
        "1.0-1",
        "amd64",
        "a tiny <b>test</b> package",
    )


# --- names that break XML or hide what they are (issue 10) ----------------------------------------


@pytest.mark.parametrize(
    ("char", "problem"),
    [
        ("\ufffe", "code point U+FFFE not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\U0001ffff", "code point U+1FFFF not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\u202e", "invisible or bidi formatting character U+202E in name"),
        ("\u200b", "invisible or bidi formatting character U+200B in name"),
        ("\u2028", "control character or backslash in name"),  # a line separator stays inside its line
    ],
    ids=ascii,
)
def test_filename_with_a_character_that_breaks_xml_or_listings_is_refused(
    tmp_path: Path, char: str, problem: str
) -> None:
    evil = Pkg("evil", "1", "amd64", filename=f"pool/main/e/evil/evil{char}_1_amd64.deb")
    write_archive(tmp_path, "bookworm", [HELLO, evil])  # the file exists on disk: only its name is wrong

    message = scan_error(tmp_path)

    assert message == (
        f"{ascii(evil.path)}: {problem} in dists/bookworm/main/binary-amd64/Packages; "
        "the repository metadata is unsafe, fix or re-sync the mirror"
    )


# --- numbers: ASCII digits only (issue 10) --------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    ["\u00b2", "\u0661\u0662", "\uff11\uff12", "12x", "-1", "+3", "1 2", "9" * 5000],
    ids=lambda s: ascii(s)[:12],
)
def test_size_that_is_not_ascii_digits_is_refused_in_one_line(tmp_path: Path, size: str) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])
    packages = tmp_path / "dists/bookworm/main/binary-amd64/Packages"
    packages.write_text(packages.read_text().replace(f"Size: {len(HELLO.content)}\n", f"Size: {size}\n"))
    (tmp_path / "dists/bookworm/Release").write_text("Suite: bookworm\nComponents: main\nArchitectures: amd64\n")

    assert scan_error(tmp_path) == (
        "dists/bookworm/main/binary-amd64/Packages: stanza 'hello' has a malformed Size or SHA256; re-sync the mirror"
    )


@pytest.mark.parametrize("size", ["\u00b2", "\uff11\uff12", "9" * 5000], ids=lambda s: ascii(s)[:12])
def test_release_size_that_is_not_ascii_digits_is_refused_in_one_line(tmp_path: Path, size: str) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO])
    text = release.read_text()
    packages_line = next(line for line in text.splitlines() if line.endswith(" main/binary-amd64/Packages"))
    digest = packages_line.split()[0]
    release.write_text(text.replace(packages_line, f" {digest} {size} main/binary-amd64/Packages"))

    assert scan_error(tmp_path) == "dists/bookworm/Release: malformed SHA256 line; re-sync the mirror"


# --- decompression bombs (issue 10) ---------------------------------------------------------------

BOMB_CAP = 1 << 20  # the cap the bomb tests lower bounded.MAX_METADATA_BYTES to
BOMB_ZEROS = 5 << 20  # a bomb a little over it


def release_lines(root: Path, suite: str, replace: dict[str, bytes | None]) -> Path:
    """Rewrite the Release's SHA256 lines: the named files get the hash of the given bytes, None drops them."""
    release = root / "dists" / suite / "Release"
    lines = []
    for line in release.read_text().splitlines():
        name = line.split()[-1] if line.startswith(" ") else ""
        if name in replace:
            data = replace[name]
            if data is None:
                continue
            line = f" {hashlib.sha256(data).hexdigest()} {len(data):>8} {name}"
        lines.append(line)
    release.write_text("\n".join(lines) + "\n")
    return release


def compress_bomb(compression: str, tail: bytes = b"") -> bytes:
    text = stanza(HELLO).encode() + b"\n" + bytes(BOMB_ZEROS) + tail
    return lzma.compress(text) if compression == "xz" else gzip.compress(text)


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_packages_bomb_listed_by_its_release_is_refused_at_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", BOMB_CAP)
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression=compression)
    bomb = compress_bomb(compression)
    name = f"main/binary-amd64/Packages.{compression}"
    (tmp_path / "dists/bookworm" / name).write_bytes(bomb)
    release_lines(tmp_path, "bookworm", {name: bomb, "main/binary-amd64/Packages": None})  # upstream's own bomb

    assert scan_error(tmp_path) == (
        f"dists/bookworm/{name}: decompresses to more than 1 MiB, the limit for repository metadata; "
        "it is damaged or a decompression bomb, re-sync the mirror"
    )


def test_packages_bomb_stops_at_the_uncompressed_size_the_release_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []
    real_read = lzma.LZMAFile.read

    def counting_read(self: lzma.LZMAFile, size: int = -1) -> bytes:
        data = real_read(self, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(lzma.LZMAFile, "read", counting_read)
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression="xz")
    bomb = compress_bomb("xz")
    (tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz").write_bytes(bomb)
    listed = stanza(HELLO).encode()
    release_lines(tmp_path, "bookworm", {"main/binary-amd64/Packages.xz": bomb})  # Packages: the real size

    message = scan_error(tmp_path)

    assert message == (
        f"dists/bookworm/main/binary-amd64/Packages.xz: decompresses to more than the {len(listed)} bytes "
        "dists/bookworm/Release lists for main/binary-amd64/Packages; it is damaged or a decompression bomb, "
        "re-sync the mirror"
    )
    assert sum(read) == len(listed) + 1  # not a byte more than needed to see it is too long


def test_packages_larger_than_the_cap_on_disk_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", BOMB_CAP)
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",))
    packages = tmp_path / "dists/bookworm/main/binary-amd64/Packages"
    packages.write_bytes(packages.read_bytes() + b"\n" * BOMB_ZEROS)

    assert scan_error(tmp_path) == (
        "dists/bookworm/main/binary-amd64/Packages: more than 1 MiB, the limit for repository metadata; "
        "re-sync the mirror"
    )


def test_packages_parsed_from_a_stream_is_the_same_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stanzas across many read chunks, multi-byte characters split between chunks, no trailing newline."""
    monkeypatch.setattr("pipeline.snapshot.bounded.CHUNK_BYTES", 7)
    pkgs = [Pkg(f"p\u00e9{i}", "1", "amd64") for i in range(30)]
    write_archive(tmp_path, "bookworm", pkgs, architectures=("amd64",), compression="xz")
    packages_xz = tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz"
    text = lzma.decompress(packages_xz.read_bytes()).rstrip(b"\n")
    packages_xz.write_bytes(lzma.compress(text))
    release_lines(tmp_path, "bookworm", {"main/binary-amd64/Packages.xz": packages_xz.read_bytes()})
    release_lines(tmp_path, "bookworm", {"main/binary-amd64/Packages": text})

    files = scan_snapshot(ScanSpec(root=tmp_path)).files

    assert [entry.name for entry in files] == sorted(p.name for p in pkgs)
    assert {entry.description for entry in files} == {f"{p.name} synopsis" for p in pkgs}


def test_packages_decompressed_bytes_not_valid_utf8_name_their_offset(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression="gz")
    text = stanza(HELLO).encode() + b"\nPackage: x\xff\n"
    packages_gz = tmp_path / "dists/bookworm/main/binary-amd64/Packages.gz"
    packages_gz.write_bytes(gzip.compress(text))
    release_lines(tmp_path, "bookworm", {"main/binary-amd64/Packages.gz": None, "main/binary-amd64/Packages": None})

    bad = text.index(b"\xff")

    assert scan_error(tmp_path) == (
        f"dists/bookworm/main/binary-amd64/Packages.gz: not valid UTF-8 (byte {bad}); re-sync the mirror"
    )


def test_packages_bomb_stays_within_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python allocations while refusing a one-line bomb stay near the line limit (the whole would be 40 MiB)."""
    import tracemalloc

    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", 5 << 20)
    monkeypatch.setattr("pipeline.snapshot.debian.MAX_LINE_BYTES", 2 << 20)
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression="gz")
    bomb = gzip.compress(bytes(40 << 20))  # gz: xz's own dictionary (8 MiB) would be counted
    (tmp_path / "dists/bookworm/main/binary-amd64/Packages.gz").write_bytes(bomb)
    release_lines(tmp_path, "bookworm", {"main/binary-amd64/Packages.gz": bomb, "main/binary-amd64/Packages": None})

    tracemalloc.start()
    try:
        message = scan_error(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert message == (
        "dists/bookworm/main/binary-amd64/Packages.gz: a line longer than 2 MiB (byte 0); it is damaged or a "
        "decompression bomb, re-sync the mirror"
    )
    assert peak < 8 << 20, peak  # the line buffer and a chunk or two: not the 40 MiB, nor the 5 MiB cap


def test_signed_release_refuses_a_packages_xz_bomb_before_decompressing_it(
    tmp_path: Path, snapshot_gpg: SnapshotGpg, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression="xz")
    clearsign(snapshot_gpg, release, snapshot_gpg.signer)  # lists the real Packages.xz
    packages_xz = tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz"
    bomb = compress_bomb("xz")
    packages_xz.write_bytes(bomb)

    def never(raw: bytes, rel: str) -> object:
        raise AssertionError(f"{rel} decompressed before its hash was checked")

    monkeypatch.setattr("pipeline.snapshot.debian._decompressor", never)

    message = scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)

    digest = hashlib.sha256(bomb).hexdigest()[:16]
    assert message.startswith(f"dists/bookworm/main/binary-amd64/Packages.xz: size/SHA256 ({len(bomb)}, {digest}")
    assert ") differ from dists/bookworm/InRelease (" in message and message.endswith("; re-sync the mirror")


def test_signed_release_refuses_a_packages_xz_that_is_not_xz_by_its_hash(
    tmp_path: Path, snapshot_gpg: SnapshotGpg
) -> None:
    release = write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",), compression="xz")
    clearsign(snapshot_gpg, release, snapshot_gpg.signer)
    (tmp_path / "dists/bookworm/main/binary-amd64/Packages.xz").write_bytes(b"not xz at all" * 100)

    message = scan_error(tmp_path, upstream_keyring=snapshot_gpg.keyring)

    assert message.startswith("dists/bookworm/main/binary-amd64/Packages.xz: size/SHA256 (1300, ")
    assert "differ from dists/bookworm/InRelease" in message and "decompress" not in message


# --- Packages parsed a chunk at a time by pipeline.snapshot.stanzas (issue 14) ----------------------------------


def rewrite_packages(root: Path, transform: Callable[[bytes], bytes], *, keep_release: bool = False) -> Path:
    """Rewrite bookworm's main/binary-amd64/Packages; the Release keeps listing the new bytes unless told."""
    packages = root / "dists/bookworm/main/binary-amd64/Packages"
    packages.write_bytes(transform(packages.read_bytes()))
    if not keep_release:
        release_lines(root, "bookworm", {"main/binary-amd64/Packages": packages.read_bytes()})
    return packages


def test_crlf_packages_and_field_names_in_other_cases_are_read_as_apt_reads_them(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO, Pkg("other", "1", "amd64")], architectures=("amd64",))
    expected = {entry.path: entry for entry in scan_snapshot(ScanSpec(root=tmp_path)).files}
    rewrite_packages(
        tmp_path,
        lambda data: data.replace(b"Filename:", b"filename :").replace(b"SHA256:", b"Sha256:").replace(b"\n", b"\r\n"),
    )

    assert {entry.path: entry for entry in scan_snapshot(ScanSpec(root=tmp_path)).files} == expected


def test_a_stanza_without_any_field_used_fails_instead_of_ending_the_file(tmp_path: Path) -> None:
    """python-debian ended the file at such a stanza: the packages after it were silently left out."""
    write_archive(tmp_path, "bookworm", [HELLO, Pkg("later", "1", "amd64")], architectures=("amd64",))
    rewrite_packages(tmp_path, lambda data: b"Maintainer: nobody\n\n" + data)

    assert scan_error(tmp_path) == (
        "dists/bookworm/main/binary-amd64/Packages: stanza '' lacks Filename, Size, SHA256; re-sync the mirror"
    )


def test_openpgp_armor_in_packages_is_refused(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",))
    rewrite_packages(tmp_path, lambda data: b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + data)

    assert scan_error(tmp_path).startswith(
        "dists/bookworm/main/binary-amd64/Packages: an OpenPGP armor line ('-----BEGIN PGP SIGNED MESSAGE-----')"
    )


def test_uncompressed_packages_damaged_and_malformed_is_reported_as_damaged(tmp_path: Path) -> None:
    """Streamed from disk, so its hash is known at the end: a parse error still gives way to the mismatch."""
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",))
    rewrite_packages(tmp_path, lambda data: data.replace(b"Size: ", b"Size: x"), keep_release=True)

    message = scan_error(tmp_path)

    assert message.startswith("dists/bookworm/main/binary-amd64/Packages: size/SHA256 (")
    assert "differ from dists/bookworm/Release" in message


def test_uncompressed_packages_is_never_held_whole(tmp_path: Path) -> None:
    """Python allocations while scanning a 24 MiB Packages stay near a read chunk and the stanza it ends in."""
    import tracemalloc

    pkgs = [Pkg(f"p{i}", "1", "amd64") for i in range(96)]
    write_archive(tmp_path, "bookworm", pkgs, architectures=("amd64",))
    padding = b"X-Padding: " + b"x" * (256 << 10) + b"\n"
    packages = rewrite_packages(tmp_path, lambda data: data.replace(b"Version:", padding + b"Version:"))
    assert packages.stat().st_size > 24 << 20

    tracemalloc.start()
    try:
        files = scan_snapshot(ScanSpec(root=tmp_path)).files
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert len(files) == len(pkgs)
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was(tmp_path: Path, enabled: bool) -> None:
    write_archive(tmp_path, "bookworm", [HELLO], architectures=("amd64",))
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        scan(tmp_path)
        assert gc.isenabled() is enabled
        rewrite_packages(tmp_path, lambda data: data.replace(b"Size: ", b"Size: x"))
        scan_error(tmp_path)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_filename_fast_path_accepts_exactly_the_ascii_paths_check_repo_path_accepts() -> None:
    alphabet = ["a", ".", "/", "\\", " ", "\x00", "\x7f", "~", "\u00e9"]
    for length in range(1, 6):
        for chars in itertools.product(alphabet, repeat=length):
            path = "".join(chars)
            try:
                accepted = check_repo_path(path, "P") == path
            except SnapshotError:
                accepted = False
            fast = _PLAIN_REPO_PATH.fullmatch(path) is not None
            assert fast == (accepted and path.isascii()), ascii(path)


# --- the last parse of each Packages, kept in the state cache ---------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateCache]:
    with StateCache.open(tmp_path / "state.sqlite", repo="test") as cache:
        yield cache


def cached_scan(root: Path, state: StateCache) -> tuple[FileEntry, ...]:
    return scan_snapshot(ScanSpec(root=root, listing_cache=state)).files


def kept(state: StateCache, rel: str, digest: str) -> bytes | None:
    """The parse the state keeps of `rel` with `digest`, read whole."""
    blob = state.listing(rel, digest)
    if blob is None:
        return None
    with blob:
        return blob.read()


def keep(state: StateCache, rel: str, digest: str, data: bytes) -> None:
    state.remember_listing(rel, digest, [data[:3], data[3:]], len(data))


def split_kept(blob: bytes) -> tuple[tuple[object, ...], bytes]:
    """A kept parse's header (marshalled after its 4-byte length) and its body."""
    length = int.from_bytes(blob[:4], "little")
    return marshal.loads(blob[4 : 4 + length]), blob[4 + length :]


def joined_kept(header: tuple[object, ...], body: bytes) -> bytes:
    data = marshal.dumps(header)
    return len(data).to_bytes(4, "little") + data + body


def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> object:
        raise AssertionError("a Packages file was parsed again")

    monkeypatch.setattr(debian, "_parse_packages", refuse)


@pytest.mark.parametrize("compression", ["", "xz", "gz"])
def test_a_packages_file_with_the_same_bytes_is_not_parsed_again(
    tmp_path: Path, state: StateCache, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC], compression=compression)
    first = cached_scan(root, state)
    assert first == scan_snapshot(ScanSpec(root=root)).files  # the same entries as without a cache
    name = "Packages" + (f".{compression}" if compression else "")
    assert kept(state, f"dists/bookworm/main/binary-amd64/{name}", "0" * 64) is None
    no_parsing(monkeypatch)
    assert cached_scan(root, state) == first


def test_a_packages_file_whose_bytes_changed_is_parsed_again(tmp_path: Path, state: StateCache) -> None:
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC], compression="xz")
    cached_scan(root, state)
    newer = Pkg("hello", "2.10-4", "amd64")
    write_archive(root, "bookworm", [newer, HELLO_DOC], compression="xz")
    assert [entry.path for entry in cached_scan(root, state)] == [HELLO_DOC.path, newer.path]


def test_a_cached_parse_is_still_checked_against_the_release(tmp_path: Path, state: StateCache) -> None:
    """Packages.xz unchanged but the Release now lists other bytes for the uncompressed Packages: refused,
    as a parse would refuse it, not taken from the cache."""
    root = tmp_path / "mirror"
    release = write_archive(root, "bookworm", [HELLO, HELLO_DOC], compression="xz")
    cached_scan(root, state)
    text = release.read_text()
    listed = hashlib.sha256(stanza(HELLO).encode()).hexdigest()
    assert listed in text
    release.write_text(text.replace(listed, "0" * 64))
    message = scan_error(root, listing_cache=state)
    assert message.startswith("dists/bookworm/main/binary-amd64/Packages.xz (decompressed): size/SHA256")


def test_an_unreadable_cached_parse_is_a_miss(tmp_path: Path, state: StateCache) -> None:
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC], compression="gz")
    first = cached_scan(root, state)
    rel = "dists/bookworm/main/binary-amd64/Packages.gz"
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    assert kept(state, rel, digest) is not None
    for unreadable in (b"not zstd at all", b"", (1 << 30).to_bytes(4, "little") + b"a header of a GiB?"):
        keep(state, rel, digest, unreadable)
        assert cached_scan(root, state) == first
        assert kept(state, rel, digest) != unreadable  # parsed and kept again


def test_a_cached_parse_of_several_batches_reads_back_every_stanza(
    tmp_path: Path, state: StateCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache keeps a parse a batch of rows at a time (no Packages file is held whole): one row short of
    two batches, exactly two, and one over all read back in order."""
    root = tmp_path / "mirror"
    packages = [Pkg(f"p{i:02}", "1.0-1", "amd64") for i in range(7)]
    write_archive(root, "bookworm", packages, compression="xz")
    expected = scan_snapshot(ScanSpec(root=root)).files
    rel = "dists/bookworm/main/binary-amd64/Packages.xz"
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    for batch in (4, 7, 6, 1):
        monkeypatch.setattr(debian, "_LISTING_BATCH", batch)
        keep(state, rel, digest, b"")  # a miss: parsed and kept in batches of `batch`
        assert cached_scan(root, state) == expected
        with monkeypatch.context() as parsing:
            no_parsing(parsing)
            assert cached_scan(root, state) == expected


@pytest.mark.parametrize("damage", ["codec", "short", "long", "bits"])
def test_a_cached_parse_of_another_codec_or_damaged_is_a_miss(tmp_path: Path, state: StateCache, damage: str) -> None:
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC], compression="xz")
    first = cached_scan(root, state)
    rel = "dists/bookworm/main/binary-amd64/Packages.xz"
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    blob = kept(state, rel, digest)
    assert blob is not None
    (codec, size, sha256, batches, length), body = split_kept(blob)
    assert isinstance(length, int)
    damaged = {
        "codec": joined_kept(("debian-listing/2 py3.11", size, sha256, batches, length), body),
        "short": joined_kept((codec, size, sha256, batches, length + 1), body),
        "long": joined_kept((codec, size, sha256, batches, length - 1), body),
        "bits": blob[:-6] + bytes(b ^ 0xFF for b in blob[-6:]),
    }[damage]
    keep(state, rel, digest, damaged)
    assert cached_scan(root, state) == first
    assert kept(state, rel, digest) == blob  # parsed and kept again


def test_parses_of_packages_files_no_longer_scanned_are_forgotten(tmp_path: Path, state: StateCache) -> None:
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", [HELLO, HELLO_DOC], architectures=("amd64", "arm64", "all"))
    cached_scan(root, state)
    arm64 = "dists/bookworm/main/binary-arm64/Packages"
    digest = hashlib.sha256((root / arm64).read_bytes()).hexdigest()
    assert kept(state, arm64, digest) is not None
    scan_snapshot(ScanSpec(root=root, architectures=("amd64",), listing_cache=state))
    assert kept(state, arm64, digest) is None


# --- parses in worker processes ----------------------------------------------------------------------------


def kept_rows(blob: bytes | None) -> tuple[tuple[object, ...], list[object]]:
    """A kept parse's header and rows (its bytes may differ: marshal shares repeated objects as it finds them)."""
    assert blob is not None
    header, body = split_kept(blob)
    stream = io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    batches = header[3]
    assert isinstance(batches, int)
    rows: list[object] = []
    for _ in range(batches):
        rows += marshal.loads(stream.read(int.from_bytes(stream.read(4), "little")))
    return header, rows


def parsing_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> list[int]:
    """Every Packages parse that the cache does not have goes to the worker processes (whatever its size), their
    temporary files in `tmp`; the number of parses started there, each scan."""
    monkeypatch.setattr(debian, "PARSE_ELSEWHERE_MIN_BYTES", 0)
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    started: list[int] = []
    real = debian._parse_elsewhere

    @contextlib.contextmanager
    def spy(*args: Any) -> Iterator[tuple[dict[str, object], object]]:
        with real(*args) as (futures, read):
            started.append(len(futures))
            yield futures, read

    monkeypatch.setattr(debian, "_parse_elsewhere", spy)
    return started


@pytest.mark.parametrize("compression", ["", "xz", "gz"])
def test_packages_parsed_by_worker_processes_give_the_same_files_and_kept_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(5) for arch in ("amd64", "arm64", "all")]
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", packages, architectures=("amd64", "arm64", "all"), compression=compression)
    here = StateCache.open(tmp_path / "here.sqlite", repo="test")
    elsewhere = StateCache.open(tmp_path / "elsewhere.sqlite", repo="test")
    with here, elsewhere:
        expected = cached_scan(root, here)
        started = parsing_elsewhere(monkeypatch, tmp_path / "tmp")
        assert cached_scan(root, elsewhere) == expected and started == [3]
        for arch in ("amd64", "arm64", "all"):
            rel = f"dists/bookworm/main/binary-{arch}/Packages" + (f".{compression}" if compression else "")
            digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
            assert kept_rows(kept(elsewhere, rel, digest)) == kept_rows(kept(here, rel, digest))
        read: list[str] = []
        real_checksum = debian._file_checksum
        monkeypatch.setattr(
            debian, "_file_checksum", lambda tree, rel, *copy: read.append(rel) or real_checksum(tree, rel, *copy)
        )
        assert cached_scan(root, elsewhere) == expected and started == [3, 0]  # kept: none parsed again
        assert sorted(read) == sorted(set(read)) and len(read) == 3  # each read once: to look it up, not again
    assert not list((tmp_path / "tmp").glob("mirrorseed-parse-*"))  # every worker's file read and deleted


def test_a_damaged_packages_parsed_by_a_worker_process_is_refused_as_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(3) for arch in ("amd64", "arm64")]
    root = tmp_path / "mirror"
    release = write_archive(root, "bookworm", packages, architectures=("amd64", "arm64"), compression="xz")
    text = release.read_text()
    arm64 = "\n".join(stanza(p) for p in packages if p.arch == "arm64").encode()
    release.write_text(text.replace(hashlib.sha256(arm64).hexdigest(), "0" * 64))
    with StateCache.open(tmp_path / "here.sqlite", repo="test") as state:
        expected = scan_error(root, listing_cache=state)
    assert expected.startswith("dists/bookworm/main/binary-arm64/Packages.xz (decompressed): size/SHA256")
    started = parsing_elsewhere(monkeypatch, tmp_path / "tmp")
    with StateCache.open(tmp_path / "elsewhere.sqlite", repo="test") as state:
        assert scan_error(root, listing_cache=state) == expected and started == [2]
    assert not list((tmp_path / "tmp").glob("mirrorseed-parse-*"))


def test_a_packages_whose_worker_died_is_parsed_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import pipeline.hashing

    class DeadPool:
        def submit(self, *args: object) -> Future[object]:
            future: Future[object] = Future()
            future.set_exception(BrokenProcessPool("a worker was killed"))
            return future

    @contextlib.contextmanager
    def dead_pool(workers: int) -> Iterator[DeadPool]:
        yield DeadPool()

    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(3) for arch in ("amd64", "arm64")]
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", packages, architectures=("amd64", "arm64"), compression="gz")
    expected = scan_snapshot(ScanSpec(root=root)).files
    started = parsing_elsewhere(monkeypatch, tmp_path / "tmp")
    monkeypatch.setattr(pipeline.hashing, "local_pool", dead_pool)
    with StateCache.open(tmp_path / "state.sqlite", repo="test") as state, caplog.at_level("WARNING"):
        assert cached_scan(root, state) == expected and started == [2]
    assert (
        "binary-amd64/Packages.gz: the worker parsing it stopped (a worker was killed); parsing it here" in caplog.text
    )


def test_a_packages_that_cannot_be_read_is_not_sent_to_a_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(3) for arch in ("amd64", "arm64", "all")]
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", packages, architectures=("amd64", "arm64", "all"))
    (root / "dists/bookworm/main/binary-arm64/Packages").write_bytes(b"x" * 100_000)
    monkeypatch.setattr(bounded, "MAX_METADATA_BYTES", 50_000)  # refused unread, here (not in workers)
    here = StateCache.open(tmp_path / "here.sqlite", repo="test")
    elsewhere = StateCache.open(tmp_path / "elsewhere.sqlite", repo="test")
    with here, elsewhere:
        expected = scan_error(root, listing_cache=here)
        started = parsing_elsewhere(monkeypatch, tmp_path / "tmp")
        assert scan_error(root, listing_cache=elsewhere) == expected and started == [2]  # amd64 and all only
    assert expected.startswith("dists/bookworm/main/binary-arm64/Packages")


@pytest.mark.parametrize("damage", ["cut", "overwritten"])
def test_a_workers_parse_damaged_before_it_is_read_is_parsed_here_or_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A worker's file is read once, as its rows (not read through first, as a kept parse is). Cut short, it is
    parsed here instead; overwritten, the scan stops with one line naming the Packages file, and the copy kept
    of it is a miss the next time, parsed again."""
    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(40) for arch in ("amd64", "arm64")]
    root = tmp_path / "mirror"
    write_archive(root, "bookworm", packages, architectures=("amd64", "arm64"), compression="xz")
    with StateCache.open(tmp_path / "here.sqlite", repo="test") as state:
        expected = cached_scan(root, state)
    started = parsing_elsewhere(monkeypatch, tmp_path / "tmp")
    real = debian._parse_elsewhere

    @contextlib.contextmanager
    def cut(*args: Any) -> Iterator[tuple[dict[str, Any], object]]:
        with real(*args) as (futures, read):
            for future in futures.values():
                path, _, size = future.result()
                if damage == "cut":
                    os.truncate(path, size // 2)
                else:
                    with open(path, "r+b") as file:
                        file.seek(size // 2)
                        file.write(bytes(64))
            yield futures, read

    monkeypatch.setattr(debian, "_parse_elsewhere", cut)
    with StateCache.open(tmp_path / "elsewhere.sqlite", repo="test") as state:
        if damage == "cut":
            assert cached_scan(root, state) == expected and started == [2]
            return
        message = scan_error(root, listing_cache=state)
        assert started == [2]
        assert message.startswith("dists/bookworm/main/binary-amd64/Packages.xz: the parse a worker process wrote is ")
        assert message.endswith("; run again")
        monkeypatch.setattr(debian, "_parse_elsewhere", real)
        monkeypatch.setattr(debian, "PARSE_ELSEWHERE_MIN_BYTES", 1 << 40)  # parsed here now
        assert cached_scan(root, state) == expected


def test_files_the_marked_walk_saw_are_taken_as_found_and_only_the_others_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run's marked walk keeps the regular files it stat'ed (`snapshot_mark(seen=True)`): the scan takes
    their stat from it and looks up only the others (a symlinked file, a file below a symlinked directory, a
    name other than printable ASCII), and finds what a scan that looks every file up finds: the same entries,
    and, when files are missing, of the wrong size or not files, the same line."""
    packages = [Pkg(f"p{i:02}", "1.0-1", arch) for i in range(6) for arch in ("amd64", "all")]
    odd = Pkg("qé", "1.0-1", "amd64")
    write_archive(tmp_path, "bookworm", [*packages, odd])
    (tmp_path / "store").mkdir()
    linked_file = packages[0].path
    (tmp_path / linked_file).symlink_to(shutil.move(tmp_path / linked_file, tmp_path / "store" / "p00.deb"))
    linked_dir = tmp_path / "pool" / "main" / "p" / "p01"
    linked_dir.symlink_to(shutil.move(linked_dir, tmp_path / "store" / "p01"))
    spec = ScanSpec(root=tmp_path)
    looked_up: list[str] = []
    real_locate = debian._Tree.locate

    def locate(tree: Any, rel: str) -> Any:
        if rel.startswith("pool/"):
            looked_up.append(rel)
        return real_locate(tree, rel)

    monkeypatch.setattr(debian._Tree, "locate", locate)
    expected = scan_snapshot(spec).files
    assert len(looked_up) == len(expected) == 13
    looked_up.clear()
    marked = snapshot_mark(spec, seen=True)
    assert marked is not None and marked.seen is not None and marked.files is None
    assert marked.digest == (snapshot_mark(spec) or marked).digest != ""  # what it keeps changes no mark
    assert scan_snapshot(spec, marked).files == expected
    assert sorted(looked_up) == sorted([linked_file, *(p.path for p in packages[2:4]), odd.path])

    (tmp_path / packages[6].path).write_bytes(b"shorter")
    (tmp_path / packages[8].path).unlink()
    (tmp_path / packages[10].path).unlink()
    (tmp_path / packages[10].path).mkdir()
    error = scan_error(tmp_path)
    assert "size 7 != Packages Size" in error and ": missing" in error and "not a regular file" in error
    with pytest.raises(SnapshotError) as caught:
        scan_snapshot(spec, snapshot_mark(spec, seen=True))
    assert str(caught.value) == error
