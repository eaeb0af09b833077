"""The SQLite state cache: (dev, inode, size, mtime_ns) of a path -> its SHA-256, piece size, pieces, infohash.

A file whose stat key is unchanged is not read again. The cache only saves work: whether the
publication changed is decided against the index the current pointer names, so a lost or deleted
cache costs hashing, never a republish, and the output is the same byte for byte. A corrupt or
foreign cache file is reported in one log line and rebuilt; a path that cannot hold a writable file
(a directory, a path under a regular file, a read-only place) is a one-line ConfigError, never rebuilt.
ctime is not part of the key: hard-link snapshot rotation changes it without changing the bytes.

The last parse of each metadata file (a Debian `Packages`) lives here too, by the SHA-256 of its bytes
(`listings`): a no-change run reads it back instead of decompressing and parsing every stanza again.

Mirror facts live here too (pipeline.mirrors): which mirror was verified, when, to hold which path
with which SHA-256 (`mirror_files`), and each mirror's health history for the flapping rule
(`mirror_health`). They are a cache in the same sense: losing them costs probes, and a fact whose
SHA-256 differs from the current file's is ignored. Their tables are created on open when missing
(older state files gain them); tables of an unexpected shape are dropped and recreated empty.

The last scan is remembered by the tree's mark (`KnownScan`, `pipeline.snapshot.mark`): a run whose tree
has the same mark takes the files from the `files` table instead of scanning and looking them up.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pipeline.errors import ConfigError
from pipeline.model import FileEntry

log = logging.getLogger(__name__)

STATE_FORMAT = "mirrorseed-state/1"
PIECES_BATCH = 500  # paths per query (SQLite's default limit is 32,766 bound parameters)
KEPT_PUBLICATIONS = 8  # index digests remembered (a roll-back to a recent index still matches)
# SQLite primary result codes that say the path cannot be opened or written (not that the file is damaged):
# PERM, BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN. Rebuilding would not help; the operator must act.
_ACCESS_ERROR_CODES = frozenset({3, 5, 6, 8, 10, 13, 14})
_STATE_HINT = "point --state at a writable file path or fix its permissions"

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


# Tables added after the first state format: created when missing, recreated when their columns differ.
_TABLES = {
    "publications": (
        "CREATE TABLE publications (index_sha256 TEXT PRIMARY KEY, inputs TEXT NOT NULL, seen INTEGER NOT NULL)",
        ("index_sha256", "inputs", "seen"),
    ),
    "pages": (
        "CREATE TABLE pages (key TEXT PRIMARY KEY, inputs TEXT NOT NULL, sha256 TEXT NOT NULL)",
        ("key", "inputs", "sha256"),
    ),
    "mirror_files": (
        "CREATE TABLE mirror_files (\n"
        "    mirror TEXT NOT NULL,\n"
        "    path TEXT NOT NULL,\n"
        "    sha256 TEXT NOT NULL,\n"
        "    verified_at TEXT NOT NULL,\n"
        "    checks INTEGER NOT NULL,\n"
        "    last_modified TEXT,\n"
        "    PRIMARY KEY (mirror, path)\n"
        ") WITHOUT ROWID",
        ("mirror", "path", "sha256", "verified_at", "checks", "last_modified"),
    ),
    "listings": (
        "CREATE TABLE listings (name TEXT PRIMARY KEY, digest TEXT NOT NULL, value BLOB NOT NULL)",
        ("name", "digest", "value"),
    ),
    "publication_files": (
        "CREATE TABLE publication_files (path TEXT PRIMARY KEY, fingerprint INTEGER NOT NULL) WITHOUT ROWID",
        ("path", "fingerprint"),
    ),
    "templates": (
        "CREATE TABLE templates (key TEXT PRIMARY KEY, code BLOB NOT NULL)",
        ("key", "code"),
    ),
    "mirror_health": (
        "CREATE TABLE mirror_health (\n"
        "    mirror TEXT PRIMARY KEY,\n"
        "    status TEXT NOT NULL,\n"
        "    checked_at TEXT NOT NULL,\n"
        "    down_runs INTEGER NOT NULL,\n"
        "    down_since TEXT,\n"
        "    last_sync TEXT\n"
        ")",
        ("mirror", "status", "checked_at", "down_runs", "down_since", "last_sync"),
    ),
}


@dataclass(frozen=True)
class MirrorFact:
    """A mirror was verified at `verified_at` (RFC 3339 UTC) to hold `path` with this SHA-256.

    `checks` counts successful verifications (the probe picks another piece each time);
    `last_modified` is the mirror's Last-Modified header, as sent, for diagnostics.
    """

    path: str
    sha256: str
    verified_at: str
    checks: int = 1
    last_modified: str | None = None


@dataclass(frozen=True)
class MirrorHealthRecord:
    """A mirror's status in its last run and, while it is down, since when and for how many runs."""

    mirror: str
    status: str
    checked_at: str  # RFC 3339 UTC
    down_runs: int = 0  # consecutive runs that found it down (0 when it is up)
    down_since: str | None = None  # RFC 3339 UTC: the first of those runs
    last_sync: str | None = None  # RFC 3339 UTC, from its last-sync file


def _stat_key_of(files: Sequence[FileEntry]) -> Callable[[int], tuple[int, int, int, int]]:
    def stat_at(index: int) -> tuple[int, int, int, int]:
        entry = files[index]
        return entry.dev, entry.inode, entry.size, entry.mtime_ns

    return stat_at


class CachedFile(NamedTuple):
    """What the cache knows of one path whose stat key still matches.

    A NamedTuple (immutable, same fields and positional order as before): `lookup` makes one per file
    of a no-change run, and a tuple is cheaper to build and hold than a frozen dataclass instance.
    """

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


@dataclass(frozen=True)
class KnownScan:
    """The last scan, as far as a run whose tree has the same `mark` needs it: the `files` table then holds
    exactly its files (and their facts), and `files_digest` is their part of the publication inputs."""

    mark: str
    format: str
    files: int
    timestamp: str | None  # the snapshot's timestamp (ISO 8601), None when it has none
    files_digest: str


class _PageMemo(Mapping[str, tuple[str, str]]):
    """The `pages` table as a mapping: one query a lookup, keys streamed in order."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getitem__(self, key: str) -> tuple[str, str]:
        row = self._db.execute("SELECT inputs, sha256 FROM pages WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return str(row[0]), str(row[1])

    def __iter__(self) -> Iterator[str]:
        with closing(self._db.execute("SELECT key FROM pages ORDER BY key")) as cursor:
            for (key,) in cursor:
                yield str(key)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM pages").fetchone()[0])


_Row = TypeVar("_Row", bound=tuple[Any, ...])


def _positions(paths: Sequence[str], rows: Iterable[_Row]) -> Iterator[tuple[int | None, _Row]]:
    """Each of the cache's `rows` (`ORDER BY path`, the path first) with its path's position in the sorted
    `paths` (None: not there), found by reading both in order, not by a dict of every path."""
    count = len(paths)
    search: Callable[[str], int] = getattr(paths, "bisect_left", None) or (lambda path: bisect_left(paths, path))
    at = 0
    for row in rows:
        path = row[0]
        while at < count and paths[at] < path:
            at += 1
        if at < count and paths[at] == path:
            yield at, row
            continue
        # not where the merge looked: SQLite orders UTF-8 bytes, Python code points (the same order, but for
        # lone surrogates); the snapshot's own order decides
        found = search(path)
        yield (found if found < count and paths[found] == path else None), row


class StateCache:
    """One SQLite file per repo. Not shared between processes at once: a run holds it for its duration."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path, *, repo: str) -> StateCache:
        """Open or create the cache; a corrupt or foreign file is reported and replaced by an empty one.

        ConfigError (one line naming `path`) when the path cannot hold a writable file.
        """
        _check_place(path)
        try:
            return cls._open_checked(path, repo)
        except (sqlite3.DatabaseError, _ForeignCache) as exc:
            _refuse_access_error(path, exc)
            log.warning("%s: state cache unusable (%s); rebuilding it (this run hashes every file)", path, exc)
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot replace the unusable state cache ({exc.strerror}); {_STATE_HINT}"
            ) from None
        try:
            return cls._open_checked(path, repo)
        except sqlite3.DatabaseError as exc:
            _refuse_access_error(path, exc)
            raise

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
            _ensure_tables(db, path)
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

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN … COMMIT, rolled back if anything inside (or the COMMIT) fails."""
        self._db.execute("BEGIN")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def lookup(self, files: Sequence[FileEntry]) -> Iterator[tuple[int, CachedFile]]:
        """(position in `files`, cached facts) of every file whose (dev, inode, size, mtime_ns) is unchanged.

        One pass over the table reading only the columns needed (never the piece blobs): per file, one row
        decoded by sqlite3 and four integer compares. A FileTable's sorted paths are read in order beside the
        rows (`_positions`); other files are matched against a dict of their positions by path (a dict of a
        million paths would cost ~200 MB).
        """
        # by position, not by entry: a FileTable's stat keys are read from its columns, no entry made
        query = "SELECT path, dev, inode, size, mtime_ns, sha256, piece_size, infohash FROM files"
        stat_at: Callable[[int], tuple[int, int, int, int]]
        if hasattr(files, "stat_at") and hasattr(files, "paths"):  # a FileTable (which imports this module)
            stat_at = files.stat_at
            with closing(self._db.execute(query + " ORDER BY path")) as rows:
                matched = _positions(files.paths, rows)
                for index, (_, dev, inode, size, mtime_ns, sha256, piece_size, infohash) in matched:
                    if index is not None and stat_at(index) == (dev, inode, size, mtime_ns):
                        yield index, CachedFile(sha256, piece_size, infohash)
            return
        stat_at = _stat_key_of(files)
        wanted = {entry.path: index for index, entry in enumerate(files)}
        with closing(self._db.execute(query)) as cursor:
            for path, dev, inode, size, mtime_ns, sha256, piece_size, infohash in cursor:
                found = wanted.get(path)
                if found is not None and stat_at(found) == (dev, inode, size, mtime_ns):
                    yield found, CachedFile(sha256, piece_size, infohash)

    def pieces_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        """The piece hashes of the cached paths among `paths` (absent ones are left out), a few queries."""
        found: dict[str, bytes] = {}
        for start in range(0, len(paths), PIECES_BATCH):
            batch = paths[start : start + PIECES_BATCH]
            query = f"SELECT path, pieces FROM files WHERE path IN ({','.join('?' * len(batch))})"
            with closing(self._db.execute(query, tuple(batch))) as cursor:
                for path, pieces in cursor:
                    found[path] = bytes(pieces)
        return found

    def store(self, rows: Iterable[StateRow]) -> None:
        with self._transaction():
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

    def knows_no_file(self) -> bool:
        """Whether the cache holds no file at all (a first run, or a lost state): every file will be hashed."""
        return self._db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def file_count(self) -> int:
        """How many files the cache holds (equal to the snapshot's when every file hit: nothing to forget)."""
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def forget_except(self, paths: Sequence[str]) -> int:
        """Drop rows of paths no longer in the snapshot (`paths`, sorted); returns how many were dropped.
        The cache's paths are read in order beside them: no set of a million paths is made."""
        with closing(self._db.execute("SELECT path FROM files ORDER BY path")) as cursor:
            stale = [row for index, row in _positions(paths, cursor) if index is None]
        if stale:
            with self._transaction():
                self._db.executemany("DELETE FROM files WHERE path = ?", stale)
        return len(stale)

    def file_facts(self) -> Iterator[tuple[str, int, str, int, str | None]]:
        """(path, size, SHA-256, piece size, infohash) of every cached file, by path (the order of a scan)."""
        query = "SELECT path, size, sha256, piece_size, infohash FROM files ORDER BY path"
        with closing(self._db.execute(query)) as cursor:
            yield from cursor

    # --- the last scan (pipeline.run) ---------------------------------------------------------------

    def known_scan(self, mark: str) -> KnownScan | None:
        """The last scan when it had this `mark`, else None (the caller counts the files it reads back)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'scan'").fetchone()
        if row is None:
            return None
        try:
            known = KnownScan(**json.loads(row[0]))
        except (ValueError, TypeError):
            return None
        return known if known.mark == mark else None

    def remember_scan(self, known: KnownScan) -> None:
        """Remember a scan whose files (and only those) the `files` table holds now."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('scan', ?)", (json.dumps(asdict(known)),))

    def forget_scan(self) -> None:
        """Before the `files` table changes: no mark vouches for it until the next `remember_scan`."""
        with self._transaction():
            self._db.execute("DELETE FROM meta WHERE key = 'scan'")

    # --- publications (pipeline.run) ---------------------------------------------------------------

    def publication_inputs(self, index_sha256: str) -> str | None:
        """The inputs digest this cache saw the index `index_sha256` built from (or verified equal to)."""
        row = self._db.execute("SELECT inputs FROM publications WHERE index_sha256 = ?", (index_sha256,)).fetchone()
        return None if row is None else str(row[0])

    def remember_publication(self, index_sha256: str, inputs: str) -> None:
        """Remember that the index `index_sha256` holds exactly what `inputs` builds (the latest few kept)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO publications VALUES "
                "(?, ?, (SELECT COALESCE(MAX(seen), 0) + 1 FROM publications))",
                (index_sha256, inputs),
            )
            self._db.execute(
                "DELETE FROM publications WHERE seen <= (SELECT MAX(seen) FROM publications) - ?",
                (KEPT_PUBLICATIONS,),
            )

    def published_files(self, pointer_sha256: str, recipe: str) -> tuple[Any, Iterator[tuple[str, int]]] | None:
        """What `remember_published_files` kept of the publication whose `latest.asc` has SHA-256 `pointer_sha256`
        with fingerprints of this `recipe`: its `about` and its (path, fingerprint) rows in path order, streamed
        (the caller reads them to the end); None when the cache holds another publication's, or none."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'publication_files'").fetchone()
        try:
            kept = json.loads(row[0]) if row is not None else None
        except ValueError:
            return None
        if not isinstance(kept, dict) or kept.get("pointer_sha256") != pointer_sha256 or kept.get("recipe") != recipe:
            return None
        return kept.get("about"), self._published_rows()

    def _published_rows(self) -> Iterator[tuple[str, int]]:
        with closing(self._db.execute("SELECT path, fingerprint FROM publication_files ORDER BY path")) as cursor:
            for path, value in cursor:
                yield str(path), int(value)

    def remember_published_files(
        self, pointer_sha256: str, recipe: str, about: Any, rows: Iterable[tuple[str, int]]
    ) -> None:
        """Keep (path, fingerprint) of every file the publication whose `latest.asc` has SHA-256 `pointer_sha256`
        lists, and `about` it (JSON), replacing the last publication's: a later run reads them instead of
        every shard (`pipeline.remembered`)."""
        with self._transaction():
            self._db.execute("DELETE FROM publication_files")
            self._db.executemany("INSERT INTO publication_files VALUES (?, ?)", rows)
            self._published_about(pointer_sha256, recipe, about)

    def update_published_files(
        self,
        before: str,
        pointer_sha256: str,
        recipe: str,
        about: Any,
        rows: Iterable[tuple[str, int]],
        removed: Iterable[str],
    ) -> bool:
        """What `remember_published_files` does, from what it kept of the publication `before` (a `latest.asc`'s
        SHA-256): the (path, fingerprint) `rows` added or replaced, the `removed` paths dropped (a change's
        worth of writes, not every path's). False, and nothing changed, when it kept another publication's."""
        with self._transaction():
            if self.published_files(before, recipe) is None:
                return False
            self._db.executemany("DELETE FROM publication_files WHERE path = ?", ((path,) for path in removed))
            self._db.executemany("INSERT OR REPLACE INTO publication_files VALUES (?, ?)", rows)
            self._published_about(pointer_sha256, recipe, about)
        return True

    def _published_about(self, pointer_sha256: str, recipe: str, about: Any) -> None:
        """Name the publication the `publication_files` rows are of (inside the transaction that wrote them)."""
        about_json = json.dumps({"pointer_sha256": pointer_sha256, "recipe": recipe, "about": about})
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('publication_files', ?)", (about_json,))

    def highest_sequence(self) -> int:
        """The highest sequence of a pointer this publisher committed for the repo (0: none remembered)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'highest_sequence'").fetchone()
        return int(row[0]) if row is not None and str(row[0]).isascii() and str(row[0]).isdigit() else 0

    def remember_sequence(self, sequence: int) -> None:
        """Remember that a pointer of `sequence` was committed (the highest is kept)."""
        if sequence > self.highest_sequence():
            with self._transaction():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('highest_sequence', ?)", (str(sequence),))

    # --- destination audits (pipeline.run) --------------------------------------------------------

    def last_audit(self, destination: str) -> float | None:
        """When a run last checked every object of `destination` against its manifest (epoch seconds)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (_audit_key(destination),)).fetchone()
        try:
            return None if row is None else float(row[0])
        except ValueError:
            return None

    def remember_audit(self, destination: str, when: float) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_audit_key(destination), repr(when)))

    def forget_audit(self, destination: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM meta WHERE key = ?", (_audit_key(destination),))

    # --- listing pages (pipeline.run) -------------------------------------------------------------

    def page_memo(self) -> Mapping[str, tuple[str, str]]:
        """page key -> (inputs digest, SHA-256 of the page rendered from them) of the last publication, looked
        up in the state as asked (a dict of every page costs ~400 bytes a page: ~540,000 pages at a million
        files)."""
        return _PageMemo(self._db)

    def page_keys(self) -> Iterator[str]:
        """The keys of the last publication's pages, streamed (a run that only probes needs no memo)."""
        with closing(self._db.execute("SELECT key FROM pages ORDER BY key")) as cursor:
            for (key,) in cursor:
                yield str(key)

    def remember_pages(self, rows: Iterable[tuple[str, str, str]], keep: Container[str]) -> None:
        """Store (key, inputs, sha256) rows; drop the pages not in `keep` (directories that went away)."""
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO pages VALUES (?, ?, ?)", rows)
            stale = [(k,) for (k,) in self._db.execute("SELECT key FROM pages") if k not in keep]
            self._db.executemany("DELETE FROM pages WHERE key = ?", stale)

    # --- compiled listing templates (pipeline.render) ---------------------------------------------

    def template_code(self, key: str) -> bytes | None:
        """The compiled template `dump_template_code` kept under `key` (jinja2's bytecode, which carries the
        Python version and the template source's checksum and is not used when either differs)."""
        try:
            row = self._db.execute("SELECT code FROM templates WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:  # a cache only: the template is compiled instead
            log.debug("%s: no compiled template read (%s)", self.path, exc)
            return None
        return None if row is None else bytes(row[0])

    def dump_template_code(self, key: str, code: bytes) -> None:
        """Keep a template's compiled form: a later run renders without compiling it (~80 ms for all). A cache
        only: a state that cannot take it (locked by another process, say) costs the next run a compile."""
        try:
            self._db.execute("INSERT OR REPLACE INTO templates VALUES (?, ?)", (key, code))
        except sqlite3.Error as exc:
            log.debug("%s: compiled template not kept (%s)", self.path, exc)

    # --- the last parse of each metadata file (pipeline.snapshot) --------------------------------

    def listing(self, name: str, digest: str) -> sqlite3.Blob | None:
        """What `remember_listing` kept of the metadata file `name` when its bytes had SHA-256 `digest`, read as
        a file (the caller closes it)."""
        query = "SELECT rowid FROM listings WHERE name = ? AND digest = ?"
        row = self._db.execute(query, (name, digest)).fetchone()
        return None if row is None else self._db.blobopen("listings", "value", row[0], readonly=True)

    def remember_listing(self, name: str, digest: str, chunks: Iterable[bytes], size: int) -> None:
        """Keep one parse of the metadata file `name` (the last one): its bytes' SHA-256 and the `size` bytes
        of `chunks`, written a chunk at a time (never joined in memory)."""
        with self._transaction():
            cursor = self._db.execute(
                "INSERT OR REPLACE INTO listings VALUES (?, ?, zeroblob(?))", (name, digest, size)
            )
            assert cursor.lastrowid is not None  # the row just inserted
            with self._db.blobopen("listings", "value", cursor.lastrowid) as blob:
                for chunk in chunks:
                    blob.write(chunk)
                if blob.tell() != size:
                    raise ValueError(f"{name}: {blob.tell()} bytes of a {size}-byte parse")

    def keep_listings(self, names: Iterable[str]) -> None:
        """Forget the parses of metadata files other than `names` (no longer scanned)."""
        kept = set(names)
        stale = [(name,) for (name,) in self._db.execute("SELECT name FROM listings") if name not in kept]
        if stale:
            self._db.executemany("DELETE FROM listings WHERE name = ?", stale)

    # --- mirror facts (pipeline.mirrors) ---------------------------------------------------------

    def mirror_facts(self, mirror: str) -> Iterator[MirrorFact]:
        """Every verification fact kept for `mirror` (a normalised base URL), by path, streamed."""
        query = (
            "SELECT path, sha256, verified_at, checks, last_modified FROM mirror_files WHERE mirror = ? ORDER BY path"
        )
        with closing(self._db.execute(query, (mirror,))) as cursor:
            for row in cursor:
                yield MirrorFact(*row)

    def update_mirror_facts(self, mirror: str, verified: Iterable[MirrorFact], forgotten: Iterable[str]) -> None:
        """In one transaction: remember (or refresh) `verified` and drop the facts of the `forgotten` paths."""
        with self._transaction():
            self._db.executemany(
                "DELETE FROM mirror_files WHERE mirror = ? AND path = ?", ((mirror, path) for path in forgotten)
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO mirror_files VALUES (?, ?, ?, ?, ?, ?)",
                ((mirror, f.path, f.sha256, f.verified_at, f.checks, f.last_modified) for f in verified),
            )

    def forget_mirrors_except(self, mirrors: Iterable[str], paths: Iterable[str]) -> int:
        """Drop what is kept of mirrors not in `mirrors` and facts of paths not in `paths`; returns facts dropped."""
        with self._transaction():
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep_mirrors (mirror TEXT PRIMARY KEY)")
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep_paths (path TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM keep_mirrors")
            self._db.execute("DELETE FROM keep_paths")
            self._db.executemany("INSERT OR IGNORE INTO keep_mirrors VALUES (?)", ((m,) for m in mirrors))
            self._db.executemany("INSERT OR IGNORE INTO keep_paths VALUES (?)", ((p,) for p in paths))
            dropped = self._db.execute(
                "DELETE FROM mirror_files WHERE mirror NOT IN (SELECT mirror FROM keep_mirrors)"
                " OR path NOT IN (SELECT path FROM keep_paths)"
            ).rowcount
            self._db.execute("DELETE FROM mirror_health WHERE mirror NOT IN (SELECT mirror FROM keep_mirrors)")
            self._db.execute("DELETE FROM keep_mirrors")
            self._db.execute("DELETE FROM keep_paths")
        return dropped

    def mirror_health(self, mirror: str) -> MirrorHealthRecord | None:
        """The health kept for `mirror` from its last run, or None if it was never probed."""
        row = self._db.execute(
            "SELECT mirror, status, checked_at, down_runs, down_since, last_sync FROM mirror_health WHERE mirror = ?",
            (mirror,),
        ).fetchone()
        return None if row is None else MirrorHealthRecord(*row)

    def store_mirror_health(self, records: Iterable[MirrorHealthRecord]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO mirror_health VALUES (?, ?, ?, ?, ?, ?)",
                ((r.mirror, r.status, r.checked_at, r.down_runs, r.down_since, r.last_sync) for r in records),
            )


def _check_place(path: Path) -> None:
    """Refuse a state path that is a directory or whose directory cannot be made (ConfigError, one line)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; point --state at a file path (such as {path / 'state.sqlite'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{path}: {path.parent} or a directory above it is a file, not a directory; {_STATE_HINT}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot create its directory {path.parent} ({exc.strerror}); {_STATE_HINT}"
        ) from None


def _refuse_access_error(path: Path, exc: Exception) -> None:
    """ConfigError when `exc` says the file cannot be opened or written (rather than that it is damaged)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _ACCESS_ERROR_CODES:
        raise ConfigError(f"{path}: cannot open or write the state cache ({exc}); {_STATE_HINT}") from None


def _ensure_tables(db: sqlite3.Connection, path: Path) -> None:
    """Create the `_TABLES` when missing; drop and recreate one whose columns are not the expected ones."""
    for table, (create, columns) in _TABLES.items():
        found = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        if found == columns:
            continue
        if found:
            log.warning("%s: table %s has unexpected columns; recreating it empty (rebuilt by later runs)", path, table)
            db.execute(f"DROP TABLE {table}")
        db.execute(create)


class _ForeignCache(Exception):
    pass


def _audit_key(destination: str) -> str:
    """The `meta` key of the last audit of `destination`."""
    return "audit " + destination
