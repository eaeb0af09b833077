"""Typed frozen values passed between the stages. No stage shares mutable state with another."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

SnapshotFormat = str  # a registered format's name (pipeline.snapshot._ADAPTERS)


class Progress(Protocol):
    """Progress sink injected into long stages; library code never prints."""

    def start(self, stage: str, total: int, unit: str = "files") -> None: ...

    def advance(self, count: int = 1, nbytes: int = 0) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """A Progress that reports nothing (default for library calls and tests)."""

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        return None

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        return None

    def finish(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SignatureRef:
    """A detached upstream signature that ships beside a package (Arch `.sig`)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the snapshot to publish.

    `path` is the repo path: relative, '/'-separated, valid UTF-8 and NFC; the mirrors serve it at
    `<base>/<path>`. `source` is the absolute on-disk file to read (inside the snapshot root; a symlink
    inside the root is already resolved to its target here), a str: a Path would cost ~250 bytes more a
    file. `expected_size`/`expected_sha256` come from the repository's own metadata (Debian `Packages`),
    None for flat snapshots.
    """

    path: str
    source: str
    size: int
    mtime_ns: int
    dev: int = 0
    inode: int = 0
    expected_sha256: str | None = None
    name: str | None = None
    version: str | None = None
    arch: str | None = None
    description: str | None = None
    signature: SignatureRef | None = None
    # the index shards that list it, when the repository's metadata says (Debian: the suites,
    # components and architectures whose Packages list it); () means "by its path" (pipeline.shards)
    shards: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """What a scan found: the files to publish, sorted by path, unique (a `pipeline.filetable.FileTable`)."""

    root: Path
    format: SnapshotFormat
    files: Sequence[FileEntry]
    suites: tuple[str, ...] = ()  # Debian suites / Arch repos scanned
    components: tuple[str, ...] = ()  # Debian components scanned
    architectures: tuple[str, ...] = ()  # architectures scanned
    timestamp: datetime | None = None  # when upstream produced it (Debian Release Date, Arch lastsync), aware UTC


@dataclass(frozen=True, slots=True)
class HashedFile:
    """A file hashed in one read: whole-file SHA-256 and the v1 piece SHA-1s for `piece_size`.

    `pieces` is the concatenation of the 20-byte SHA-1 digests (b"" for a zero-length file).
    """

    entry: FileEntry
    sha256: str
    piece_size: int
    pieces: bytes


@dataclass(frozen=True, slots=True)
class FileDigest:
    """What a package record needs of a file's content, without its piece hashes.

    From this run's hashing or from the state cache; `infohash` is None for a zero-length file.
    """

    entry: FileEntry
    sha256: str
    piece_size: int
    infohash: str | None


@dataclass(frozen=True, slots=True)
class Artifact:
    """One object to publish: destination key (relative, '/'-separated), bytes and HTTP headers."""

    key: str
    data: bytes
    content_type: str
    cache_control: str


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """One package as the index lists it (DESIGN section 5)."""

    path: str
    size: int
    sha256: str
    infohash: str | None
    piece_size: int | None
    torrent: str | None
    metalink: str
    magnet: str | None
    name: str | None = None
    version: str | None = None
    arch: str | None = None
    signature: SignatureRef | None = None
    description: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "infohash": self.infohash,
            "piece_size": self.piece_size,
            "torrent": self.torrent,
            "metalink": self.metalink,
            "magnet": self.magnet,
            "signature": None
            if self.signature is None
            else {"path": self.signature.path, "size": self.signature.size, "sha256": self.signature.sha256},
        }
        for key in ("name", "version", "arch"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        return doc

    @staticmethod
    def from_json(doc: dict[str, Any]) -> PackageRecord:
        sig = doc.get("signature")
        return PackageRecord(
            path=doc["path"],
            size=doc["size"],
            sha256=doc["sha256"],
            infohash=doc["infohash"],
            piece_size=doc["piece_size"],
            torrent=doc["torrent"],
            metalink=doc["metalink"],
            magnet=doc["magnet"],
            name=doc.get("name"),
            version=doc.get("version"),
            arch=doc.get("arch"),
            signature=None if sig is None else SignatureRef(sig["path"], sig["size"], sig["sha256"]),
        )


@dataclass(frozen=True)
class BuiltPackages:
    """Output of the build stage: one record per package and the torrents/metalinks to publish."""

    records: tuple[PackageRecord, ...]
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class DeltaRef:
    """A shard's delta from the previous publication's shard of the same name (docs/sharded-index.md):
    `zstd -d --patch-from=<that shard's JSON>` of the object at `path` gives this shard's JSON."""

    from_sha256: str  # the SHA-256 of the previous shard's uncompressed JSON
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"from_sha256": self.from_sha256, "path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ShardRef:
    """The pointer's description of one part of one shard of the index (docs/sharded-index.md): a shard
    whose JSON would pass `pipeline.index.PART_MAX_BYTES` is published in parts 0, 1, ..., each a whole
    shard document of the next run of its packages, with its own torrent and delta."""

    name: str
    path: str
    size: int
    sha256: str
    uncompressed_size: int
    uncompressed_sha256: str
    packages: int
    torrent: str
    infohash: str
    delta: DeltaRef | None = None
    part: int = 0

    @property
    def label(self) -> str:
        """How messages name it: `bookworm/main/amd64` for a first part, `bookworm/main/amd64 part 2` after."""
        return self.name if self.part == 0 else f"{self.name} part {self.part}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "part": self.part,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "uncompressed_size": self.uncompressed_size,
            "uncompressed_sha256": self.uncompressed_sha256,
            "packages": self.packages,
            "torrent": self.torrent,
            "infohash": self.infohash,
            "delta": None if self.delta is None else self.delta.to_json(),
        }


@dataclass(frozen=True)
class Pointer:
    """The signed pointer payload (docs/sharded-index.md): which shards make the current index, until when.

    `legacy_keys` is set only for a `mirrorseed-pointer/1` read back from a destination that an earlier
    version published: the keys of its one whole index (the next run replaces it with shards). `outdated`:
    read from a pointer of an earlier format (1 or 2): the next run publishes it again in the current one.
    """

    repo: str
    sequence: int
    generated: str
    expires: str
    shards: tuple[ShardRef, ...]
    legacy_keys: tuple[str, ...] = ()
    outdated: bool = False

    @property
    def index_id(self) -> str:
        """The SHA-256 of the shard list: what identifies this publication's index (its content)."""
        listed = [shard.to_json() for shard in self.shards] + list(self.legacy_keys)
        return hashlib.sha256(json.dumps(listed, sort_keys=True).encode("utf-8")).hexdigest()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every index object this pointer reaches: each shard, its torrent and its delta."""
        keys: list[str] = list(self.legacy_keys)
        for shard in self.shards:
            keys += [shard.path, shard.torrent] + ([shard.delta.path] if shard.delta else [])
        return tuple(keys)

    @property
    def shard_names(self) -> tuple[str, ...]:
        """Each shard's name once, in order (a shard in parts has an entry a part)."""
        return tuple(dict.fromkeys(shard.name for shard in self.shards))

    @property
    def infohashes(self) -> tuple[str, ...]:
        """The shards' torrents' infohashes, in shard order."""
        return tuple(shard.infohash for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        assert not self.outdated, "a pointer of an earlier format is read, never written"
        return {
            "format": "mirrorseed-pointer/3",
            "repo": self.repo,
            "sequence": self.sequence,
            "generated": self.generated,
            "expires": self.expires,
            "shards": [shard.to_json() for shard in self.shards],
        }


MirrorHealth = Literal["ok", "stale", "partial", "no-range", "down"]


@dataclass(frozen=True)
class MirrorStatus:
    """One mirror as the health probes found it in this run (listings show it; metalinks use it)."""

    url: str
    country: str | None
    continent: str | None
    name: str | None
    contact: str | None
    bandwidth: str | None
    priority: int
    status: MirrorHealth
    last_sync: str | None  # RFC 3339 UTC, from the mirror's last-sync file
    lag_seconds: int | None  # how far the mirror's last sync is behind the snapshot; None if unknown
    range_ok: bool | None  # None: not determined (e.g. down)
    sampled: int  # files probed in this run
    sampled_ok: int  # of those, how many held our exact bytes
    verified_files: int  # files of the snapshot this mirror is known to hold exactly
    total_files: int
    webseed: bool  # named in torrent url-lists in this publication
    detail: str  # one line: why this status


@dataclass(frozen=True)
class KeyInfo:
    """The signing key as checked before signing."""

    fingerprint: str
    uids: tuple[str, ...]
    expires: int | None  # epoch seconds, None = never
