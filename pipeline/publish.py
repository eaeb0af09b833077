"""The only stage that writes to the destination: upload plan, DESIGN section 4's order, retention.

Order: content (package torrents, metalinks, signing keys) -> immutable index objects (create-only)
-> `latest.asc` (compare-and-swap on the ETag the run started from; create-only for the first) ->
listings -> deletion of objects unreferenced for longer than `retention` -> the manifest.

The upload plan comes from a key -> SHA-256 manifest kept in the destination (S3 listings carry no
user metadata, and a HEAD per object does not scale). The manifest is never trusted blindly: an
entry counts only while its ETag and size still match the destination's listing; anything else is
compared by `Storage.same_content` (local: the bytes; S3: the single-part ETag is an MD5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.errors import StorageError
from pipeline.model import Artifact, NullProgress, Progress
from pipeline.objects import NO_CACHE
from pipeline.storage import ObjectInfo, Storage

log = logging.getLogger(__name__)

MANIFEST_KEY = ".mirrorseed/manifest.json"
# Written last: the SHA-256 of the `latest.asc` whose publication (listings, retention) is complete.
COMPLETE_KEY = ".mirrorseed/complete"
MANIFEST_FORMAT = "mirrorseed-manifest/1"
# Key prefixes this tool owns in the destination; retention never deletes anything else.
OWNED_PREFIXES = ("torrents/", "metalinks/", "index/", "browse/", "mirrors/")
FAULT_ENV = "MIRRORSEED_FAULT"


@dataclass(frozen=True)
class Publication:
    """Everything one run publishes, grouped by how it must be written.

    `referenced` is every key the new publication reaches (including unchanged objects not re-sent).
    """

    content: tuple[Artifact, ...]
    immutable: tuple[Artifact, ...]
    pointer: Artifact | None  # None: finish the publication the current pointer names (listings, retention)
    pointer_etag: str | None
    listings: tuple[Artifact, ...]
    referenced: frozenset[str]
    pointer_sha256: str  # of the pointer bytes that are current once this publication is complete


@dataclass(frozen=True)
class UploadPlan:
    put: tuple[Artifact, ...]
    skip: tuple[str, ...]
    delete: tuple[str, ...]

    @property
    def put_bytes(self) -> int:
        return sum(len(a.data) for a in self.put)


@dataclass(frozen=True)
class PublishResult:
    plan: UploadPlan
    written: bool


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    etag: str
    size: int
    referenced: float  # epoch seconds: last time a committed publication reached this key


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(storage: Storage, listing: dict[str, ObjectInfo]) -> dict[str, ManifestEntry]:
    """The manifest's entries that still agree with the listing (same ETag and size); others are dropped."""
    stored = storage.get(MANIFEST_KEY)
    if stored is None:
        return {}
    try:
        doc = json.loads(stored.data)
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        entries = {
            key: ManifestEntry(str(v["sha256"]), str(v["etag"]), int(v["size"]), float(v["referenced"]))
            for key, v in doc["objects"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable manifest (%s); rebuilding it from the listing", MANIFEST_KEY, exc)
        return {}
    trusted = {
        key: entry
        for key, entry in entries.items()
        if key in listing and listing[key].etag == entry.etag and listing[key].size == entry.size
    }
    if len(trusted) < len(entries):
        log.info("%s: %d stale entries ignored", MANIFEST_KEY, len(entries) - len(trusted))
    return trusted


def _plan_group(
    storage: Storage,
    artifacts: Sequence[Artifact],
    listing: dict[str, ObjectInfo],
    manifest: dict[str, ManifestEntry],
) -> tuple[list[Artifact], list[str]]:
    put: list[Artifact] = []
    skip: list[str] = []
    for artifact in artifacts:
        info = listing.get(artifact.key)
        known = manifest.get(artifact.key)
        if info is not None and (
            (known is not None and known.sha256 == _sha256(artifact.data))
            or (known is None and storage.same_content(info, artifact.data))
        ):
            skip.append(artifact.key)
        else:
            put.append(artifact)
    return put, skip


def _expired(
    listing: dict[str, ObjectInfo],
    manifest: dict[str, ManifestEntry],
    referenced: frozenset[str],
    cutoff: float,
) -> list[str]:
    """Owned keys no publication has reached since `cutoff` (unknown keys: by their modification time)."""
    doomed: list[str] = []
    for key, info in listing.items():
        if key in referenced or not key.startswith(OWNED_PREFIXES):
            continue
        entry = manifest.get(key)
        last = entry.referenced if entry is not None else info.modified
        if last is not None and last < cutoff:
            doomed.append(key)
    return sorted(doomed)


def is_complete(storage: Storage, pointer_sha256: str) -> bool:
    """Whether the last run that committed this pointer also finished its listings and retention."""
    marker = storage.get(COMPLETE_KEY)
    return marker is not None and marker.data.strip() == pointer_sha256.encode()


def fault_point(name: str, count: int = 0) -> None:
    """Tests arm MIRRORSEED_FAULT=<name>[:<count>] to have the process killed (SIGKILL) right here."""
    armed = os.environ.get(FAULT_ENV)
    if not armed:
        return
    point, _, at = armed.partition(":")
    if point == name and (not at or int(at) == count):
        log.warning("fault point %s reached: killing the process", armed)
        os.kill(os.getpid(), signal.SIGKILL)


def publish(
    storage: Storage,
    publication: Publication,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    retention: timedelta = timedelta(days=14),
    use_cas: bool = True,
) -> PublishResult:
    """Write `publication` in order (or, with dry_run, only plan it)."""
    progress = progress or NullProgress()
    now = now or datetime.now(UTC)
    listing = {info.key: info for info in storage.list()}
    manifest = load_manifest(storage, listing)

    content_put, content_skip = _plan_group(storage, publication.content, listing, manifest)
    index_put, index_skip = _plan_group(storage, publication.immutable, listing, manifest)
    for artifact in index_put:
        if artifact.key in listing:
            raise StorageError(
                f"{artifact.key}: exists in the destination with different bytes and index objects are never "
                "overwritten; another publisher uses this destination, or its previous pointer was lost"
            )
    listing_put, listing_skip = _plan_group(storage, publication.listings, listing, manifest)
    delete = _expired(listing, manifest, publication.referenced, (now - retention).timestamp())
    pointer = publication.pointer
    plan = UploadPlan(
        put=(*content_put, *index_put, *((pointer,) if pointer else ()), *listing_put),
        skip=(*content_skip, *index_skip, *listing_skip),
        delete=tuple(delete),
    )
    if dry_run:
        return PublishResult(plan, written=False)

    written: dict[str, ObjectInfo] = {}
    skipped = frozenset(plan.skip)
    progress.start("publish", total=len(plan.put), unit="objects")
    for batch in _batches(content_put, armed=bool(os.environ.get(FAULT_ENV))):
        for info in storage.put_many(batch):
            written[info.key] = info
        progress.advance(len(batch), sum(len(a.data) for a in batch))
        fault_point("content", len(written))
    _write_manifest(storage, listing, manifest, written, publication, now, skipped=skipped, referenced_now=False)

    fault_point("index")
    for artifact in index_put:
        written[artifact.key] = storage.put_conditional(
            artifact.key, artifact.data, content_type=artifact.content_type, cache_control=artifact.cache_control,
            if_match=None,
        )  # fmt: skip
        progress.advance(1, len(artifact.data))

    fault_point("pointer")
    if pointer is not None and use_cas:
        written[pointer.key] = storage.put_conditional(
            pointer.key, pointer.data, content_type=pointer.content_type, cache_control=pointer.cache_control,
            if_match=publication.pointer_etag,
        )  # fmt: skip
    elif pointer is not None:
        written[pointer.key] = storage.put(
            pointer.key, pointer.data, content_type=pointer.content_type, cache_control=pointer.cache_control
        )
    if pointer is not None:
        progress.advance(1, len(pointer.data))
        log.info("committed %s", pointer.key)

    fault_point("listings")
    for info in storage.put_many(listing_put):
        written[info.key] = info
    progress.advance(len(listing_put), sum(len(a.data) for a in listing_put))

    fault_point("delete")
    for key in delete:
        storage.delete(key)
        listing.pop(key, None)
    _write_manifest(storage, listing, manifest, written, publication, now, skipped=skipped, referenced_now=True)
    storage.put(
        COMPLETE_KEY, publication.pointer_sha256.encode() + b"\n", content_type="text/plain", cache_control=NO_CACHE
    )
    progress.finish()
    return PublishResult(plan, written=True)


def _batches(artifacts: Sequence[Artifact], *, armed: bool, size: int = 256) -> Iterable[list[Artifact]]:
    step = 1 if armed else size  # one object at a time when a fault point may fire after the N-th
    for start in range(0, len(artifacts), step):
        yield list(artifacts[start : start + step])


def _write_manifest(
    storage: Storage,
    listing: dict[str, ObjectInfo],
    manifest: dict[str, ManifestEntry],
    written: dict[str, ObjectInfo],
    publication: Publication,
    now: datetime,
    *,
    skipped: frozenset[str],
    referenced_now: bool,
) -> None:
    """Record key -> SHA-256 of what the destination holds; `referenced_now` once the pointer is committed."""
    sent = (*publication.content, *publication.immutable, *publication.listings)
    data_by_key = {a.key: a.data for a in (*sent, *((publication.pointer,) if publication.pointer else ()))}
    stamp = now.timestamp()
    objects: dict[str, dict[str, object]] = {}
    for key, info in {**listing, **written}.items():
        if key == MANIFEST_KEY:
            continue
        old = manifest.get(key)
        if key in written:
            sha256 = _sha256(data_by_key[key])
        elif old is not None:
            sha256 = old.sha256
        elif key in skipped:  # listed, not in the manifest, and the plan found it equal to our bytes
            sha256 = _sha256(data_by_key[key])
        else:
            continue  # unknown content: the next run compares it by same_content
        if referenced_now and key in publication.referenced:
            referenced = stamp
        elif old is not None:
            referenced = old.referenced
        else:
            referenced = info.modified if info.modified is not None else stamp
        objects[key] = {"sha256": sha256, "etag": info.etag, "size": info.size, "referenced": referenced}
    body = json.dumps({"format": MANIFEST_FORMAT, "objects": objects}, sort_keys=True, separators=(",", ":"))
    storage.put(MANIFEST_KEY, body.encode(), content_type="application/json", cache_control=NO_CACHE)
