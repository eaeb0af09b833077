"""Flat snapshots: every regular file under the root is published under its relative path.

Dot-files and dot-directories (rsync temporaries `.name.XXXXXX`, `.~tmp~/`) are skipped; FIFOs,
sockets and devices are skipped without being opened. Symlinks that stay inside the root are
followed and listed under the link's own path; any other symlink fails the scan. One `lstat` per
file (from `os.scandir`), nothing is read.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SnapshotError
from pipeline.model import FileEntry
from pipeline.snapshot.paths import as_path, decode_name, join_rel, resolve_link_inside, shown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PendingDir:
    """A directory still to list: where it really is, its repo path, and the real dirs above it."""

    real: bytes
    rel: str
    ancestors: frozenset[bytes]


def scan_flat(root_real: bytes) -> tuple[FileEntry, ...]:
    """All publishable files under the real (already resolved) root, sorted by repo path."""
    files: list[FileEntry] = []
    pending = [_PendingDir(real=root_real, rel="", ancestors=frozenset({root_real}))]
    while pending:
        directory = pending.pop()
        _list_directory(directory, root_real, files, pending)
    files.sort(key=lambda entry: entry.path)
    log.debug("flat scan of %s: %d files", os.fsdecode(root_real), len(files))
    return tuple(files)


def _list_directory(
    directory: _PendingDir, root_real: bytes, files: list[FileEntry], pending: list[_PendingDir]
) -> None:
    try:
        entries = list(os.scandir(directory.real))
    except OSError as exc:
        where = shown(directory.rel) if directory.rel else os.fsdecode(root_real)
        raise SnapshotError(
            f"{where}: cannot list directory ({exc.strerror}); fix its permissions and run again"
        ) from None
    directory_source = as_path(directory.real)
    for entry in entries:
        if entry.name.startswith(b"."):
            continue
        if entry.is_symlink():
            rel = join_rel(directory.rel, decode_name(entry.name, directory.rel))
            _follow_link(entry.path, rel, directory, root_real, files, pending)
        elif entry.is_dir(follow_symlinks=False):
            rel = join_rel(directory.rel, decode_name(entry.name, directory.rel))
            pending.append(_PendingDir(entry.path, rel, directory.ancestors | {entry.path}))
        elif entry.is_file(follow_symlinks=False):
            rel = join_rel(directory.rel, decode_name(entry.name, directory.rel))
            source = directory_source / os.fsdecode(entry.name)  # parses one component, not the path
            files.append(_file_entry(rel, source, _lstat(entry, rel)))
        # FIFOs, sockets and devices: not published, never opened.


def _follow_link(
    link: bytes,
    rel: str,
    directory: _PendingDir,
    root_real: bytes,
    files: list[FileEntry],
    pending: list[_PendingDir],
) -> None:
    target = resolve_link_inside(link, root_real, rel)
    try:
        status = os.stat(target)
    except OSError as exc:
        raise SnapshotError(f"{shown(rel)}: cannot stat the link's target ({exc.strerror}); run again") from None
    if stat.S_ISDIR(status.st_mode):
        if target in directory.ancestors:
            raise SnapshotError(
                f"{shown(rel)}: symlink loop (points to a directory that contains it); remove the link and run again"
            )
        pending.append(_PendingDir(target, rel, directory.ancestors | {target}))
    elif stat.S_ISREG(status.st_mode):
        files.append(_file_entry(rel, as_path(target), status))


def _lstat(entry: os.DirEntry[bytes], rel: str) -> os.stat_result:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError as exc:
        raise SnapshotError(
            f"{shown(rel)}: cannot stat ({exc.strerror}); if a sync is running, run again after it finishes"
        ) from None


def _file_entry(rel: str, source: Path, status: os.stat_result) -> FileEntry:
    return FileEntry(
        path=rel,
        source=source,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        dev=status.st_dev,
        inode=status.st_ino,
    )
