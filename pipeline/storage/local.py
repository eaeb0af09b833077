"""LocalStorage: a folder. A key that holds a file is replaced atomically (temp file + rename); a new key is
created in place; the conditional put holds a lock file."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import PublishConflictError, StorageError
from pipeline.model import Artifact
from pipeline.storage import ObjectInfo, StoredObject, check_key, copy_chunk
from pipeline.storage.background import BackgroundWrite, background_writes

LOCK_NAME = ".mirrorseed.lock"
_TEMP_NAMES = itertools.count()  # with the pid: a temp name no other writer uses


# Directories remembered as made, at most: the bench's 20,000 packages put their objects in ~42,000
# directories (torrents/, metalinks/, browse/), 4 MB of names; forgetting one costs a makedirs at most.
MADE_MAX = 4096
CHUNK = 1 << 20  # bytes read at a time by put_file
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _etag(status: os.stat_result) -> str:
    # Every write is a new file (created in place, or renamed into place), so (inode, mtime, size) changes
    # with every write.
    return f"{status.st_ino:x}-{status.st_mtime_ns:x}-{status.st_size:x}"


class LocalStorage:
    """Objects are files under `root`; the ETag is derived from the file's stat (cheap to list)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self._root = str(self.root)
        self._made: set[str] = set()  # directories this instance created or found
        for parent in (self.root, *self.root.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise StorageError(
                        f"{parent}: is not a directory, so the destination {self.root} cannot be created; "
                        "pass a --dest under a directory"
                    )
                break

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                status = os.fstat(handle.fileno())
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"{path}: cannot read ({exc.strerror})") from exc
        return StoredObject(ObjectInfo(key, len(data), _etag(status), status.st_mtime), data)

    def get_file(self, key: str, file: BinaryIO) -> ObjectInfo | None:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"{path}: cannot read ({exc.strerror})") from exc
        with handle:
            try:
                status = os.fstat(handle.fileno())
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    copy_chunk(file, chunk)  # its own error when the copy cannot be written
            except OSError as exc:
                raise StorageError(f"{path}: cannot read ({exc.strerror})") from exc
        return ObjectInfo(key, status.st_size, _etag(status), status.st_mtime)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            status = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"{self._path(key)}: cannot stat ({exc.strerror})") from exc
        return ObjectInfo(key, status.st_size, _etag(status), status.st_mtime)

    def same_content(self, info: ObjectInfo, data: bytes) -> bool:
        if info.size != len(data):
            return False
        stored = self.get(info.key)
        return stored is not None and stored.info.etag == info.etag and stored.data == data

    def put(self, key: str, data: bytes, *, content_type: str, cache_control: str) -> ObjectInfo:
        return self._write(key, (data,), durable=False)

    def put_file(self, key: str, file: BinaryIO, *, content_type: str, cache_control: str) -> ObjectInfo:
        file.seek(0)
        return self._write(key, iter(lambda: file.read(CHUNK), b""), durable=False)

    def _write(self, key: str, chunks: Iterable[bytes], *, durable: bool) -> ObjectInfo:
        """A key that holds a file: temp file + rename, so readers see the old or the new file, never a partial
        one. A new key (most of a full build's two and a half million objects at a million files) is created in
        place (O_EXCL: never through a symlink, never over a file another writer made): the rename and the temp
        name's entry cost a third to a half of a small object's write on a disk, flushed. Writes stay on one
        thread: the filesystem serializes creates (two writers took 2.4x as long). No publication names a new
        package object before its write ends (the pointer that reaches it comes after); a new browse page can be
        read partly written while it is written, since its parent page goes first. A killed run may leave one
        partly written: only completed writes enter the manifest, and a key the manifest lacks is compared with
        the run's bytes (at an audit, which a killed run does not record, or when finishing a publication left
        incomplete) or else written again, so the next run that publishes it replaces it.

        Content and listings are not fsynced one by one (thousands of small files: that would dominate a
        run); a durable write (index, pointer) always goes through a temp file, and first flushes everything
        written before it, then itself, so a power loss never leaves a pointer naming objects that did not
        reach the disk."""
        # Strings, not Paths: a run writes a million objects at scale, and pathlib costs ~25 us each.
        path = self._root + "/" + check_key(key)
        parent, _, name = path.rpartition("/")
        try:
            if parent not in self._made:  # one mkdir per directory per run, not per object
                _make_dirs(parent)
                if len(self._made) >= MADE_MAX:  # objects come directory by directory: recent ones suffice
                    self._made.clear()
                self._made.add(parent)
            if durable:
                os.sync()
            fd, tmp = -1, None
            if not durable:
                with contextlib.suppress(FileExistsError):
                    fd = os.open(path, _CREATE, 0o644)
            if fd < 0:
                tmp = f"{parent}/.{name}.{os.getpid()}.{next(_TEMP_NAMES)}.tmp"
                fd = os.open(tmp, _CREATE, 0o644)
            try:
                try:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                    if durable:
                        os.fsync(fd)
                    status = os.fstat(fd)  # the rename keeps inode and mtime: this is the object's ETag
                    if status.st_mode & 0o777 != 0o644:
                        os.fchmod(fd, 0o644)  # whatever the umask: the web server reads it (mtime is kept)
                finally:
                    os.close(fd)
                if tmp is not None:
                    os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path if tmp is None else tmp)  # created here: the key is absent again
                raise
        except OSError as exc:
            raise StorageError(f"{path}: cannot write ({exc.strerror}); check the destination") from exc
        return ObjectInfo(key, status.st_size, _etag(status), status.st_mtime)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / LOCK_NAME).open("a")
        except OSError as exc:
            raise StorageError(f"{self.root / LOCK_NAME}: cannot open lock file ({exc.strerror})") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def put_conditional(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, if_match: str | None
    ) -> ObjectInfo:
        with self._lock():
            current = self.head(key)
            if if_match is None and current is not None:
                raise PublishConflictError(f"{key}: already exists in {self.root}; another run published it first")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PublishConflictError(
                    f"{key}: changed in {self.root} since this run started; another run published first, run again"
                )
            return self._write(key, (data,), durable=True)

    def write_in_background(self, spool_fd: int) -> AbstractContextManager[BackgroundWrite]:
        """New objects written by a child process (`pipeline.storage.background`) while this one goes on."""
        return background_writes(self.root, spool_fd)

    def put_many(self, artifacts: Sequence[Artifact]) -> list[ObjectInfo]:
        return [self.put(a.key, a.data, content_type=a.content_type, cache_control=a.cache_control) for a in artifacts]

    def _objects(self, prefix: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(key, directory entry) of every object under `prefix`: one scandir per directory, no stat; not the
        lock file, temp files of a write in progress, or what a symlink to a directory holds."""
        if not self.root.is_dir():
            return
        pending: list[tuple[str, str]] = [(self._root, "")]  # (directory, its key prefix)
        while pending:
            directory, base = pending.pop()
            try:
                with os.scandir(directory) as iterator:
                    entries = list(iterator)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = entry.name
                key = base + name
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        pending.append((entry.path, key + "/"))
                    continue
                if entry.is_dir():
                    continue  # a symlink to a directory: not an object, and not followed
                if name == LOCK_NAME or (name.startswith(".") and name.endswith(".tmp")):
                    continue  # the lock file, and temp files of a write in progress
                if key.startswith(prefix):
                    yield key, entry

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under `prefix`, sorted by key: one scandir per directory and one stat per file
        (a destination of a whole Debian archive holds ~150,000 objects)."""
        found: list[ObjectInfo] = []
        for key, entry in self._objects(prefix):
            try:
                status = entry.stat()
            except FileNotFoundError:
                continue
            found.append(ObjectInfo(key, status.st_size, _etag(status), status.st_mtime))
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"{self._path(key)}: cannot delete ({exc.strerror})") from exc


def _make_dirs(directory: str) -> None:
    """`os.makedirs(directory, exist_ok=True)` that tries the mkdir first: a run makes a directory for every
    directory of the snapshot in three trees (torrents/, metalinks/, browse/), and `makedirs` stats each one's
    parent first (~1 s a 100,000 directories)."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
