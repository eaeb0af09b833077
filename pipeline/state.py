"""The SQLite state cache: (dev, inode, size, mtime_ns) of a path -> its SHA-256, piece size, pieces, infohash.

A file whose stat key is unchanged is not read again. The cache only saves work: whether the
publication changed is decided against the index the current pointer names, so a lost or deleted
cache costs hashing, never a republish, and the output is the same byte for byte. A corrupt or
foreign cache file is reported in one log line and rebuilt. ctime is not part of the key: hard-link
snapshot rotation changes it without changing the bytes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pipeline.model import FileEntry

log = logging.getLogger(__name__)

STATE_FORMAT = "mirrorseed-state/1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    dev INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    piece_size INTEGER NOT NULL,
    infohash TEXT,
    expected_sha256 TEXT,
    pieces BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class CachedFile:
    """What the cache knows of one path whose stat key still matches."""

    sha256: str
    piece_size: int
    infohash: str | None


@dataclass(frozen=True)
class StateRow:
    """One fresh fact to remember: the file as scanned and what hashing found."""

    entry: FileEntry
    sha256: str
    piece_size: int
    infohash: str | None
    pieces: bytes


class StateCache:
    """One SQLite file per repo. Not shared between processes at once: a run holds it for its duration."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path, *, repo: str) -> StateCache:
        """Open or create the cache; a corrupt or foreign file is reported and replaced by an empty one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return cls._open_checked(path, repo)
        except (sqlite3.DatabaseError, _ForeignCache) as exc:
            log.warning("%s: state cache unusable (%s); rebuilding it (this run hashes every file)", path, exc)
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            return cls._open_checked(path, repo)

    @classmethod
    def _open_checked(cls, path: Path, repo: str) -> StateCache:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and not {"meta", "files"} <= tables:
                raise _ForeignCache(f"not a mirrorseed state file (tables: {', '.join(sorted(tables))})")
            db.executescript(_SCHEMA)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", STATE_FORMAT), ("repo", repo)])
            elif meta.get("format") != STATE_FORMAT or meta.get("repo") != repo:
                raise _ForeignCache(f"format {meta.get('format')!r} for repo {meta.get('repo')!r}, not {repo!r}")
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, files: Sequence[FileEntry]) -> dict[str, CachedFile]:
        """The cached facts of every file whose (dev, inode, size, mtime_ns) is unchanged, by path."""
        wanted = {entry.path: entry for entry in files}
        hits: dict[str, CachedFile] = {}
        query = "SELECT path, dev, inode, size, mtime_ns, sha256, piece_size, infohash FROM files"
        with closing(self._db.execute(query)) as cursor:
            for path, dev, inode, size, mtime_ns, sha256, piece_size, infohash in cursor:
                entry = wanted.get(path)
                if (
                    entry is not None
                    and entry.dev == dev
                    and entry.inode == inode
                    and entry.size == size
                    and entry.mtime_ns == mtime_ns
                ):
                    hits[path] = CachedFile(sha256, piece_size, infohash)
        return hits

    def pieces(self, path: str) -> bytes:
        """The piece hashes of a cached path (for rebuilding its torrent without reading the file)."""
        row = self._db.execute("SELECT pieces FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise KeyError(path)
        return bytes(row[0])

    def store(self, rows: Iterable[StateRow]) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        r.entry.path,
                        r.entry.dev,
                        r.entry.inode,
                        r.entry.size,
                        r.entry.mtime_ns,
                        r.sha256,
                        r.piece_size,
                        r.infohash,
                        r.entry.expected_sha256,
                        r.pieces,
                    )
                    for r in rows
                ),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def forget_except(self, paths: Iterable[str]) -> int:
        """Drop rows of paths no longer in the snapshot; returns how many were dropped."""
        keep = set(paths)
        stale = [(p,) for (p,) in self._db.execute("SELECT path FROM files") if p not in keep]
        if stale:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM files WHERE path = ?", stale)
            self._db.execute("COMMIT")
        return len(stale)


class _ForeignCache(Exception):
    pass
