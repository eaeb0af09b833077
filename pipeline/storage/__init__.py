"""The narrow Storage protocol and `open_storage(url)`, which picks an implementation by URL scheme."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from pipeline.errors import ConfigError, StorageError
from pipeline.model import Artifact


@dataclass(frozen=True)
class S3Config:
    """How to reach an S3-compatible store (built from the s3_* settings where a run starts; credentials
    come from boto3's standard chain, never from here)."""

    endpoint_url: str | None
    region: str | None
    addressing_style: str  # auto | path | virtual
    profile: str | None
    max_attempts: int  # per request, the first included
    connect_timeout: int
    read_timeout: int
    upload_concurrency: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing tells of one object: key, size, ETag (opaque; changes with every write) and mtime."""

    key: str
    size: int
    etag: str
    modified: float | None = None  # epoch seconds


@dataclass(frozen=True)
class StoredObject:
    info: ObjectInfo
    data: bytes


class Storage(Protocol):
    """Put/get/head/list/delete and one conditional put; keys are relative '/'-separated paths."""

    @property
    def url(self) -> str: ...

    def get(self, key: str) -> StoredObject | None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def get_file(self, key: str, file: BinaryIO) -> ObjectInfo | None:
        """Write the object's bytes into `file` (at its position), in chunks; its info, None when missing."""
        ...

    def put(self, key: str, data: bytes, *, content_type: str, cache_control: str) -> ObjectInfo: ...

    def put_file(self, key: str, file: BinaryIO, *, content_type: str, cache_control: str) -> ObjectInfo:
        """An unconditional put of everything `file` holds (from its start), read in chunks, never whole: the
        manifest of a million-file destination is ~150 MB."""
        ...

    def put_conditional(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, if_match: str | None
    ) -> ObjectInfo:
        """Write only if the object's ETag is still `if_match` (None: only if the key does not exist).

        Raises PublishConflictError when the condition does not hold.
        """
        ...

    def put_many(self, artifacts: Sequence[Artifact]) -> list[ObjectInfo]:
        """Unconditional puts of many objects (S3: a bounded pool of parallel uploads), infos in input order."""
        ...

    def same_content(self, info: ObjectInfo, data: bytes) -> bool:
        """Whether the stored object `info` (from a listing) holds exactly `data`, without trusting a manifest.

        Local: compare the file; S3: the ETag is the MD5 of a single-part upload."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...


def copy_chunk(file: BinaryIO, chunk: bytes) -> None:
    """Write a chunk read from storage into a local temporary file (get_file); one line when TMPDIR is full."""
    try:
        file.write(chunk)
    except OSError as exc:
        where = tempfile.gettempdir()
        raise StorageError(f"{where}: cannot keep a copy ({exc.strerror}); free space in TMPDIR") from exc


def check_key(key: str) -> str:
    """Refuse keys that could escape the destination or be ambiguous."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"{key!r}: not a valid object key (relative, '/'-separated, no '..')")
    return key


def open_storage(url: str, s3: S3Config | None = None) -> Storage:
    """`./public`, `/abs/dir`, `file:///dir` -> LocalStorage; `s3://bucket/prefix` -> S3Storage (boto3,
    configured by `s3` and the standard AWS credential chain)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        from pipeline.storage.local import LocalStorage

        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        return LocalStorage(path)
    if parsed.scheme == "s3":
        from pipeline.storage.s3 import S3Storage  # lazy: boto3 only for S3 destinations

        if s3 is None:
            raise ConfigError(f"{url}: an S3 destination needs its S3 settings (s3_endpoint_url, s3_region …)")
        return S3Storage.from_url(url, s3)
    raise ConfigError(f"{url}: unknown destination scheme {parsed.scheme!r}; use a path, file:///dir or s3://")
