"""Arch Linux snapshots: the published set is exactly the package files the selected repo databases list.

Layout read: `<repo>/os/<arch>/<repo>.db` (a symlink to `<repo>.db.tar.{gz,zst,xz}` on real mirrors) and
the package files it names, `<repo>/os/<arch>/<%FILENAME%>`, with an optional detached `<file>.sig`
beside each. Mirrors hold packages (and signatures) as symlinks into `pool/packages/` or
`pool/community/`: they are followed, inside the snapshot only, and each package is listed under the
path pacman fetches (`core/os/x86_64/foo-1.0-1-x86_64.pkg.tar.zst`). `any` packages sit in every
`os/<arch>/` whose db lists them and are published under each of those paths.

Every `*/desc` entry of a db gives `%FILENAME%`, `%NAME%`, `%VERSION%`, `%ARCH%`, `%CSIZE%`,
`%SHA256SUM%` (and `%DESC%`, `%PGPSIG%`). Package files are stat'ed and checked against `%CSIZE%`
here; their SHA-256 is checked later, by the hashing stage, against `FileEntry.expected_sha256`.
Signatures are small: they are read here, and their size and SHA-256 go into `FileEntry.signature`.
The `.db`, `.files` and `.sig` files themselves get no torrent. A db is decompressed and read as a tar
stream, one member at a time, at most `bounded.MAX_METADATA_BYTES` of it (a bomb is refused, never
inflated), each `desc` at most MAX_DESC_BYTES.

The snapshot's time is the root's `lastsync` file (epoch seconds, written by the Arch mirror sync
script) when it is there; the mirror probes compare mirrors' own `lastsync` with it.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import glob
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import stat
import tarfile
import zlib
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

import zstandard

from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable, FileTableBuilder
from pipeline.model import SignatureRef
from pipeline.snapshot import bounded
from pipeline.snapshot.bounded import BoundedReader, Readable, parse_size, read_at_most, size_text
from pipeline.snapshot.formats import FormatInfo, Scanned, ScanSpec
from pipeline.snapshot.paths import (
    as_source,
    check_repo_path,
    component_problem,
    decode_name,
    escaped,
    is_inside,
    listed_entry,
    resolve_link_inside,
    shown,
)

__all__ = ["MAX_DESC_BYTES", "MAX_SIGNATURE_BYTES", "ArchSelection", "parse_lastsync", "scan_arch"]

log = logging.getLogger(__name__)

MAX_DESC_BYTES = 1 << 20  # one `desc` entry of a db: a few KB (the db as a whole: bounded.MAX_METADATA_BYTES)
MAX_SIGNATURE_BYTES = 64 * 1024  # a detached OpenPGP signature is a few hundred bytes
MAX_LASTSYNC_BYTES = 64  # `lastsync` holds one epoch-seconds number
_EPOCH = re.compile(r"[0-9]{1,12}")
_MAX_LISTED_PROBLEMS = 20
_RESYNC = "re-sync the mirror"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_DESC_KEY = re.compile(r"%([A-Z0-9]+)%")
_REQUIRED = ("FILENAME", "NAME", "VERSION", "CSIZE", "SHA256SUM")


@dataclass(frozen=True)
class ArchSelection:
    """What the operator asked for (repos: `suites` in the settings); empty tuples mean everything found."""

    repos: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepoDb:
    """One repo database on disk: `<repo>/os/<arch>/<repo>.db`."""

    repo: str
    arch: str

    @property
    def directory(self) -> str:
        return f"{self.repo}/os/{self.arch}"

    @property
    def rel(self) -> str:
        return f"{self.directory}/{self.repo}.db"


@dataclass(frozen=True)
class ListedPackage:
    """A package file as a db `desc` entry describes it."""

    path: str  # <repo>/os/<arch>/<filename>
    filename: str
    size: int
    sha256: str
    name: str
    version: str
    arch: str | None
    description: str | None
    pgpsig: bytes | None  # %PGPSIG%, decoded
    listed_in: str


def scan_arch(root_real: bytes, selection: ArchSelection) -> Scanned:
    """Read the selected repo databases and stat every package file they list."""
    found = _discover(root_real)
    chosen = _select(root_real, found, selection)
    listed: dict[str, ListedPackage] = {}
    for db in chosen:
        for item in _read_db(root_real, db):
            listed[item.path] = item  # paths embed repo and arch: unique across dbs
    files = _locate_all(root_real, chosen, listed)
    repos = tuple(dict.fromkeys(db.repo for db in chosen))
    log.info("arch scan: %d repos, %d databases, %d package files", len(repos), len(chosen), len(files))
    architectures = tuple(sorted({db.arch for db in chosen}))
    return Scanned(files, suites=repos, architectures=architectures, timestamp=_read_lastsync(root_real))


def parse_lastsync(data: bytes) -> datetime | None:
    """An Arch `lastsync` file (epoch seconds, optional trailing newline) as aware UTC; None if malformed."""
    text = data.strip().decode("ascii", "replace")
    if not _EPOCH.fullmatch(text):
        return None
    seconds = int(text)
    if seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _read_lastsync(root_real: bytes) -> datetime | None:
    """The root `lastsync` as aware UTC; a missing, non-regular or malformed file is only logged."""
    path = root_real + b"/lastsync"
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            log.info("lastsync: not a regular file; snapshot time unknown")
            return None
        with open(path, "rb") as handle:
            data = handle.read(MAX_LASTSYNC_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.info("lastsync: cannot read (%s); snapshot time unknown", exc.strerror)
        return None
    found = parse_lastsync(data) if len(data) <= MAX_LASTSYNC_BYTES else None
    if found is None:
        log.info("lastsync: not epoch seconds (%r); snapshot time unknown", data[:MAX_LASTSYNC_BYTES])
    return found


# --- discovery and selection ---------------------------------------------------------------------


def _real_dir(root_real: bytes, rel: str) -> bytes | None:
    """Real path of the directory `rel` (symlinks followed inside the root only), None if absent."""
    path = root_real + b"/" + rel.encode("utf-8")
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SnapshotError(f"{shown(rel)}: cannot stat ({exc.strerror}); fix its permissions") from None
    if stat.S_ISLNK(status.st_mode):
        target = resolve_link_inside(path, root_real, rel)
        return target if os.path.isdir(target) else None
    if not stat.S_ISDIR(status.st_mode):
        return None
    real = os.path.realpath(path)  # a parent may be a link: check where it really is
    if not is_inside(real, root_real):
        raise SnapshotError(
            f"{shown(rel)}: lies outside the snapshot through a symlinked parent ({os.fsdecode(real)!r}); "
            "replace the link with the directory and run again"
        )
    return real


def _list_names(real: bytes, rel: str, wanted: bytes = b"") -> list[str]:
    """Non-dot names in the real directory `real` (repo path `rel`); with `wanted`, only those holding it."""
    try:
        with os.scandir(real) as entries:
            raw = [e.name for e in entries if not e.name.startswith(b".")]
    except OSError as exc:
        where = shown(rel) if rel else os.fsdecode(real)
        raise SnapshotError(f"{where}: cannot list directory ({exc.strerror}); fix its permissions") from None
    if wanted:
        raw = [name for name in raw if os.path.lexists(real + b"/" + name + b"/" + wanted)]
    return sorted(decode_name(name, rel) for name in raw)


def _discover(root_real: bytes) -> list[RepoDb]:
    """Every `<repo>/os/<arch>/<repo>.db` in the snapshot, sorted by repo then arch."""
    found: list[RepoDb] = []
    for repo in _list_names(root_real, "", b"os"):  # not pool/, iso/, lastsync, …
        os_real = _real_dir(root_real, f"{repo}/os")
        if os_real is None:
            continue
        for arch in _list_names(os_real, f"{repo}/os", f"{repo}.db".encode()):
            found.append(RepoDb(repo, arch))
    if not found:
        raise SnapshotError(
            f"{os.fsdecode(root_real)}: no Arch repository database <repo>/os/<arch>/<repo>.db found; "
            "pass the right --snapshot, or --format flat"
        )
    return found


def _select(root_real: bytes, found: list[RepoDb], selection: ArchSelection) -> list[RepoDb]:
    repos = _chosen("suites (Arch repos)", selection.repos, [db.repo for db in found])
    arches = _chosen("architectures", selection.architectures, [db.arch for db in found])
    chosen = [db for db in found if db.repo in repos and db.arch in arches]
    if not chosen:
        raise SnapshotError(
            f"{os.fsdecode(root_real)}: no repo database <repo>/os/<arch>/<repo>.db for the selected repos "
            f"({', '.join(sorted(repos))}) and architectures ({', '.join(sorted(arches))}); change the selection"
        )
    return chosen


def _chosen(setting: str, requested: tuple[str, ...], found: list[str]) -> set[str]:
    existing = list(dict.fromkeys(found))
    unknown = [value for value in requested if value not in existing]
    if unknown:
        raise ConfigError(
            f"{setting}: {', '.join(map(repr, unknown))} not in the snapshot; available: {', '.join(sorted(existing))}"
        )
    return set(requested or existing)


# --- the repo database ---------------------------------------------------------------------------


def _read_db(root_real: bytes, db: RepoDb) -> list[ListedPackage]:
    """The packages a db lists, read as a tar stream (one member at a time) from a capped decompressor."""
    limit = bounded.MAX_METADATA_BYTES
    raw = _read_file(root_real, db.rel, limit=limit)
    if len(raw) > limit:
        raise SnapshotError(f"{db.rel}: more than {size_text(limit)}, the limit for repository metadata; {_RESYNC}")
    reader = BoundedReader(_decompressor(raw), db.rel, limit)
    del raw  # the decompressor's now
    listed: dict[str, ListedPackage] = {}
    with closing(reader):
        try:
            try:
                # Stream mode ("r|") only calls read(): no seek, no tell.
                archive = tarfile.open(fileobj=cast("IO[bytes]", reader), mode="r|")
            except tarfile.TarError as exc:
                raise SnapshotError(f"{db.rel}: not a repository database ({exc}); {_RESYNC}") from None
            with archive:
                for member in archive:
                    if member.isfile() and (member.name == "desc" or member.name.endswith("/desc")):
                        _add(listed, _read_desc(archive, member, db), db)
        except tarfile.TarError as exc:
            raise SnapshotError(f"{db.rel}: damaged repository database ({exc}); {_RESYNC}") from None
        except (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError, ValueError) as exc:
            raise SnapshotError(f"{db.rel}: cannot decompress ({exc}); {_RESYNC}") from None
    if not listed:
        log.warning("%s: lists no packages", db.rel)
    return list(listed.values())


def _read_desc(archive: tarfile.TarFile, member: tarfile.TarInfo, db: RepoDb) -> ListedPackage:
    where = f"{db.rel}:{member.name}"
    if member.size > MAX_DESC_BYTES:
        raise SnapshotError(
            f"{escaped(where)}: more than {size_text(MAX_DESC_BYTES)}, not a package description; {_RESYNC}"
        )
    handle = archive.extractfile(member)
    assert handle is not None  # a regular member always has a file object
    return _parse_desc(handle.read(), where, db)


def _add(listed: dict[str, ListedPackage], item: ListedPackage, db: RepoDb) -> None:
    previous = listed.setdefault(item.filename, item)
    if (previous.size, previous.sha256) != (item.size, item.sha256):
        raise SnapshotError(
            f"{shown(item.path)}: listed twice in {db.rel} with different %CSIZE%/%SHA256SUM%; {_RESYNC}"
        )


def _decompressor(raw: bytes) -> Readable:
    """A decompressing reader for a db by its magic bytes (repo-add writes gz, xz, zst or bz2), else the tar itself."""
    source = io.BytesIO(raw)
    if raw.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if raw.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source)
    if raw.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    if raw.startswith(b"BZh"):
        return bz2.BZ2File(source)
    return source


def _parse_desc(raw: bytes, where: str, db: RepoDb) -> ListedPackage:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{escaped(where)}: not valid UTF-8 (byte {exc.start}); {_RESYNC}") from None
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        key = _DESC_KEY.fullmatch(line)
        if key is not None:
            current = fields.setdefault(key.group(1), [])
        elif not line:
            current = None
        elif current is not None:
            current.append(line)
    missing = [f"%{name}%" for name in _REQUIRED if not fields.get(name)]
    if missing:
        raise SnapshotError(f"{escaped(where)}: lacks {', '.join(missing)}; {_RESYNC}")
    filename = fields["FILENAME"][0]
    size_text = fields["CSIZE"][0]
    sha256 = fields["SHA256SUM"][0]
    size = parse_size(size_text)
    if size is None or not _SHA256.fullmatch(sha256):
        raise SnapshotError(f"{escaped(where)}: malformed %CSIZE% or %SHA256SUM%; {_RESYNC}")
    problem = component_problem(filename)
    if "/" in filename or filename in ("", ".", "..") or filename.endswith(".sig"):
        problem = problem or "not a plain package file name"
    if problem is not None:
        raise SnapshotError(
            f"{escaped(filename)}: {problem} in {escaped(where)}; the repository metadata is unsafe, fix or {_RESYNC}"
        )
    return ListedPackage(
        path=check_repo_path(f"{db.directory}/{filename}", where),
        filename=filename,
        size=size,
        sha256=sha256.lower(),
        name=fields["NAME"][0],
        version=fields["VERSION"][0],
        arch=_first(fields, "ARCH"),
        description=_first(fields, "DESC"),
        pgpsig=_pgpsig(fields.get("PGPSIG"), where),
        listed_in=db.rel,
    )


def _first(fields: dict[str, list[str]], key: str) -> str | None:
    values = fields.get(key)
    return values[0] if values else None


def _pgpsig(lines: list[str] | None, where: str) -> bytes | None:
    if not lines:
        return None
    try:
        return base64.b64decode("".join(lines), validate=True)
    except binascii.Error:
        raise SnapshotError(f"{escaped(where)}: malformed %PGPSIG% (not base64); {_RESYNC}") from None


# --- the files on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    real: bytes
    status: os.stat_result


class _Problem(Exception):
    """A listed file that is a dangling symlink, or whose `.sig` is unusable: collected with the others."""


def _locate(dir_real: bytes, name: str, rel: str, root_real: bytes) -> _Found | None:
    """The file `name` in the real directory `dir_real` (repo path `rel`): None if absent.

    A symlink is followed inside the snapshot only (leaving it fails the scan at once); a dangling one
    raises `_Problem`.
    """
    path = dir_real + b"/" + name.encode("utf-8")
    try:
        status = os.lstat(path)
        if not stat.S_ISLNK(status.st_mode):
            return _Found(path, status)
        if not os.path.exists(path):
            raise _Problem(f"{shown(rel)}: missing (dangling symlink)")
        target = resolve_link_inside(path, root_real, rel)
        return _Found(target, os.stat(target))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SnapshotError(f"{shown(rel)}: cannot stat ({exc.strerror}); fix its permissions") from None


def _read_file(root_real: bytes, rel: str, *, limit: int) -> bytes:
    parent, _, name = rel.rpartition("/")
    dir_real = _real_dir(root_real, parent)
    try:
        found = None if dir_real is None else _locate(dir_real, name, rel, root_real)
    except _Problem as exc:
        raise SnapshotError(f"{exc}; {_RESYNC}") from None
    if found is None or not stat.S_ISREG(found.status.st_mode):
        raise SnapshotError(f"{shown(rel)}: missing or not a regular file; {_RESYNC}")
    return _read_real(found.real, rel, limit)


def _read_real(real: bytes, rel: str, limit: int) -> bytes:
    try:
        with open(real, "rb") as handle:
            return read_at_most(handle, limit)
    except OSError as exc:
        raise SnapshotError(f"{shown(rel)}: cannot read ({exc.strerror}); fix its permissions") from None


def _locate_all(root_real: bytes, dbs: list[RepoDb], listed: dict[str, ListedPackage]) -> FileTable:
    dirs = {db.directory: _real_dir(root_real, db.directory) for db in dbs}
    files = FileTableBuilder()
    problems: list[str] = []
    for path in sorted(listed):
        item = listed[path]
        dir_real = dirs[path.rpartition("/")[0]]
        assert dir_real is not None  # it holds the db we read
        try:
            found = _locate(dir_real, item.filename, path, root_real)
            if found is None:
                problems.append(f"{shown(path)}: missing")
            elif not stat.S_ISREG(found.status.st_mode):
                problems.append(f"{shown(path)}: not a regular file")
            elif found.status.st_size != item.size:
                problems.append(f"{shown(path)}: size {found.status.st_size} != %CSIZE% {item.size} ({item.listed_in})")
            else:
                signature = _signature(dir_real, item, root_real)
                files.add(listed_entry(item, as_source(found.real), found.status, signature))
        except _Problem as exc:
            problems.append(str(exc))
    if problems:
        raise SnapshotError(_problems_line(problems))
    return files.build()


def _signature(dir_real: bytes, item: ListedPackage, root_real: bytes) -> SignatureRef | None:
    """The detached `<file>.sig` beside the package, if there is one; it must match %PGPSIG% when both exist."""
    rel = f"{item.path}.sig"
    found = _locate(dir_real, f"{item.filename}.sig", rel, root_real)
    if found is None:
        return None
    if not stat.S_ISREG(found.status.st_mode):
        raise _Problem(f"{shown(rel)}: not a regular file")
    data = _read_real(found.real, rel, MAX_SIGNATURE_BYTES)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise _Problem(f"{shown(rel)}: more than {MAX_SIGNATURE_BYTES >> 10} KiB, not a detached signature")
    if item.pgpsig is not None and data != item.pgpsig:
        raise _Problem(f"{shown(rel)}: differs from %PGPSIG% in {item.listed_in}")
    return SignatureRef(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _problems_line(problems: list[str]) -> str:
    listed = problems[:_MAX_LISTED_PROBLEMS]
    more = len(problems) - len(listed)
    tail = f"; and {more} more" if more else ""
    return (
        f"{'; '.join(listed)}{tail}: {len(problems)} file(s) listed in the repo databases are missing, have the "
        f"wrong size or a bad signature file; {_RESYNC}"
    )


# --- the format adapter -------------------------------------------------------------------------


class ArchFormat:
    """Arch Linux: the packages the `<repo>/os/<arch>/<repo>.db` databases list (`pipeline.snapshot.formats`)."""

    info = FormatInfo(
        name="arch",
        label="Arch Linux",
        suites_label="Repositories",
        client_list="mirrorlist",
        detached_signatures=True,
        update_script=True,
    )

    def detect(self, root_real: Path) -> bool:
        return bool(glob.glob("*/os/*/*.db", root_dir=root_real))

    def check(self, spec: ScanSpec) -> None:
        return None

    def scan(self, root_real: Path, spec: ScanSpec) -> Scanned:
        if spec.components or spec.upstream_keyring:
            raise ConfigError(
                f"{root_real}: an Arch snapshot; components and upstream_keyring apply to Debian snapshots only, "
                "remove them (select Arch repos with suites)"
            )
        return scan_arch(os.fsencode(root_real), ArchSelection(repos=spec.suites, architectures=spec.architectures))

    def recheck(self, root_real: Path, spec: ScanSpec) -> None:
        return None  # the databases' signatures are the clients' to check, not the scan's


ARCH = ArchFormat()
