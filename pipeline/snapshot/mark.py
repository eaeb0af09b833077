"""A tree's mark: one digest of every name and stat under a snapshot root.

With it a run tells, in one walk and without reading or parsing anything, that the tree is exactly the
one an earlier scan saw (`pipeline.run`'s unchanged-snapshot path). It covers every entry under the root,
dot files too, without following symlinks:
- a directory by its name (its entries are walked);
- a symlink by its name, target text and ctime;
- any other entry by its name, mode, device, inode, size, mtime and ctime (ns).

ctime cannot be set from user space, so a file rewritten in place changes the mark even with its size
and mtime put back. The mark is stricter than the state cache's own test (device, inode, size, mtime).

Directories are walked in path order, the flat scan's (each directory's entries sorted by name, a
directory's name with "/" after it, each subdirectory walked where it sorts). So the same walk can also
give the flat scan's table (`marked_walk(..., flat_files=True)`): a flat tree whose mark changed is then
not walked a second time. That table is given only when it is exactly what `scan_flat` would find there:
no symlink (the scan follows those inside the root) and no name other than printable ASCII (the scan's
checks of other names are its own) outside dot-directories; else the scan walks again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.filetable import FileTable, FileTableBuilder, StatRow
from pipeline.snapshot.flat import dir_prefix, walk_in_path_order
from pipeline.snapshot.seen import SeenFiles

MARK_RECIPE = "2"  # bump when what the mark covers changes: an older state's mark then matches nothing
# 2: directories in path order (was: the order of a stack), so that one walk can also make the flat scan's table


@dataclass(frozen=True)
class TreeMark:
    """A tree's mark and, when asked for and the tree allows it, the flat scan's table of the same walk; or, when
    asked for, the regular files it saw (`pipeline.snapshot.seen`)."""

    digest: str
    files: FileTable | None = None
    seen: SeenFiles | None = None


# A directory still to walk: its path below the root (b"" or b"/a/b"), and the repo path before its entries'
# names ("a/b/"; None: its files are not the flat scan's, a dot-directory or one the table was given up for).
_Pending = tuple[bytes, str | None]


def tree_mark(root_real: Path, context: str) -> str | None:
    """The mark of the tree under `root_real`, with `context` (what else the scan's result depends on)
    folded in; None when some directory cannot be listed or some entry cannot be stat'ed (the scan then
    says what is wrong)."""
    marked = marked_walk(root_real, context)
    return marked.digest if marked is not None else None


def marked_walk(
    root_real: Path, context: str, *, flat_files: bool = False, seen_files: bool = False
) -> TreeMark | None:
    """`tree_mark`'s walk; with `flat_files`, also the table `scan_flat(root_real)` would make of the tree as
    this walk saw it (None in the TreeMark when the tree has what only the scan handles); with `seen_files` (and
    not `flat_files`), the regular files it saw that a scan may take as found (`SeenFiles`)."""
    root = os.fsencode(root_real)
    digest = hashlib.blake2b(f"{MARK_RECIPE}\n{context}\n".encode("utf-8", "surrogateescape"), digest_size=32)
    walk = _Walk(dir_prefix(root), wanted=flat_files, seen=seen_files and not flat_files)
    try:
        first = _listing(root, (b"", ""), digest, walk)
        walk_in_path_order(first, lambda directory: _listing(root, directory, digest, walk), walk.add)
    except OSError:
        return None
    return TreeMark(digest.hexdigest(), walk.table(), walk.seen)


class _Walk:
    """The flat scan's table as the marked walk finds its files, until something only the scan handles (given
    up from the start when not wanted: then no file is collected). With `seen`, the files are collected as
    `SeenFiles` instead, and what only the scan handles is passed over, not given up for."""

    def __init__(self, source_prefix: str, *, wanted: bool, seen: bool = False) -> None:
        self.source_prefix = source_prefix  # the root's path string with one "/" at the end
        self.seen = SeenFiles() if seen else None
        self.given_up = not wanted and not seen
        self._builder = FileTableBuilder()

    def add(self, rows: list[StatRow]) -> None:
        if self.seen is not None:
            self.seen.add_rows(rows)
        elif not self.given_up:
            self._builder.add_stat_rows(rows)

    def passes_over(self) -> bool:
        """Something only the scan handles was met: whether to go on (`seen`) rather than give up."""
        if self.seen is not None:
            return True
        self.give_up()
        return False

    def give_up(self) -> None:
        self.given_up = True
        self._builder = FileTableBuilder()

    def table(self) -> FileTable | None:
        return None if self.given_up or self.seen is not None else self._builder.build()


def _sort_name(entry: os.DirEntry[bytes]) -> bytes:
    """What an entry sorts by among its directory's: its name, with "/" after a directory's."""
    return entry.name + b"/" if entry.is_dir(follow_symlinks=False) else entry.name


def _listing(root: bytes, directory: _Pending, digest: hashlib.blake2b, walk: _Walk) -> list[StatRow | _Pending]:
    """Fold one directory's entries into the mark; its subdirectories to walk and (unless `walk` gave up) the
    flat scan's files, in path order."""
    rel, prefix = directory
    with os.scandir(root + rel) as listing:
        entries = sorted(listing, key=_sort_name)
    if walk.given_up:
        prefix = None
    # NUL-separated tokens (no name or link target holds a NUL): a kind token, then that kind's fields;
    # an empty token ends the directory
    tokens = [rel]
    found: list[StatRow | _Pending] = []
    for entry in entries:
        raw = entry.name
        name: str | None = None
        if prefix is not None and raw[0] != 0x2E:  # b".": dot entries are not the flat scan's
            # paths.is_plain_ascii, inlined as in the flat scan: the other names are the scan's to check
            if raw.isascii() and (plain := raw.decode("ascii")).isprintable() and "\\" not in plain:
                name = plain
            elif not walk.passes_over():  # else this entry alone is not collected (nor, a directory, below it)
                prefix = None
        if entry.is_dir(follow_symlinks=False):
            tokens += (b"d", raw)
            found.append((rel + b"/" + raw, None if prefix is None or name is None else prefix + name + "/"))
            continue
        st = entry.stat(follow_symlinks=False)
        if entry.is_symlink():
            tokens += (b"l", raw, os.readlink(entry.path), b"%d" % st.st_ctime_ns)
            if name is not None and not walk.passes_over():  # the scan follows it
                prefix = None
            continue
        facts = (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        tokens += (b"f", raw, b"%o %d %d %d %d %d" % facts)
        if name is not None and prefix is not None and stat.S_ISREG(st.st_mode):
            path = prefix + name
            found.append((path, walk.source_prefix + path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino))
    digest.update(b"\0".join(tokens) + b"\0\0")
    return found
