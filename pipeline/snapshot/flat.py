"""Flat snapshots: every regular file under the root is published under its relative path.

Dot-files and dot-directories (rsync temporaries `.name.XXXXXX`, `.~tmp~/`) are skipped; FIFOs,
sockets and devices are skipped without being opened. Symlinks that stay inside the root are
followed and listed under the link's own path; any other symlink fails the scan. One `lstat` per
file (from `os.scandir`), nothing is read.

The walk is the hot loop of a no-change re-run, so it costs little beyond the `scandir` + `lstat`
it must do: a plain directory entry below a real directory is itself real (no `realpath`), a
printable ASCII name is checked with three C-level string tests (the UTF-8/NFC checks run only for
other names), each file's `source` is its directory's path string plus one component (a str, not a
Path: ~150 bytes a file where a Path costs ~400), a file is a plain tuple handed to the table in batches
(`FileTableBuilder.add_stat_rows`: no FileEntry, ~40 % of the scan at 200,000 files), and the real
directories above a directory (for the symlink-loop check) are a shared chain walked only when a directory
symlink is followed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable, FileTableBuilder, StatRow
from pipeline.snapshot.formats import FormatInfo, Scanned, ScanSpec
from pipeline.snapshot.paths import as_source, decode_name, resolve_link_inside, shown

log = logging.getLogger(__name__)

# The real directories from the root down to one directory: (real path, the chain above it or None).
_Chain = tuple[bytes, Any]
# A directory still to list: its real path, its repo path, its path string ending in "/", and the chain of
# real dirs above it.
_PendingDir = tuple[bytes, str, str, _Chain]
_STAT_ROW = 6  # the length of a StatRow, where a directory still to list has fewer fields
_BATCH = 4096  # stat rows handed to the table at a time
_Dir = TypeVar("_Dir", bound=tuple[Any, ...])  # a directory still to list, as a walk's `listing` takes it


def dir_prefix(real: bytes) -> str:
    """A directory's path string with one "/" at the end: a file's source is this plus its name."""
    return as_source(real).rstrip("/") + "/"


def scan_flat(root_real: bytes) -> FileTable:
    """All publishable files under the real (already resolved) root, sorted by repo path."""
    files = _walk(root_real).build()
    log.debug("flat scan of %s: %d files", os.fsdecode(root_real), len(files))
    return files


def _walk(root_real: bytes) -> FileTableBuilder:
    """Every publishable file under the root, in path order, in a builder (`walk_in_path_order`)."""
    files = FileTableBuilder()
    first = _listing((root_real, "", dir_prefix(root_real), (root_real, None)), root_real)
    walk_in_path_order(first, lambda directory: _listing(directory, root_real), files.add_stat_rows)
    return files


def walk_in_path_order(
    first: Sequence[StatRow | _Dir],
    listing: Callable[[_Dir], Sequence[StatRow | _Dir]],
    add_rows: Callable[[list[StatRow]], None],
) -> None:
    """Every file, in path order, from `first` (the root's listing: its files' stat rows and its directories,
    sorted as their paths sort, a directory's name with "/" after it) and the `listing` of each directory,
    walked where it sorts; the rows go to `add_rows` `_BATCH` at a time. So a FileTableBuilder keeps the paths
    compressed as they come, with no list of every path and no sort (the flat scan's walk and the mark's)."""
    batch: list[StatRow] = []
    stack = [iter(first)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif len(item) == _STAT_ROW:
            batch.append(item)  # a StatRow: six fields, where a directory has fewer
            if len(batch) == _BATCH:
                add_rows(batch)
                batch = []
        else:
            stack.append(iter(listing(item)))  # type: ignore[arg-type]  # a directory
    add_rows(batch)


def _listing(directory: _PendingDir, root_real: bytes) -> list[StatRow | _PendingDir]:
    """The files (stat'ed) and subdirectories of one directory, sorted as their paths sort."""
    real, rel, directory_source, chain = directory
    prefix = rel + "/" if rel else ""
    try:
        with os.scandir(real) as iterator:
            entries = list(iterator)
    except OSError as exc:
        raise _listing_error(rel, root_real, exc) from None
    found: list[tuple[str, StatRow | _PendingDir]] = []  # (what its path sorts by here, the item)
    append = found.append
    shared_dev = -1  # one int object for the device number every file shares (memory, not speed)
    for entry in entries:
        raw = entry.name
        if raw[0] == 0x2E:  # b".": dot-files and dot-directories
            continue
        if entry.is_file(follow_symlinks=False):
            # paths.is_plain_ascii, inlined: the common name costs three C-level tests, no call.
            if raw.isascii() and (name := raw.decode("ascii")).isprintable() and "\\" not in name:
                component = name  # one string for the repo path and the source path
            else:
                name = decode_name(raw, rel)  # refuses a bad name (one-line error)
                component = os.fsdecode(raw)
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise _stat_error(prefix + name, exc) from None
            dev = status.st_dev
            if dev != shared_dev:
                shared_dev = dev
            # A StatRow, in FileEntry's field order (path, source, size, mtime_ns, dev, inode); tests compare
            # every field with os.stat.
            row = (
                prefix + name,
                directory_source + component,
                status.st_size,
                status.st_mtime_ns,
                shared_dev,
                status.st_ino,
            )
            append((name, row))
        elif entry.is_dir(follow_symlinks=False):
            # Below a real directory, a directory that is not a symlink is real: its path needs no realpath.
            if raw.isascii() and (name := raw.decode("ascii")).isprintable() and "\\" not in name:
                component = name
            else:
                name = decode_name(raw, rel)
                component = os.fsdecode(raw)
            subdir = entry.path
            append((name + "/", (subdir, prefix + name, directory_source + component + "/", (subdir, chain))))
        elif entry.is_symlink():
            name = decode_name(raw, rel)
            followed = _follow_link(entry.path, prefix + name, chain, root_real)
            if followed is not None:
                append((name if len(followed) == _STAT_ROW else name + "/", followed))
        # FIFOs, sockets and devices: not published, never opened.
    found.sort(key=_first)
    return [item for _, item in found]


def _first(pair: tuple[str, object]) -> str:
    return pair[0]


def _follow_link(link: bytes, rel: str, chain: _Chain, root_real: bytes) -> StatRow | _PendingDir | None:
    """What a symlink inside the root stands for: its target's file, or its target directory to walk (None:
    neither, so not published)."""
    target = resolve_link_inside(link, root_real, rel)
    try:
        status = os.stat(target)
    except OSError as exc:
        raise SnapshotError(f"{shown(rel)}: cannot stat the link's target ({exc.strerror}); run again") from None
    if stat.S_ISDIR(status.st_mode):
        if _in_chain(target, chain):
            raise SnapshotError(
                f"{shown(rel)}: symlink loop (points to a directory that contains it); remove the link and run again"
            )
        return (target, rel, dir_prefix(target), (target, chain))
    if stat.S_ISREG(status.st_mode):
        return (rel, as_source(target), status.st_size, status.st_mtime_ns, status.st_dev, status.st_ino)
    return None


def _in_chain(real: bytes, chain: _Chain | None) -> bool:
    """True when the real directory `real` is one of the directories of `chain` (it contains the link)."""
    while chain is not None:
        if chain[0] == real:
            return True
        chain = chain[1]
    return False


def _listing_error(rel: str, root_real: bytes, exc: OSError) -> SnapshotError:
    where = shown(rel) if rel else os.fsdecode(root_real)
    return SnapshotError(f"{where}: cannot list directory ({exc.strerror}); fix its permissions and run again")


def _stat_error(rel: str, exc: OSError) -> SnapshotError:
    return SnapshotError(
        f"{shown(rel)}: cannot stat ({exc.strerror}); if a sync is running, run again after it finishes"
    )


# --- the format adapter -------------------------------------------------------------------------


class FlatFormat:
    """Any tree, every regular file as it is (never guessed: `--format flat`)."""

    info = FormatInfo(name="flat", label="flat")

    def detect(self, root_real: Path) -> bool:
        return False

    def check(self, spec: ScanSpec) -> None:
        if spec.suites or spec.components or spec.architectures or spec.upstream_keyring:
            raise ConfigError(
                "format flat: suites, components, architectures and upstream_keyring apply to Debian "
                "snapshots only; remove them or use --format debian"
            )

    def scan(self, root_real: Path, spec: ScanSpec) -> Scanned:
        return Scanned(scan_flat(os.fsencode(root_real)))

    def recheck(self, root_real: Path, spec: ScanSpec) -> None:
        return None  # nothing signed


FLAT = FlatFormat()
