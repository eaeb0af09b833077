"""The regular files a walk of the tree has just stat'ed, in path order, for a scan to take their stat from.

A Debian scan looks up every file its `Packages` list (`_Tree.locate`: a stat each, ~7 us, ~7 s at a million
files) after the run's marked walk (`pipeline.snapshot.mark`) stat'ed the whole tree. When nothing is known of
the tree yet (a first run: the mark cannot match an earlier scan's), the walk keeps what it saw here instead,
and the scan, whose files come in path order, reads it back in order. Paths go to a StringColumn and stats to a
FixedColumn, both in the scratch file: memory keeps a few bytes a block, not a table of every file.

Only what the walk can vouch for as a scan would find it is kept: regular files with plain names, outside
dot-directories, below no symlink. A file not found here is looked up on disk as before.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from pipeline.filetable import StatRow
from pipeline.scratch import FixedColumn
from pipeline.strcolumn import StringColumn

_STAT = struct.Struct("<qqQQ")  # size, mtime_ns, dev, inode


class SeenStat(NamedTuple):
    """What a scan takes of a file's stat (the fields of `os.stat_result` it reads)."""

    st_size: int
    st_mtime_ns: int
    st_dev: int
    st_ino: int


class SeenFiles:
    """Files added in path order (StatRows, as the walk makes them); `cursor()` reads them back in that order."""

    __slots__ = ("_paths", "_stats")

    def __init__(self) -> None:
        self._paths = StringColumn()
        self._stats = FixedColumn(_STAT.size)

    def __len__(self) -> int:
        return len(self._paths)

    def add_rows(self, rows: Sequence[StatRow]) -> None:
        self._paths.extend([row[0] for row in rows])
        pack = _STAT.pack
        self._stats.extend(b"".join([pack(size, mtime_ns, dev, inode) for _, _, size, mtime_ns, dev, inode in rows]))

    def cursor(self) -> SeenCursor:
        return SeenCursor(iter(self._paths), iter(self._stats))


class SeenCursor:
    """Looks files up by paths that ascend: each file seen is read once."""

    __slots__ = ("_path", "_paths", "_stat", "_stats")

    def __init__(self, paths: Iterator[str], stats: Iterator[bytes]) -> None:
        self._paths, self._stats = paths, stats
        self._path = next(paths, None)
        self._stat = next(stats, None)

    def stat(self, path: str) -> SeenStat | None:
        """The stat of `path` as the walk saw it; None when it was not seen (or is below the last path asked)."""
        current = self._path
        while current is not None and current < path:
            current = next(self._paths, None)
            self._stat = next(self._stats, None)
        self._path = current
        if current != path or self._stat is None:
            return None
        return SeenStat._make(_STAT.unpack(self._stat))
