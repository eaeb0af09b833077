"""Arch snapshots: repo databases written by hand with tarfile (gz, xz, zst), packages linked into pool/."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import FileEntry, SignatureRef
from pipeline.snapshot import ScanSpec, scan_snapshot
from pipeline.snapshot.bounded import BoundedReader


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    arch: str = "x86_64"
    data: bytes = b""
    filename: str | None = None
    csize: int | None = None  # override %CSIZE%
    sig: bytes | None = None  # a .sig beside the package (linked into pool/ like the package)
    pgpsig: bytes | None = None  # %PGPSIG% in the db (None: none)
    description: str = ""

    @property
    def file(self) -> str:
        return self.filename or f"{self.name}-{self.version}-{self.arch}.pkg.tar.zst"

    @property
    def content(self) -> bytes:
        return self.data or f"{self.name} {self.version} {self.arch}".encode()


def desc(pkg: Pkg, *, omit: str = "") -> str:
    fields = {
        "FILENAME": pkg.file,
        "NAME": pkg.name,
        "BASE": pkg.name,
        "VERSION": pkg.version,
        "DESC": pkg.description or f"{pkg.name} does things",
        "CSIZE": str(pkg.csize if pkg.csize is not None else len(pkg.content)),
        "ISIZE": "12345",
        "SHA256SUM": hashlib.sha256(pkg.content).hexdigest(),
        "PGPSIG": base64.b64encode(pkg.pgpsig).decode() if pkg.pgpsig is not None else "",
        "ARCH": pkg.arch,
        "DEPENDS": "glibc\nzlib",
    }
    return "".join(f"%{key}%\n{value}\n\n" for key, value in fields.items() if value and key != omit)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data, mtime=0)
    if compression == "xz":
        return lzma.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def db_bytes(entries: dict[str, str], compression: str = "gz") -> bytes:
    """A repo db: one `<dir>/desc` member per entry (and the directory members repo-add writes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory, text in entries.items():
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{directory}/desc")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return compress(buffer.getvalue(), compression)


def write_db(directory: Path, repo: str, raw: bytes, compression: str = "gz") -> None:
    """`<repo>.db.tar.<ext>` and the `<repo>.db` symlink to it, as repo-add leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    real = f"{repo}.db.tar.{compression}" if compression else f"{repo}.db.tar"
    (directory / real).write_bytes(raw)
    (directory / f"{repo}.db").unlink(missing_ok=True)
    (directory / f"{repo}.db").symlink_to(real)
    (directory / f"{repo}.files.tar.gz").write_bytes(b"not read")
    (directory / f"{repo}.files").unlink(missing_ok=True)
    (directory / f"{repo}.files").symlink_to(f"{repo}.files.tar.gz")


def write_repo(
    root: Path,
    repo: str,
    arch: str,
    packages: list[Pkg],
    *,
    compression: str = "gz",
    pool: bool = True,
    write_files: bool = True,
) -> Path:
    """Package files in pool/packages/ (or in os/<arch>/ itself), linked from `<repo>/os/<arch>/`, and the db."""
    directory = root / repo / "os" / arch
    directory.mkdir(parents=True, exist_ok=True)
    if write_files:
        for pkg in packages:
            for name, data in ((pkg.file, pkg.content), (pkg.file + ".sig", pkg.sig)):
                if data is None:
                    continue
                if pool:
                    target = root / "pool" / "packages" / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    link = directory / name
                    link.unlink(missing_ok=True)
                    link.symlink_to(os.path.relpath(target, directory))
                else:
                    (directory / name).write_bytes(data)
    entries = {f"{pkg.name}-{pkg.version}": desc(pkg) for pkg in packages}
    write_db(directory, repo, db_bytes(entries, compression), compression)
    return directory


def scan(root: Path, **kwargs: object) -> tuple[FileEntry, ...]:
    return scan_snapshot(ScanSpec(root=root, **kwargs)).files  # type: ignore[arg-type]


def refused(root: Path, **kwargs: object) -> str:
    with pytest.raises(SnapshotError) as caught:
        scan(root, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


HELLO = Pkg("hello", "2.12-1", description="GNU hello")
PLUS = Pkg("libfoo++", "1:1.0.2-3")  # an epoch: ':' in the file name, as on real mirrors
ANY = Pkg("py.thing", "0.5_beta-1", arch="any")
SIG = b"\x89\x01\x33" + bytes(range(100))


# --- the good cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gz", "xz", "zst", ""])
def test_two_arches_any_packages_pool_links_and_a_sig(tmp_path: Path, compression: str) -> None:
    signed = Pkg("signed", "1.0-1", sig=SIG, pgpsig=SIG)
    write_repo(tmp_path, "core", "x86_64", [HELLO, PLUS, ANY, signed], compression=compression)
    arm_hello = Pkg("hello", "2.12-1", arch="aarch64")
    write_repo(tmp_path, "core", "aarch64", [arm_hello, ANY], compression=compression)
    snapshot = scan_snapshot(ScanSpec(root=tmp_path))  # auto-detected
    assert snapshot.format == "arch" and snapshot.suites == ("core",)
    files = {entry.path: entry for entry in snapshot.files}
    assert list(files) == [
        "core/os/aarch64/hello-2.12-1-aarch64.pkg.tar.zst",
        "core/os/aarch64/py.thing-0.5_beta-1-any.pkg.tar.zst",
        "core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst",
        "core/os/x86_64/libfoo++-1:1.0.2-3-x86_64.pkg.tar.zst",
        "core/os/x86_64/py.thing-0.5_beta-1-any.pkg.tar.zst",
        "core/os/x86_64/signed-1.0-1-x86_64.pkg.tar.zst",
    ]
    hello = files["core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst"]
    pool_file = tmp_path / "pool" / "packages" / "hello-2.12-1-x86_64.pkg.tar.zst"
    status = pool_file.stat()
    assert hello == FileEntry(
        path="core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst",
        source=str(pool_file),
        size=len(HELLO.content),
        mtime_ns=status.st_mtime_ns,
        dev=status.st_dev,
        inode=status.st_ino,
        expected_sha256=hashlib.sha256(HELLO.content).hexdigest(),
        name="hello",
        version="2.12-1",
        arch="x86_64",
        description="GNU hello",
        signature=None,
    )
    # the any package: one pool file, listed under both arches
    any_paths = [entry for path, entry in files.items() if "py.thing" in path]
    assert {entry.source for entry in any_paths} == {str(tmp_path / "pool" / "packages" / ANY.file)}
    assert {entry.arch for entry in any_paths} == {"any"}
    assert files["core/os/x86_64/signed-1.0-1-x86_64.pkg.tar.zst"].signature == SignatureRef(
        path="core/os/x86_64/signed-1.0-1-x86_64.pkg.tar.zst.sig", size=len(SIG), sha256=hashlib.sha256(SIG).hexdigest()
    )


def test_packages_as_plain_files_and_only_listed_files_are_published(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "extra", "x86_64", [HELLO, Pkg("s", "1-1", sig=SIG)], pool=False)
    (directory / "stray-1-1-x86_64.pkg.tar.zst").write_bytes(b"not in the db")
    (tmp_path / "lastsync").write_text("1700000000\n")
    (tmp_path / "iso").mkdir()
    files = scan(tmp_path, format="arch")
    assert [entry.path for entry in files] == [
        "extra/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst",
        "extra/os/x86_64/s-1-1-x86_64.pkg.tar.zst",
    ]
    assert files[0].source == str(directory / HELLO.file)
    assert files[1].signature is not None and files[1].signature.size == len(SIG)


def test_selection_by_repo_and_arch(tmp_path: Path) -> None:
    write_repo(tmp_path, "core", "x86_64", [HELLO, ANY])
    write_repo(tmp_path, "extra", "x86_64", [PLUS])
    write_repo(tmp_path, "extra", "aarch64", [Pkg("arm", "1-1", arch="aarch64"), ANY])
    everything = scan_snapshot(ScanSpec(root=tmp_path))
    assert everything.suites == ("core", "extra") and len(everything.files) == 5

    extra = scan_snapshot(ScanSpec(root=tmp_path, suites=("extra",)))
    assert extra.suites == ("extra",)
    assert {entry.path.split("/")[0] for entry in extra.files} == {"extra"} and len(extra.files) == 3

    arm = scan(tmp_path, architectures=("aarch64",))
    assert [entry.path for entry in arm] == [
        "extra/os/aarch64/arm-1-1-aarch64.pkg.tar.zst",
        "extra/os/aarch64/py.thing-0.5_beta-1-any.pkg.tar.zst",
    ]
    both = scan(tmp_path, suites=("core",), architectures=("x86_64",))
    assert len(both) == 2

    with pytest.raises(ConfigError, match="'testing' not in the snapshot; available: core, extra"):
        scan(tmp_path, suites=("testing",))
    with pytest.raises(ConfigError, match="'riscv64' not in the snapshot; available: aarch64, x86_64"):
        scan(tmp_path, architectures=("riscv64",))
    assert "no repo database" in refused(tmp_path, suites=("core",), architectures=("aarch64",))
    with pytest.raises(ConfigError, match="components and upstream_keyring apply to Debian"):
        scan(tmp_path, components=("main",))


def test_auto_detection_and_no_database(tmp_path: Path) -> None:
    (tmp_path / "core" / "os" / "x86_64").mkdir(parents=True)
    (tmp_path / "core" / "os" / "x86_64" / "core.db.tar.gz").write_bytes(b"")  # no core.db link: pacman can't use it
    assert "Arch (*/os/*/*.db)" in refused(tmp_path)
    assert "no Arch repository database" in refused(tmp_path, format="arch")
    write_repo(tmp_path, "core", "x86_64", [HELLO])
    assert scan_snapshot(ScanSpec(root=tmp_path)).format == "arch"


def test_one_db_pointing_at_another_repos_name_is_not_a_repo(tmp_path: Path) -> None:
    write_repo(tmp_path, "core", "x86_64", [HELLO])
    other = tmp_path / "weird" / "os" / "x86_64"
    write_db(other, "notweird", db_bytes({"a-1": desc(PLUS)}))
    assert [entry.path for entry in scan(tmp_path)] == ["core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst"]


# --- mismatches: all collected, one line, nothing published -------------------------------------


def test_missing_files_and_size_mismatches_are_all_named_in_one_line(tmp_path: Path) -> None:
    short = Pkg("short", "1-1", csize=999)
    gone = Pkg("gone", "1-1")
    dangling = Pkg("dangling", "1-1")
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO, short, gone, dangling])
    (directory / gone.file).unlink()
    (tmp_path / "pool" / "packages" / dangling.file).unlink()  # the link stays, its target is gone
    message = refused(tmp_path)
    assert "core/os/x86_64/gone-1-1-x86_64.pkg.tar.zst: missing" in message
    assert "core/os/x86_64/dangling-1-1-x86_64.pkg.tar.zst: missing (dangling symlink)" in message
    assert f"core/os/x86_64/short-1-1-x86_64.pkg.tar.zst: size {len(short.content)} != %CSIZE% 999" in message
    assert "hello" not in message
    assert "3 file(s)" in message and message.endswith("re-sync the mirror")


def test_a_db_naming_a_file_that_does_not_exist(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", db_bytes({"hello-2.12-1": desc(HELLO), "ghost-1-1": desc(Pkg("ghost", "1-1"))}))
    message = refused(tmp_path)
    assert message.startswith("core/os/x86_64/ghost-1-1-x86_64.pkg.tar.zst: missing")


def test_a_symlink_leaving_the_snapshot_fails(tmp_path: Path) -> None:
    root = tmp_path / "snapshot"
    directory = write_repo(root, "core", "x86_64", [HELLO])
    outside = tmp_path / "outside.pkg.tar.zst"
    outside.write_bytes(HELLO.content)
    (directory / HELLO.file).unlink()
    (directory / HELLO.file).symlink_to(outside)
    assert "symlink points outside the snapshot" in refused(root)


def test_an_arch_directory_linked_outside_the_snapshot_fails(tmp_path: Path) -> None:
    root = tmp_path / "snapshot"
    elsewhere = write_repo(tmp_path / "elsewhere", "core", "x86_64", [HELLO], pool=False)
    (root / "core" / "os").mkdir(parents=True)
    (root / "core" / "os" / "x86_64").symlink_to(elsewhere)
    assert "outside the snapshot" in refused(root)


def test_a_symlinked_db_leaving_the_snapshot_fails(tmp_path: Path) -> None:
    root = tmp_path / "snapshot"
    directory = write_repo(root, "core", "x86_64", [HELLO])
    (tmp_path / "core.db.tar.gz").write_bytes((directory / "core.db.tar.gz").read_bytes())
    (directory / "core.db").unlink()
    (directory / "core.db").symlink_to(tmp_path / "core.db.tar.gz")
    assert "core/os/x86_64/core.db: symlink points outside the snapshot" in refused(root)


def test_a_dangling_db_link(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    (directory / "core.db.tar.gz").unlink()
    assert refused(tmp_path) == "core/os/x86_64/core.db: missing (dangling symlink); re-sync the mirror"


@pytest.mark.parametrize(
    "filename",
    [
        "../escape-1-1-x86_64.pkg.tar.zst",
        "sub/dir-1-1-x86_64.pkg.tar.zst",
        "..",
        "back\\slash-1-1-x86_64.pkg.tar.zst",
        unicodedata.normalize("NFD", "café-1-1-x86_64.pkg.tar.zst"),
        "tab\there-1-1-x86_64.pkg.tar.zst",
        "foo-1-1-x86_64.pkg.tar.zst.sig",
    ],
)
def test_unsafe_file_names_from_the_db_are_refused(tmp_path: Path, filename: str) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    bad = Pkg("bad", "1-1", filename=filename)
    write_db(directory, "core", db_bytes({"hello-2.12-1": desc(HELLO), "bad-1-1": desc(bad)}))
    message = refused(tmp_path)
    assert ascii(filename)[1:-1] in message or filename in message
    assert "in core/os/x86_64/core.db:bad-1-1/desc; the repository metadata is unsafe" in message


def test_an_nfc_non_ascii_name_is_fine(tmp_path: Path) -> None:
    cafe = Pkg("café", "1-1")
    write_repo(tmp_path, "core", "x86_64", [cafe])
    assert [entry.path for entry in scan(tmp_path)] == ["core/os/x86_64/café-1-1-x86_64.pkg.tar.zst"]


# --- malformed databases -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["FILENAME", "CSIZE", "SHA256SUM", "NAME", "VERSION"])
def test_a_desc_without_a_required_field(tmp_path: Path, field: str) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", db_bytes({"hello-2.12-1": desc(HELLO, omit=field)}))
    assert refused(tmp_path) == (f"core/os/x86_64/core.db:hello-2.12-1/desc: lacks %{field}%; re-sync the mirror")


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("%CSIZE%\n", "%CSIZE%\nx", "malformed %CSIZE% or %SHA256SUM%"),
        ("%SHA256SUM%\n", "%SHA256SUM%\nzz", "malformed %CSIZE% or %SHA256SUM%"),
        ("%PGPSIG%\n", "%PGPSIG%\n!!", "malformed %PGPSIG%"),
    ],
)
def test_malformed_fields(tmp_path: Path, old: str, new: str, needle: str) -> None:
    pkg = Pkg("hello", "2.12-1", sig=SIG, pgpsig=SIG)
    directory = write_repo(tmp_path, "core", "x86_64", [pkg])
    write_db(directory, "core", db_bytes({"hello-2.12-1": desc(pkg).replace(old, new)}))
    assert needle in refused(tmp_path)


def test_a_desc_that_is_not_utf8(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = desc(HELLO).encode().replace(b"GNU hello", b"GNU \xff")
        info = tarfile.TarInfo("hello-2.12-1/desc")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    write_db(directory, "core", gzip.compress(raw.getvalue()))
    assert "hello-2.12-1/desc: not valid UTF-8" in refused(tmp_path)


@pytest.mark.parametrize("raw", [b"\x1f\x8b\x08garbage", zstandard.ZstdCompressor().compress(b"not a tar" * 100)])
def test_a_damaged_database(tmp_path: Path, raw: bytes) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", raw)
    message = refused(tmp_path)
    assert message.startswith("core/os/x86_64/core.db: ") and message.endswith("re-sync the mirror")


def tar_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BOMB = tar_with({"hello-2.12-1/desc": desc(HELLO).encode(), "hello-2.12-1/files": bytes(5 << 20)})


@pytest.mark.parametrize("compression", ["gz", "xz", "zst"])
def test_a_database_too_large_uncompressed_is_refused_without_inflating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", 1 << 20)
    read: list[int] = []
    real_read = BoundedReader.read

    def counting_read(self: BoundedReader, size: int = -1) -> bytes:
        data = real_read(self, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(BoundedReader, "read", counting_read)
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", compress(BOMB, compression), compression)

    assert refused(tmp_path) == (
        "core/os/x86_64/core.db: decompresses to more than 1 MiB, the limit for repository metadata; "
        "it is damaged or a decompression bomb, re-sync the mirror"
    )
    assert sum(read) <= 1 << 20  # and the byte past the cap, never returned


def test_a_database_of_zeros_is_an_empty_tar_and_read_no_further(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", 64 * 1024)
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", zstandard.ZstdCompressor().compress(bytes(10 << 20)), "zst")

    assert scan(tmp_path) == ()  # the end-of-archive marker comes first: the rest is never decompressed


def test_a_desc_entry_too_large_is_refused_before_it_is_read(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    huge = desc(HELLO).encode() + b"\n" * (1 << 20)
    write_db(directory, "core", gzip.compress(tar_with({"hello-2.12-1/desc": huge})))

    assert refused(tmp_path) == (
        "core/os/x86_64/core.db:hello-2.12-1/desc: more than 1 MiB, not a package description; re-sync the mirror"
    )


def test_a_database_bomb_stays_within_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python allocations while refusing a 40 MiB gzip bomb under a 16 MiB cap stay far below either."""
    import tracemalloc

    monkeypatch.setattr("pipeline.snapshot.bounded.MAX_METADATA_BYTES", 16 << 20)
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    bomb = tar_with({"hello-2.12-1/desc": desc(HELLO).encode(), "hello-2.12-1/files": bytes(40 << 20)})
    write_db(directory, "core", gzip.compress(bomb, compresslevel=1))
    del bomb

    tracemalloc.start()
    try:
        message = refused(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert "decompresses to more than 16 MiB" in message
    assert peak < 4 << 20, peak  # a read chunk or two, not the cap


@pytest.mark.parametrize("csize", ["\u00b2", "\uff11\uff12", "\u0661", "9" * 5000], ids=lambda s: ascii(s)[:12])
def test_a_csize_that_is_not_ascii_digits_is_refused_in_one_line(tmp_path: Path, csize: str) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    text = desc(HELLO).replace(f"%CSIZE%\n{len(HELLO.content)}\n", f"%CSIZE%\n{csize}\n")
    write_db(directory, "core", db_bytes({"hello-2.12-1": text}))

    assert refused(tmp_path) == (
        "core/os/x86_64/core.db:hello-2.12-1/desc: malformed %CSIZE% or %SHA256SUM%; re-sync the mirror"
    )


def test_the_same_file_listed_twice_with_different_sizes(tmp_path: Path) -> None:
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO])
    write_db(directory, "core", db_bytes({"a": desc(HELLO), "b": desc(Pkg("hello", "2.12-1", csize=5))}))
    assert "listed twice in core/os/x86_64/core.db" in refused(tmp_path)


# --- signatures ----------------------------------------------------------------------------------


def test_signature_problems_are_collected_with_the_other_problems(tmp_path: Path) -> None:
    huge = Pkg("huge", "1-1", sig=bytes(64 * 1024 + 1))
    wrong = Pkg("wrong", "1-1", sig=SIG, pgpsig=b"another signature")
    gone = Pkg("gone", "1-1")
    directory = write_repo(tmp_path, "core", "x86_64", [HELLO, huge, wrong, gone])
    (directory / gone.file).unlink()
    message = refused(tmp_path)
    assert "core/os/x86_64/huge-1-1-x86_64.pkg.tar.zst.sig: more than 64 KiB" in message
    assert "core/os/x86_64/wrong-1-1-x86_64.pkg.tar.zst.sig: differs from %PGPSIG% in core/os/x86_64/core.db" in message
    assert "core/os/x86_64/gone-1-1-x86_64.pkg.tar.zst: missing" in message


def test_a_sig_of_exactly_64_kib_and_a_pgpsig_without_sig_file_are_fine(tmp_path: Path) -> None:
    edge = Pkg("edge", "1-1", sig=bytes(64 * 1024))
    db_only = Pkg("dbonly", "1-1", pgpsig=SIG)  # %PGPSIG% but no .sig file on the mirror
    write_repo(tmp_path, "core", "x86_64", [edge, db_only])
    files = {entry.name: entry for entry in scan(tmp_path)}
    assert files["edge"].signature is not None and files["edge"].signature.size == 64 * 1024
    assert files["dbonly"].signature is None


@pytest.mark.parametrize(
    ("char", "problem"),
    [
        ("\ufffe", "code point U+FFFE not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\ufdd0", "code point U+FDD0 not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\u2066", "invisible or bidi formatting character U+2066 in name"),
        ("\ufeff", "invisible or bidi formatting character U+FEFF in name"),
    ],
    ids=ascii,
)
def test_a_file_name_that_breaks_xml_or_listings_is_refused_in_one_line(
    tmp_path: Path, char: str, problem: str
) -> None:
    evil = Pkg("evil", "1-1", filename=f"evil{char}-1-1-x86_64.pkg.tar.zst")
    write_repo(tmp_path, "core", "x86_64", [HELLO, evil])  # the file exists: only its name is wrong

    assert refused(tmp_path) == (
        f"{ascii(evil.file)}: {problem} in core/os/x86_64/core.db:evil-1-1/desc; "
        "the repository metadata is unsafe, fix or re-sync the mirror"
    )
