"""Debian snapshots: the published set is exactly the files the selected `Packages` indexes list.

Layout read: `dists/<suite>/{InRelease,Release,Release.gpg}` and
`dists/<suite>/<component>/binary-<arch>/Packages{,.xz,.gz}`. Each used `Packages` file is checked
against the `SHA256` list of its `Release` (when listed; always required when the Release is verified
with an upstream keyring): a compressed file as on disk first, before anything is decompressed, then
the uncompressed stream (at most `bounded.MAX_METADATA_BYTES`, or the size the Release lists for it),
which is parsed a chunk at a time as it is read (`pipeline.snapshot.stanzas`: python-debian's
reading, ~5× faster with the checks; uncompressed text is never held whole). Sizes are ASCII digits only.
Package files are only stat'ed (one `lstat` each); their SHA-256 is checked later, by the hashing
stage, against `FileEntry.expected_sha256`.

The scan also reports the components and architectures of the `Packages` files it used, and the
snapshot's time: the newest `Date:` of the selected suites' Release files (aware UTC; None when no
Release has a parseable date). The mirror probes compare mirrors' last syncs with it.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import logging
import lzma
import marshal
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import zstandard
from debian import deb822

from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable, FileTableBuilder
from pipeline.scratch import temporary_file
from pipeline.sequences import sorted_spilled
from pipeline.shards import debian_shard
from pipeline.snapshot import bounded
from pipeline.snapshot.bounded import BoundedReader, Readable, parse_size, read_at_most, size_text
from pipeline.snapshot.formats import FormatInfo, KeptListing, ListingCache, Scanned, ScanSpec
from pipeline.snapshot.paths import (
    StatFacts,
    as_source,
    check_repo_path,
    decode_name,
    listed_entry,
    resolve_link_inside,
    shown,
)
from pipeline.snapshot.seen import SeenCursor, SeenFiles
from pipeline.snapshot.stanzas import decode_utf8, read_stanzas

log = logging.getLogger(__name__)

# Preference order: gzip decompresses about three times as fast as xz (a million stanzas: 4 s against 11 s)
PACKAGES_NAMES = ("Packages", "Packages.gz", "Packages.xz")
_PACKAGES_FIELDS = ("Package", "Version", "Architecture", "Description", "Filename", "Size", "SHA256")  # order used
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# A Filename that `check_repo_path` accepts as it is, matched in one step (nearly all of them): relative,
# printable ASCII without a backslash, no empty, "." or ".." component. Anything else goes through it.
_PLAIN_REPO_PATH = re.compile(r"(?:(?!\.\.?/)[ -.0-\[\]-~]+/)*(?!\.\.?\Z)[ -.0-\[\]-~]+")
_ARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_LISTED_PROBLEMS = 20
MAX_LINE_BYTES = 16 << 20  # one Packages line (a long Provides or Description is tens of KB): bounds the line buffer
MAX_STANZA_BYTES = 64 << 20  # one stanza (the largest real ones are tens of KB): bounds the stanza buffer
_GPGV_TIMEOUT_SECONDS = 120
_RESYNC = "re-sync the mirror"


@dataclass(frozen=True)
class DebianSelection:
    """What the operator asked for; empty tuples mean everything found."""

    suites: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    upstream_keyring: Path | None = None
    listing_cache: ListingCache | None = None  # the last parse of each Packages (the state cache)


@dataclass(frozen=True)
class Checksum:
    size: int
    sha256: str


@dataclass(frozen=True)
class ReleaseInfo:
    """The (verified, when a keyring is given) Release of one suite."""

    suite: str
    shown_path: str
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    checksums: Mapping[str, Checksum]  # name relative to dists/<suite>/ -> size and SHA-256
    date: datetime | None = None  # the `Date:` field, aware UTC; None when absent or unparseable


@dataclass(frozen=True)
class PackagesIndex:
    """One `Packages` file on disk, for (suite, component, architecture)."""

    rel: str
    suite: str
    component: str
    architecture: str


class ListedFile(NamedTuple):
    """A package file as a `Packages` stanza describes it (a NamedTuple: a million are built in seconds)."""

    path: str
    size: int
    sha256: str
    name: str | None
    version: str | None
    arch: str | None
    description: str | None
    listed_in: str


_ARCH_FIELD = ListedFile._fields.index("arch")  # a stanza row's architecture


@dataclass(frozen=True)
class _Located:
    real: bytes
    status: os.stat_result
    source: str  # the same path as `real`


def scan_debian(root_real: bytes, selection: DebianSelection, seen: SeenFiles | None = None) -> Scanned:
    """Read the selected Packages indexes and stat every file they list (or take its stat from `seen`).

    `components` and `architectures` are those of the `Packages` files used (`all` only when it is the
    only one: it is not an architecture a client selects); `timestamp` is the newest Release `Date:`.
    """
    tree = _Tree(root_real)
    suite_names = _select_suites(tree, selection.suites)
    releases = [_read_release(tree, suite, selection.upstream_keyring) for suite in suite_names]
    indexes = _select_indexes(tree, releases, selection)
    signed = selection.upstream_keyring is not None
    files = _collect_files(tree, releases, indexes, signed, selection.listing_cache, seen)
    log.info("debian scan: %d suites, %d Packages files, %d package files", len(releases), len(indexes), len(files))
    dates = [release.date for release in releases if release.date is not None]
    return Scanned(
        files=files,
        suites=tuple(suite_names),
        components=tuple(dict.fromkeys(index.component for index in indexes)),
        architectures=_scanned_architectures(indexes),
        timestamp=max(dates) if dates else None,
    )


def _scanned_architectures(indexes: Iterable[PackagesIndex]) -> tuple[str, ...]:
    """The architectures of the Packages files used, sorted; `all` only when there is nothing else."""
    found = sorted({index.architecture for index in indexes})
    real = [arch for arch in found if arch != "all"]
    return tuple(real or found)


def release_date(value: str | None) -> datetime | None:
    """A Release `Date:` (RFC 2822, e.g. `Sat, 10 Jun 2023 08:53:33 UTC`) as aware UTC; None if unusable.

    A date without a usable zone (a zone name other than UTC/GMT/UT/Z) is ambiguous: None.
    """
    text = (value or "").strip()
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        if not text.endswith("-0000"):  # RFC 2822: UTC, local zone unknown
            return None
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- the tree: containment-checked file-system access with one lstat per file -------------------


DIRS_CACHED = 65536


class _Tree:
    """Looks up repo paths under the real root; symlinks are followed only inside the root."""

    def __init__(self, root_real: bytes) -> None:
        self.root = root_real
        self._dirs: dict[str, bytes | None] = {"": root_real}
        self._source_prefix = as_source(root_real) + "/"

    def source_of(self, rel: str) -> str:
        """The source of the file at `rel` when no symlink is on its way (`locate` gives the same)."""
        return self._source_prefix + rel

    def real_dir(self, rel: str) -> bytes | None:
        """Real path of the directory `rel`, or None when it does not exist (cached per directory, at most
        `DIRS_CACHED`: a million-file pool has ~540,000 directories, ~100 MB as a dict; the `Packages` list
        a directory's files together, so recent ones suffice)."""
        if rel in self._dirs:
            return self._dirs[rel]
        if len(self._dirs) >= DIRS_CACHED:
            self._dirs = {"": self.root}
        parent, _, name = rel.rpartition("/")
        parent_real = self.real_dir(parent)
        found = None if parent_real is None else self._lookup(parent_real, name, rel)
        real = found.real if found is not None and stat.S_ISDIR(found.status.st_mode) else None
        self._dirs[rel] = real
        return real

    def locate(self, rel: str) -> _Located | None:
        """The file or directory at `rel` (symlinks resolved), or None when it does not exist."""
        parent, _, name = rel.rpartition("/")
        parent_real = self.real_dir(parent)
        return None if parent_real is None else self._lookup(parent_real, name, rel)

    def is_file(self, rel: str) -> bool:
        found = self.locate(rel)
        return found is not None and stat.S_ISREG(found.status.st_mode)

    def read(self, rel: str) -> bytes:
        """The whole (metadata) file `rel`; refused unread beyond `bounded.MAX_METADATA_BYTES`."""
        with self.open_metadata(rel) as handle:
            try:
                data = read_at_most(handle, bounded.MAX_METADATA_BYTES)
            except OSError as exc:
                raise _cannot_read(rel, exc) from None
        if len(data) > bounded.MAX_METADATA_BYTES:
            raise _too_large(rel)
        return data

    def open_metadata(self, rel: str) -> BinaryIO:
        """The (metadata) file `rel`, open; refused unread when larger than `bounded.MAX_METADATA_BYTES`."""
        try:
            handle = open(self.real_file(rel), "rb")
        except OSError as exc:
            raise _cannot_read(rel, exc) from None
        if os.fstat(handle.fileno()).st_size > bounded.MAX_METADATA_BYTES:
            handle.close()
            raise _too_large(rel)
        return handle

    def real_file(self, rel: str) -> bytes:
        found = self.locate(rel)
        if found is None or not stat.S_ISREG(found.status.st_mode):
            raise SnapshotError(f"{shown(rel)}: missing or not a regular file; {_RESYNC}")
        return found.real

    def _lookup(self, parent_real: bytes, name: str, rel: str) -> _Located | None:
        encoded = name.encode("utf-8")
        path = parent_real + b"/" + encoded
        try:
            status = os.lstat(path)
            if stat.S_ISLNK(status.st_mode):
                target = resolve_link_inside(path, self.root, rel)
                return _Located(target, os.stat(target), as_source(target))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise SnapshotError(f"{shown(rel)}: cannot stat ({exc.strerror}); fix its permissions") from None
        return _Located(path, status, as_source(path))


def _cannot_read(rel: str, exc: OSError) -> SnapshotError:
    return SnapshotError(f"{shown(rel)}: cannot read ({exc.strerror}); fix its permissions")


def _too_large(rel: str) -> SnapshotError:
    limit = bounded.MAX_METADATA_BYTES
    return SnapshotError(f"{shown(rel)}: more than {size_text(limit)}, the limit for repository metadata; {_RESYNC}")


# --- suites and Release files --------------------------------------------------------------------


def _select_suites(tree: _Tree, requested: tuple[str, ...]) -> list[str]:
    found = _discover_suites(tree)
    if not found:
        raise SnapshotError(
            f"{os.fsdecode(tree.root)}/dists: no suite with a Release or InRelease file; "
            "pass the right --snapshot, or --format flat"
        )
    if not requested:
        return [name for name, is_alias in found.items() if not is_alias]
    unknown = [suite for suite in requested if suite not in found]
    if unknown:
        raise ConfigError(
            f"suites: {', '.join(map(repr, unknown))} not found under dists/; available: {', '.join(found)}"
        )
    return list(dict.fromkeys(requested))


def _discover_suites(tree: _Tree) -> dict[str, bool]:
    """Suite name -> whether it is only a symlink alias of another suite found (stable -> bookworm)."""
    dists_real = tree.real_dir("dists")
    if dists_real is None:
        raise SnapshotError(
            f"{os.fsdecode(tree.root)}/dists: not found; this is not a Debian snapshot, "
            "pass the right --snapshot or --format flat"
        )
    with os.scandir(dists_real) as entries:
        names = sorted(decode_name(entry.name, "dists") for entry in entries if not entry.name.startswith(b"."))
    suites: dict[str, tuple[bytes, bool]] = {}
    for name in names:
        real = tree.real_dir(f"dists/{name}")
        if real is None or not any(tree.is_file(f"dists/{name}/{f}") for f in ("InRelease", "Release")):
            continue
        suites[name] = (real, os.path.islink(dists_real + b"/" + name.encode("utf-8")))
    plain_dirs = {real for real, is_link in suites.values() if not is_link}
    return {name: is_link and real in plain_dirs for name, (real, is_link) in suites.items()}


def _read_release(tree: _Tree, suite: str, keyring: Path | None) -> ReleaseInfo:
    base = f"dists/{suite}"
    if keyring is not None:
        shown_path, data = _read_verified_release(tree, base, keyring)
    else:
        shown_path = f"{base}/Release" if tree.is_file(f"{base}/Release") else f"{base}/InRelease"
        data = tree.read(shown_path)
    release = deb822.Release(decode_utf8(data, shown_path))  # strips an unverified InRelease's armor
    date_text = release.get("Date")
    date = release_date(str(date_text) if date_text is not None else None)
    if date is None:
        log.info("%s: no usable Date field (%r); mirror lag is unknown for this suite", shown_path, date_text)
    return ReleaseInfo(
        suite=suite,
        shown_path=shown_path,
        components=tuple(str(release.get("Components", "")).split()),
        architectures=tuple(str(release.get("Architectures", "")).split()),
        checksums=_release_checksums(release, shown_path),
        date=date,
    )


def _release_checksums(release: deb822.Release, shown_path: str) -> dict[str, Checksum]:
    checksums: dict[str, Checksum] = {}
    for line in release.get("SHA256", []):
        size = parse_size(str(line.get("size", "")))
        if size is None or "sha256" not in line or "name" not in line:
            raise SnapshotError(f"{shown_path}: malformed SHA256 line; {_RESYNC}")
        checksum = Checksum(size=size, sha256=str(line["sha256"]).lower())
        checksums[str(line["name"])] = checksum
    return checksums


def _read_verified_release(tree: _Tree, base: str, keyring: Path) -> tuple[str, bytes]:
    """The signed Release text, verified with gpgv and the upstream keyring: InRelease first."""
    if tree.is_file(f"{base}/InRelease"):
        in_release = f"{base}/InRelease"
        return in_release, _gpgv_clearsigned(tree.real_file(in_release), keyring, in_release)
    if tree.is_file(f"{base}/Release") and tree.is_file(f"{base}/Release.gpg"):
        data = tree.read(f"{base}/Release")
        signature = f"{base}/Release.gpg"
        _gpgv_detached(tree.real_file(signature), data, keyring, signature)
        return f"{base}/Release", data
    raise SnapshotError(
        f"{base}/InRelease: missing, and no Release.gpg either, so the suite cannot be verified with "
        f"upstream_keyring; {_RESYNC} or unset upstream_keyring"
    )


# --- gpgv ---------------------------------------------------------------------------------------


def _gpgv_clearsigned(in_release: bytes, keyring: Path, shown_path: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mirrorseed-gpgv-") as scratch:
        output = Path(scratch) / "Release"
        _run_gpgv(["--output", str(output), os.fsdecode(in_release)], None, keyring, shown_path)
        return output.read_bytes()


def _gpgv_detached(signature: bytes, data: bytes, keyring: Path, shown_path: str) -> None:
    _run_gpgv([os.fsdecode(signature), "-"], data, keyring, shown_path)


def _run_gpgv(arguments: list[str], stdin: bytes | None, keyring: Path, shown_path: str) -> None:
    command = ["gpgv", "--status-fd", "1", "--keyring", str(keyring.absolute()), *arguments]
    try:
        completed = subprocess.run(
            command, input=stdin, capture_output=True, timeout=_GPGV_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError:
        raise ConfigError("gpgv: not installed; install gpgv to verify with upstream_keyring") from None
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{shown_path}: gpgv timed out; run again") from None
    problem = signature_problem(completed.returncode, completed.stdout.decode("utf-8", "replace"))
    if problem is not None:
        raise SnapshotError(
            f"{shown_path}: signature not accepted ({problem}) with keyring {keyring}; {_RESYNC}, or check "
            "upstream_keyring (a binary keyring: gpg --dearmor an .asc key)"
        )


def signature_problem(returncode: int, status_text: str) -> str | None:
    """Why gpgv's `--status-fd` output does not show a good signature, or None when it does.

    Like apt: at least one GOODSIG with its VALIDSIG, no bad, expired or revoked signature; other
    signatures by keys absent from the keyring (ERRSIG + NO_PUBKEY, gpgv exit 2) are tolerated.
    """
    keywords = [line.split()[1] for line in status_text.splitlines() if line.startswith("[GNUPG:] ")]
    rejected = [word for word in keywords if word in ("BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG")]
    if rejected:
        return ", ".join(rejected)
    if "GOODSIG" not in keywords or "VALIDSIG" not in keywords:
        missing_key = "NO_PUBKEY" in keywords
        return "no signature by a key in the keyring" if missing_key else "no valid signature"
    unknown_key_only = keywords.count("ERRSIG") == keywords.count("NO_PUBKEY")
    if returncode != 0 and not (returncode == 2 and unknown_key_only):
        return f"gpgv exit status {returncode}"
    return None


# --- which Packages files -----------------------------------------------------------------------


def _select_indexes(tree: _Tree, releases: list[ReleaseInfo], selection: DebianSelection) -> list[PackagesIndex]:
    available = [index for release in releases for index in _available_indexes(tree, release)]
    components = _chosen("components", selection.components, [i.component for i in available], releases)
    architectures = _chosen("architectures", selection.architectures, [i.architecture for i in available], releases)
    if selection.architectures and "all" in {i.architecture for i in available}:
        architectures.add("all")
    chosen = [i for i in available if i.component in components and i.architecture in architectures]
    if not chosen:
        raise SnapshotError(
            f"{os.fsdecode(tree.root)}/dists: no Packages file for the selected suites, components and "
            f"architectures; {_RESYNC} or change the selection"
        )
    return chosen


def _chosen(setting: str, requested: tuple[str, ...], found: list[str], releases: list[ReleaseInfo]) -> set[str]:
    existing = list(dict.fromkeys(found))
    unknown = [value for value in requested if value not in existing]
    if unknown:
        suites = ", ".join(release.suite for release in releases)
        raise ConfigError(
            f"{setting}: {', '.join(map(repr, unknown))} not in the snapshot (suites {suites}); "
            f"available: {', '.join(sorted(existing)) or 'none'}"
        )
    return set(requested or existing)


def _available_indexes(tree: _Tree, release: ReleaseInfo) -> list[PackagesIndex]:
    """The (component, architecture) pairs of one suite that have a Packages file on disk.

    A pair with no file is skipped (mirrors often carry a subset of the components and architectures
    upstream has), unless its Release lists one while the component directory and that architecture
    are on disk: that is a half-synced mirror.
    """
    base = f"dists/{release.suite}"
    components = release.components or _disk_components(tree, base)
    architectures = release.architectures or _disk_architectures(tree, base, components)
    found: list[PackagesIndex] = []
    listed_but_missing: list[tuple[str, str]] = []
    for component in components:
        check_repo_path(component, release.shown_path)
        for arch in architectures:
            if not _ARCH.fullmatch(arch):
                raise SnapshotError(f"{release.shown_path}: bad architecture {arch!r}; {_RESYNC}")
            names = [f"{component}/binary-{arch}/{name}" for name in PACKAGES_NAMES]
            on_disk = next((name for name in names if tree.is_file(f"{base}/{name}")), None)
            if on_disk is not None:
                found.append(PackagesIndex(f"{base}/{on_disk}", release.suite, component, arch))
            elif any(name in release.checksums for name in names):
                listed_but_missing.append((component, arch))
    _refuse_half_synced(tree, release, found, listed_but_missing)
    return found


def _refuse_half_synced(
    tree: _Tree, release: ReleaseInfo, found: list[PackagesIndex], listed_but_missing: list[tuple[str, str]]
) -> None:
    architectures_on_disk = {index.architecture for index in found}
    base = f"dists/{release.suite}"
    for component, arch in listed_but_missing:
        if arch in architectures_on_disk and tree.real_dir(f"{base}/{component}") is not None:
            raise SnapshotError(
                f"{shown(base)}/{shown(component)}/binary-{arch}/Packages: listed in {release.shown_path} "
                f"but missing (no Packages, Packages.xz or Packages.gz); {_RESYNC}"
            )


def _disk_components(tree: _Tree, base: str) -> tuple[str, ...]:
    return tuple(
        name
        for name in _subdirectories(tree, base)
        if any(n.startswith("binary-") for n in _subdirectories(tree, f"{base}/{name}"))
    )


def _disk_architectures(tree: _Tree, base: str, components: Iterable[str]) -> tuple[str, ...]:
    archs = {
        name.removeprefix("binary-")
        for component in components
        for name in _subdirectories(tree, f"{base}/{component}")
        if name.startswith("binary-")
    }
    return tuple(sorted(archs))


def _subdirectories(tree: _Tree, rel: str) -> list[str]:
    real = tree.real_dir(rel)
    if real is None:
        return []
    with os.scandir(real) as entries:
        names = [decode_name(e.name, rel) for e in entries if not e.name.startswith(b".")]
    return sorted(name for name in names if tree.real_dir(f"{rel}/{name}") is not None)


# --- Packages contents --------------------------------------------------------------------------


def _collect_files(
    tree: _Tree,
    releases: list[ReleaseInfo],
    indexes: list[PackagesIndex],
    signed: bool,
    cache: ListingCache | None = None,
    seen: SeenFiles | None = None,
) -> FileTable:
    """Every listed file as found on disk, with the index shards listing it (`pipeline.shards.debian_shard`):
    as `seen` saw it when it is there (a file of the tree the run's marked walk just stat'ed), else looked up.

    Every stanza of every index, as a row, is sorted by path through the scratch file
    (`pipeline.sequences.sorted_spilled`), so that the listings of one path (an `all` package in each
    architecture's index, a suite sharing the pool) come together and the files are looked up in path
    order: nothing is held per file but its row in the table. The listings of a path must agree on Size and
    SHA256; each adds its shard.
    """
    release_of = {release.suite: release for release in releases}
    files = FileTableBuilder()
    problems: list[str] = []
    # one tuple object per distinct combination of shards (a handful), shared by every file that has it
    combined: dict[tuple[str, ...], tuple[str, ...]] = {}
    found = seen.cursor() if seen is not None else None
    with _gc_paused():
        for _path, rows in itertools.groupby(
            sorted_spilled(_listings(tree, indexes, release_of, signed, cache)), key=itemgetter(0)
        ):
            group = list(rows)
            item = ListedFile._make(group[0][:-1])
            shards = {row[-1] for row in group}
            for other in group:
                if other[1:3] != (item.size, item.sha256):
                    raise SnapshotError(
                        f"{shown(item.path)}: listed with different Size/SHA256 in {item.listed_in} and "
                        f"{other[-2]}; {_RESYNC}"
                    )
            key: tuple[str, ...] = tuple(sorted(shards))
            _place(tree, item, combined.setdefault(key, key), files, problems, found)
    if cache is not None:
        cache.keep_listings(index.rel for index in indexes)
    if problems:
        raise SnapshotError(_problems_line(problems))
    return files.build()


def _listings(
    tree: _Tree,
    indexes: list[PackagesIndex],
    release_of: Mapping[str, ReleaseInfo],
    signed: bool,
    cache: ListingCache | None,
) -> Iterator[tuple[Any, ...]]:
    """Each stanza of the `indexes` in turn, as a plain tuple: its ListedFile's fields, then its shard.

    The `Packages` files the cache does not have are parsed by worker processes (`_parse_elsewhere`) while
    this process reads the ones before them; the stanzas come in the same order either way."""
    with _parse_elsewhere(tree, indexes, release_of, signed, cache) as (parsed, read):
        for index in indexes:
            # the index's two shard names, made once (a million stanzas ask)
            own = debian_shard(index.suite, index.component, index.architecture, index.architecture)
            common = debian_shard(index.suite, index.component, index.architecture, "all")
            release = release_of[index.suite]
            items = _worker_parse(parsed.pop(index.rel, None), index, release, cache)
            if items is None:
                items = _read_packages(tree, index, release, signed, cache, read.get(index.rel))
            for item in items:
                yield (*item, common if item[_ARCH_FIELD] == "all" else own)


# `Packages` files (compressed, as on disk) to parse before worker processes are worth starting (~0.3 s): a
# million-file archive's are tens of MB each; a test's, a few KB.
PARSE_ELSEWHERE_MIN_BYTES = 4 << 20
PARSE_WORKERS = 2


@contextmanager
def _parse_elsewhere(
    tree: _Tree,
    indexes: list[PackagesIndex],
    release_of: Mapping[str, ReleaseInfo],
    signed: bool,
    cache: ListingCache | None,
) -> Iterator[tuple[dict[str, Future[tuple[str, str, int]]], Mapping[str, Checksum]]]:
    """The parses of the `indexes` the cache does not have, started in worker processes (`_parse_to_file`), by
    `rel`; none when they are fewer than two, smaller than PARSE_ELSEWHERE_MIN_BYTES together, or this
    machine has one core. The parses of a million-file archive's ~12 `Packages` take ~60 % of its scan, and the
    hashing workers are not running yet. The reader takes each parse out of the dict; the temporary files of
    those left (the scan stopped first) are deleted. Beside them, by `rel`, the size and SHA-256 of each file
    the cache was asked about, so that `_read_packages` does not read and hash it again (~100 MB at a million)."""
    sizes = {index.rel: _size_on_disk(tree, index.rel) for index in indexes}
    read: dict[str, Checksum] = {}
    misses: list[PackagesIndex] = []
    if (os.cpu_count() or 1) >= 2 and sum(sizes.values()) >= PARSE_ELSEWHERE_MIN_BYTES:  # else nothing is hashed
        for index in indexes:
            if cache is None:
                misses.append(index)
                continue
            try:
                on_disk = _file_checksum(tree, index.rel)  # streamed: never held whole
            except SnapshotError:
                continue  # not parsed elsewhere: `_read_packages` reports it, in its turn
            read[index.rel] = on_disk
            if not _cache_has(cache, index, on_disk):
                misses.append(index)
    if len(misses) < 2 or sum(sizes[index.rel] for index in misses) < PARSE_ELSEWHERE_MIN_BYTES:
        yield {}, read
        return
    workers = min(PARSE_WORKERS, len(misses))
    from pipeline.hashing import local_pool  # the hashing stage's pool of local processes

    with local_pool(workers) as pool:
        futures = {
            index.rel: pool.submit(_parse_to_file, tree.root, index, release_of[index.suite], signed)
            for index in misses
        }
        try:
            yield futures, read
        finally:
            for future in futures.values():
                future.cancel()
            for future in futures.values():
                if not future.cancelled() and future.exception() is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(future.result()[0])


def _cache_has(cache: ListingCache, index: PackagesIndex, on_disk: Checksum) -> bool:
    """Whether `cache` holds a parse of `index`'s bytes `on_disk` (by `_read_packages`' key)."""
    source = cache.listing(index.rel, on_disk.sha256)
    if source is None:
        return False
    source.close()
    return True


def _size_on_disk(tree: _Tree, rel: str) -> int:
    found = tree.locate(rel)
    return found.status.st_size if found is not None else 0


def _parse_to_file(root_real: bytes, index: PackagesIndex, release: ReleaseInfo, signed: bool) -> tuple[str, str, int]:
    """In a worker process: `index` parsed by `_read_packages`, as it would be in the scan, into a new temporary
    file as the cache keeps a parse; (its name, the SHA-256 of the bytes parsed, its size). The scan reads it."""
    kept = _FileKept()
    with _gc_paused():
        for _item in _read_packages(_Tree(root_real), index, release, signed, kept):
            pass
    assert kept.kept is not None  # a complete parse is remembered
    return kept.kept


class _FileKept:
    """A ListingCache that holds nothing and writes what it is given to keep to a new temporary file."""

    def __init__(self) -> None:
        self.kept: tuple[str, str, int] | None = None

    def listing(self, name: str, digest: str) -> KeptListing | None:
        return None

    def remember_listing(self, name: str, digest: str, chunks: Iterable[bytes], size: int) -> None:
        fd, path = tempfile.mkstemp(prefix="mirrorseed-parse-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        except BaseException:
            os.unlink(path)
            raise
        self.kept = (path, digest, size)

    def keep_listings(self, names: Iterable[str]) -> None:
        return None


class _OneKept:
    """A ListingCache holding one parse (a worker's file), for `_cached` to read."""

    def __init__(self, rel: str, digest: str, source: BinaryIO) -> None:
        self._rel, self._digest, self._source = rel, digest, source

    def listing(self, name: str, digest: str) -> KeptListing | None:
        return cast(KeptListing, self._source) if (name, digest) == (self._rel, self._digest) else None

    def remember_listing(self, name: str, digest: str, chunks: Iterable[bytes], size: int) -> None:
        raise NotImplementedError

    def keep_listings(self, names: Iterable[str]) -> None:
        return None


def _worker_parse(
    found: Future[tuple[str, str, int]] | None, index: PackagesIndex, release: ReleaseInfo, cache: ListingCache | None
) -> Iterator[tuple[Any, ...]] | None:
    """The stanzas a worker's parse of `index` holds (`_parse_to_file`), as plain tuples in ListedFile's field
    order, kept in `cache` first; None when no worker parsed it, or its worker died, or its file cannot be read
    back (then it is parsed here)."""
    if found is None:
        return None
    try:
        path, digest, size = found.result()
    except BrokenProcessPool as exc:
        log.warning("%s: the worker parsing it stopped (%s); parsing it here", index.rel, exc)
        return None
    try:
        source = open(path, "rb")  # noqa: SIM115 (closed by the rows' reader or below)
    except OSError:
        return None
    os.unlink(path)
    if os.fstat(source.fileno()).st_size != size:
        source.close()
        log.warning("%s: the parse a worker process wrote is not of the size it told; parsing it here", index.rel)
        return None
    try:
        if cache is not None:
            cache.remember_listing(index.rel, digest, iter(lambda: source.read(bounded.CHUNK_BYTES), b""), size)
            source.seek(0)
        in_release, uncompressed_name = _release_names(index)
        shown_path = index.rel if in_release == uncompressed_name else f"{index.rel} (decompressed)"
        kept = _OneKept(index.rel, digest, source)
        parse = _kept_parse(kept, index.rel, digest, uncompressed_name, shown_path, release, whole=False)
    except BaseException:
        source.close()
        raise
    if parse is None:
        source.close()
        return None
    return _worker_rows(*parse, index.rel)


def _place(
    tree: _Tree,
    item: ListedFile,
    shards: tuple[str, ...],
    files: FileTableBuilder,
    problems: list[str],
    seen: SeenCursor | None = None,
) -> None:
    """Add the file `item` lists to `files` as found on disk (as `seen` saw it, a regular file, when it is
    there); a problem noted instead when it is missing, not a regular file or not of the listed size."""
    path = item.path
    seen_stat = seen.stat(path) if seen is not None else None
    status: StatFacts
    if seen_stat is not None:
        source, status = tree.source_of(path), seen_stat
    else:
        found = tree.locate(path)
        if found is None:
            problems.append(f"{shown(path)}: missing")
            return
        if not stat.S_ISREG(found.status.st_mode):
            problems.append(f"{shown(path)}: not a regular file")
            return
        source, status = found.source, found.status
    if status.st_size != item.size:
        problems.append(f"{shown(path)}: size {status.st_size} != Packages Size {item.size} ({item.listed_in})")
    else:
        files.add(listed_entry(item, source, status, shards=shards))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while the stanzas become objects (none is in a cycle).

    Each container allocated counts towards the next collection, and each collection walks the young
    objects, which here are nearly all kept: with it on, a quarter of the time of 1,000,000 stanzas
    (measured). The same as Mercurial's `util.nogc`. Turned back on at the end only if it was on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_packages(
    tree: _Tree,
    index: PackagesIndex,
    release: ReleaseInfo,
    signed: bool,
    cache: ListingCache | None = None,
    on_disk: Checksum | None = None,
) -> Iterator[tuple[Any, ...]]:
    """The stanzas of one Packages file, as they are read (tuples in ListedFile's field order: ListedFiles when
    parsed, plain tuples when read back from the cache); nothing is decompressed before the file on disk
    is checked.

    A compressed file as on disk is compared (size, SHA-256) with its Release line first, so a
    `Packages.xz` the (signed) Release does not vouch for is refused unread by the decompressor. It is
    then decompressed as a stream, at most `bounded.MAX_METADATA_BYTES` (or the size the Release lists for
    the uncompressed `Packages`, when smaller), and parsed as it is read. An uncompressed `Packages` is
    parsed as it is read from disk (never held whole). Either way the uncompressed bytes are compared
    with the Release's `Packages` line at the end (before a parse error in them is reported: a mismatch
    says more); a caller that meets that error has seen the stanzas before it.

    With a `cache`, a file whose bytes (as on disk) have the SHA-256 of its last parse is not parsed again:
    the parse and the uncompressed size and SHA-256 are read back, and the latter compared with the
    Release first, as a parse would (~15× faster than decompressing and parsing). Neither way holds the
    file's stanzas at once: at a million files one Packages file lists ~300,000.

    `on_disk`: the file's size and SHA-256, when this scan has just read it (to look it up in the cache).
    """
    in_release, uncompressed_name = _release_names(index)
    plain = release.checksums.get(uncompressed_name)
    if in_release == uncompressed_name:
        if signed and plain is None:
            raise _not_listed(index, release)
        digest = (on_disk or _file_checksum(tree, index.rel)).sha256 if cache is not None else ""
        hit = _cached(cache, index.rel, digest, uncompressed_name, index.rel, release)
        if hit is not None:
            yield from hit
            return
        reader = BoundedReader(tree.open_metadata(index.rel), index.rel, bounded.MAX_METADATA_BYTES)
        yield from _remember(cache, index.rel, digest, _parse_checked(reader, index.rel, uncompressed_name, release))
        return
    on_disk = on_disk or _file_checksum(tree, index.rel)
    checked = _check_against_release(in_release, on_disk, index.rel, release)
    if signed and not checked and plain is None:
        raise _not_listed(index, release)
    hit = _cached(cache, index.rel, on_disk.sha256, uncompressed_name, f"{index.rel} (decompressed)", release)
    if hit is not None:
        yield from hit
        return
    source, copied = _private_copy(tree, index.rel)
    try:
        if copied != on_disk:
            raise SnapshotError(f"{index.rel}: changed while it was read; {_RESYNC}")
        limit, why = bounded.MAX_METADATA_BYTES, ""
        if plain is not None and plain.size < limit:
            limit, why = plain.size, f"the {plain.size} bytes {release.shown_path} lists for {uncompressed_name}"
        reader = BoundedReader(_decompressor(source, index.rel), index.rel, limit, why)
        parsed = _parse_checked(reader, index.rel, uncompressed_name, release, compressed=True)
        yield from _remember(cache, index.rel, on_disk.sha256, parsed)
    finally:
        source.close()


def _private_copy(tree: _Tree, rel: str) -> tuple[BinaryIO, Checksum]:
    """The metadata file `rel` copied, a chunk at a time, to an unlinked temporary file of this process, rewound,
    and the size and SHA-256 of what was copied: what is decompressed is exactly what was checked, and the
    compressed bytes (tens of MB a `Packages` at a million files, one in each parsing process) are not held."""
    copy = temporary_file(f"a copy of {rel}")
    try:
        checksum = _file_checksum(tree, rel, copy)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy, checksum


def _release_names(index: PackagesIndex) -> tuple[str, str]:
    """The names the Release lists `index` and its uncompressed `Packages` by (equal when it is not compressed)."""
    in_release = index.rel.removeprefix(f"dists/{index.suite}/")
    return in_release, in_release.rsplit("/", 1)[0] + "/Packages"


# The cached parse of one Packages: the length of the header (4 bytes, little-endian), the marshalled header
# (codec, uncompressed size and SHA-256, number of batches and their marshalled bytes), then one zstd frame of
# the rows, `_LISTING_BATCH` at a time, each batch marshalled after its length (4 bytes, little-endian; plain
# tuples: a million load in about a second). Neither writing nor reading it holds every row, nor the whole
# parse (it is written to a temporary file, then to the cache a chunk at a time). The codec names the Python
# that wrote it (marshal's format may change between versions).
_LISTING_CODEC = f"debian-listing/4 py{sys.version_info[0]}.{sys.version_info[1]}"
_BATCH_LENGTH = struct.Struct("<I")  # read then `marshal.loads`: `marshal.load` from the zstd reader took ~6 µs a row
_LISTING_BATCH = 4096
_HEADER_LENGTH = struct.Struct("<I")
_MAX_HEADER_BYTES = 4096


def _file_checksum(tree: _Tree, rel: str, copy: BinaryIO | None = None) -> Checksum:
    """The size and SHA-256 of the (metadata) file `rel`, read through the `BoundedReader` a parse reads it with;
    with `copy`, each chunk is written there too."""
    with closing(BoundedReader(tree.open_metadata(rel), rel, bounded.MAX_METADATA_BYTES)) as reader:
        try:
            while chunk := reader.read(bounded.CHUNK_BYTES):
                if copy is not None:
                    copy.write(chunk)
        except OSError as exc:
            raise _cannot_read(rel, exc) from None
        return _read_so_far(reader)


def _cached(
    cache: ListingCache | None, rel: str, digest: str, uncompressed_name: str, shown_path: str, release: ReleaseInfo
) -> Iterator[tuple[Any, ...]] | None:
    """The last parse of `rel` when its bytes had SHA-256 `digest` (None: parse it), as plain tuples in
    ListedFile's field order, its uncompressed size and SHA-256 compared with the Release first. An entry that
    cannot be read is a miss: its header and its zstd frame (with its checksum) are read through before a row
    is given."""
    found = _kept_parse(cache, rel, digest, uncompressed_name, shown_path, release, whole=True)
    return _kept_rows(*found) if found is not None else None


def _kept_parse(
    cache: ListingCache | None,
    rel: str,
    digest: str,
    uncompressed_name: str,
    shown_path: str,
    release: ReleaseInfo,
    *,
    whole: bool,
) -> tuple[KeptListing, int] | None:
    """`_cached`'s parse, open where its rows start, and the number of batches they come in; with `whole`, its
    zstd frame is read through first (its length and checksum checked: a cache entry may be damaged)."""
    source = cache.listing(rel, digest) if cache is not None else None
    if source is None:
        return None
    try:
        (header_length,) = _HEADER_LENGTH.unpack(source.read(_HEADER_LENGTH.size))
        if header_length > _MAX_HEADER_BYTES:
            raise ValueError(f"a header of {header_length} bytes")
        codec, size, sha256, batches, length = marshal.loads(source.read(header_length))
        if codec != _LISTING_CODEC:
            source.close()
            return None
        start, found = source.tell(), 0
        if whole:
            with zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, source), closefd=False) as frame:
                while chunk := frame.read(bounded.CHUNK_BYTES):
                    found += len(chunk)
            if found != length:
                raise ValueError(f"{found} bytes of rows, not {length}")
        _check_against_release(uncompressed_name, Checksum(size=size, sha256=sha256), shown_path, release)
    except (ValueError, EOFError, TypeError, struct.error, zstandard.ZstdError):
        source.close()
        log.info("%s: the cached parse is unreadable; parsing the file again", rel)
        return None
    except BaseException:
        source.close()
        raise
    source.seek(start)
    return source, int(batches)


def _kept_rows(source: KeptListing, batches: int) -> Iterator[tuple[Any, ...]]:
    """The rows of a kept parse (`_kept_parse`), as plain tuples in ListedFile's field order."""
    with closing(source), zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, source), closefd=False) as frame:
        for _ in range(batches):
            yield from marshal.loads(_read_exactly(frame, _BATCH_LENGTH.unpack(_read_exactly(frame, 4))[0]))


def _worker_rows(source: KeptListing, batches: int, rel: str) -> Iterator[tuple[Any, ...]]:
    """`_kept_rows` of a file a worker process of this run wrote moments ago (not read through first, as a cache
    entry is); one line if it cannot be read after all."""
    try:
        yield from _kept_rows(source, batches)
    except (ValueError, EOFError, TypeError, zstandard.ZstdError) as exc:
        raise SnapshotError(f"{rel}: the parse a worker process wrote is unreadable ({exc}); run again") from None


def _remember(
    cache: ListingCache | None, rel: str, digest: str, parsed: Generator[ListedFile, None, Checksum]
) -> Iterator[ListedFile]:
    """The stanzas `parsed` yields; with a cache, kept there (`_cached`) once the parse is complete."""
    if cache is None:
        yield from parsed
        return
    with temporary_file(f"a parse of {rel}") as body:
        header = yield from _written(parsed, body)
        cache.remember_listing(rel, digest, *_kept(header, body))


def _written(parsed: Generator[ListedFile, None, Checksum], body: BinaryIO) -> Generator[ListedFile, None, bytes]:
    """The stanzas `parsed` yields, their rows written to `body` as one zstd frame; returns the header."""
    batches = length = 0
    with zstandard.ZstdCompressor(level=1, write_checksum=True).stream_writer(body, closefd=False) as frame:
        batch: list[tuple[object, ...]] = []
        while True:
            try:
                item = next(parsed)
            except StopIteration as done:
                read: Checksum = done.value
                break
            batch.append(tuple(item))
            if len(batch) == _LISTING_BATCH:
                length += _write_batch(frame, batch)
                batch, batches = [], batches + 1
            yield item
        if batch:
            length += _write_batch(frame, batch)
            batches += 1
    return marshal.dumps((_LISTING_CODEC, read.size, read.sha256, batches, length))


def _kept(header: bytes, body: BinaryIO) -> tuple[Iterator[bytes], int]:
    """The chunks of a cached parse and its size: the header's length, the header, then `body` from its start."""
    size = body.tell()
    body.seek(0)
    chunks = itertools.chain(
        (_HEADER_LENGTH.pack(len(header)) + header,), iter(lambda: body.read(bounded.CHUNK_BYTES), b"")
    )
    return chunks, _HEADER_LENGTH.size + len(header) + size


def _write_batch(frame: BinaryIO, batch: list[tuple[object, ...]]) -> int:
    data = marshal.dumps(batch)
    frame.write(_BATCH_LENGTH.pack(len(data)))
    frame.write(data)
    return _BATCH_LENGTH.size + len(data)


def _read_exactly(frame: BinaryIO, size: int) -> bytes:
    """`size` bytes of `frame`; EOFError when it ends first."""
    data = frame.read(size)
    while len(data) < size:
        more = frame.read(size - len(data))
        if not more:
            raise EOFError(f"{len(data)} of {size} bytes")
        data += more
    return data


def _not_listed(index: PackagesIndex, release: ReleaseInfo) -> SnapshotError:
    return SnapshotError(f"{index.rel}: not listed in the signed {release.shown_path}; {_RESYNC}")


def _parse_checked(
    reader: BoundedReader, rel: str, uncompressed_name: str, release: ReleaseInfo, *, compressed: bool = False
) -> Generator[ListedFile, None, Checksum]:
    """The stanzas `reader` yields, then (the generator's value) what it read (size, SHA-256), which is
    compared with the Release line of `uncompressed_name`.

    On a parse error the rest is read and compared first: a damaged file is reported as such.
    """
    shown_path = f"{rel} (decompressed)" if compressed else rel
    with closing(reader):
        try:
            try:
                yield from _parse_packages(reader, rel)
            except SnapshotError:
                if uncompressed_name in release.checksums:
                    while reader.read(bounded.CHUNK_BYTES):
                        pass
                    _check_against_release(uncompressed_name, _read_so_far(reader), shown_path, release)
                raise
        except (lzma.LZMAError, OSError, EOFError, zlib.error) as exc:
            if not compressed and isinstance(exc, OSError):
                raise _cannot_read(rel, exc) from None
            raise SnapshotError(f"{rel}: cannot decompress ({exc}); {_RESYNC}") from None
    read = _read_so_far(reader)
    _check_against_release(uncompressed_name, read, shown_path, release)
    return read


def _read_so_far(reader: BoundedReader) -> Checksum:
    return Checksum(size=reader.size, sha256=reader.sha256())


def _check_against_release(name: str, actual: Checksum, shown_path: str, release: ReleaseInfo) -> bool:
    """Compare `actual` with the Release's SHA256 line for `name`; False when the Release has none."""
    expected = release.checksums.get(name)
    if expected is None:
        return False
    if actual != expected:
        raise SnapshotError(
            f"{shown_path}: size/SHA256 ({actual.size}, {actual.sha256[:16]}…) differ from "
            f"{release.shown_path} ({expected.size}, {expected.sha256[:16]}…); {_RESYNC}"
        )
    return True


def _decompressor(source: BinaryIO, rel: str) -> Readable:
    """A reader of `rel`'s uncompressed bytes (its compressed bytes `source`), by its name (as apt picks); the
    caller closes `source`."""
    if rel.endswith(".xz"):
        return lzma.LZMAFile(source)
    if rel.endswith(".gz"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    return source


def _parse_packages(reader: Readable, rel: str) -> Iterator[ListedFile]:
    """The files a Packages stream lists, read a chunk at a time (`pipeline.snapshot.stanzas`)."""
    stanzas = read_stanzas(
        reader, rel, _PACKAGES_FIELDS, max_line_bytes=MAX_LINE_BYTES, max_stanza_bytes=MAX_STANZA_BYTES
    )
    return (_listed_file(values, rel) for values in stanzas)


def _listed_file(values: list[str], rel: str) -> ListedFile:
    """The file a stanza of `rel` lists, its values (`_PACKAGES_FIELDS`) checked: a million times on a large mirror."""
    package, version, arch, description, filename, size_field, sha256 = values
    if not (filename and size_field and sha256):
        missing = [name for name, value in zip(("Filename", "Size", "SHA256"), values[4:], strict=True) if not value]
        raise SnapshotError(f"{rel}: stanza {package!r} lacks {', '.join(missing)}; {_RESYNC}")
    size = parse_size(size_field)
    sha256 = sha256.strip()
    if size is None or _SHA256.fullmatch(sha256) is None:
        raise SnapshotError(f"{rel}: stanza {package!r} has a malformed Size or SHA256; {_RESYNC}")
    path = filename.strip()
    if _PLAIN_REPO_PATH.fullmatch(path) is None:
        check_repo_path(path, rel)
    synopsis = description.partition("\n")[0].strip()
    return ListedFile(
        path,
        size,
        sha256.lower(),
        package.strip() or None,
        version.strip() or None,
        arch.strip() or None,
        synopsis or None,
        rel,
    )


# --- the package files on disk -----------------------------------------------------------------


def _problems_line(problems: list[str]) -> str:
    shown_problems = problems[:_MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown_problems)
    tail = f"; and {more} more" if more else ""
    return (
        f"{'; '.join(shown_problems)}{tail}: {len(problems)} file(s) listed in Packages are missing or "
        f"have the wrong size; {_RESYNC}"
    )


# --- the format adapter -------------------------------------------------------------------------

_SKIPPED_DIRS = frozenset({"by-hash", "i18n", "dep11", "source"})


class DebianFormat:
    """Debian and derivatives: the files the selected `Packages` indexes list (`pipeline.snapshot.formats`)."""

    info = FormatInfo(
        name="debian", label="Debian", client_list="sources.list", client_list_needs_suites=True, update_script=True
    )

    def detect(self, root_real: Path) -> bool:
        """True if some `dists/<suite>/**/binary-<arch>/` holds a Packages, Packages.gz or Packages.xz."""
        dists = root_real / "dists"
        if not dists.is_dir():
            return False
        for suite in sorted(name for name in os.listdir(dists) if not name.startswith(".")):
            for directory, subdirs, names in os.walk(dists / suite):
                subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
                if os.path.basename(directory).startswith("binary-") and any(n in PACKAGES_NAMES for n in names):
                    return True
        return False

    def check(self, spec: ScanSpec) -> None:
        return None

    def scan(self, root_real: Path, spec: ScanSpec) -> Scanned:
        selection = DebianSelection(
            suites=spec.suites,
            components=spec.components,
            architectures=spec.architectures,
            upstream_keyring=spec.upstream_keyring,
            listing_cache=spec.listing_cache,
        )
        return scan_debian(os.fsencode(root_real), selection, spec.seen)

    def recheck(self, root_real: Path, spec: ScanSpec) -> None:
        """Verify each selected suite's Release signature again (the upstream key may have expired)."""
        if spec.upstream_keyring is None:
            return
        tree = _Tree(os.fsencode(root_real))
        for suite in _select_suites(tree, spec.suites):
            _read_verified_release(tree, f"dists/{suite}", spec.upstream_keyring)


DEBIAN = DebianFormat()
