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
import heapq
import io
import itertools
import logging
import math
import os
import shutil
import signal
import struct
from array import array
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence, Set
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring as _json_string  # what json.dumps(ensure_ascii=False) uses
from typing import Any, BinaryIO, overload

import zstandard

from pipeline.errors import StorageError
from pipeline.jsondoc import loads_strict
from pipeline.manifest import ManifestEntry, ManifestTable, ManifestTableBuilder, UnsortedError, manifest_table
from pipeline.model import Artifact, NullProgress, Progress
from pipeline.objects import (
    COMPLETE_KEY,
    LISTING_PREFIXES,
    MANIFEST_KEY,
    NO_CACHE,
    OLD_MANIFEST_KEYS,
    OWNED_PREFIXES,
)
from pipeline.pages import PageDigests
from pipeline.scratch import FixedColumn, temporary_file
from pipeline.sequences import ItemEquality, sorted_by_key
from pipeline.spool import Spool, SpoolRefs
from pipeline.storage import ObjectInfo, Storage
from pipeline.storage.background import BackgroundWrite, WritesInBackground, Written
from pipeline.strcolumn import StringColumn

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "mirrorseed-manifest/2"
MANIFEST_BATCH = 4096  # manifest lines parsed at once (reading), formatted before one write to zstd (writing)
FAULT_ENV = "MIRRORSEED_FAULT"
# New content objects worth a child process that writes them while the run renders (it starts in ~70 ms;
# a new object takes ~30 us on tmpfs, ~60 us on ext4)
EARLY_MIN = 2000


@dataclass(frozen=True)
class Publication:
    """Everything one run publishes, grouped by how it must be written.

    The bytes of content, index objects and listings wait in `spool`; `referenced` is every key the
    new publication reaches (including unchanged objects neither rebuilt nor re-sent).
    """

    spool: Spool
    content: SpoolRefs
    immutable: SpoolRefs
    pointer: Artifact | None  # None: finish the publication the current pointer names (listings, retention)
    pointer_etag: str | None
    listings: SpoolRefs
    referenced: Container[str]
    pointer_sha256: str  # of the pointer bytes that are current once this publication is complete
    # Pages not rendered because their inputs did not change and the destination holds them as published:
    # each key with the SHA-256 of the published copy.
    reused: PageDigests = field(default_factory=PageDigests)


@dataclass(frozen=True)
class UploadPlan:
    put: Sequence[str]  # keys, in write order
    put_bytes: int
    skip: tuple[str, ...]  # compared with the destination and found equal
    delete: tuple[str, ...]
    reused: int = 0  # pages not rendered, which the destination holds as published (not compared again)


class PlannedKeys(ItemEquality, Sequence[str]):
    """The keys a plan writes, in write order: spooled objects, then the pointer, then more spooled objects.
    Each key is read from the spool when asked; a tuple of them costs ~100 bytes a key (two and a half
    million keys in a full build of a million packages)."""

    __slots__ = ("_after", "_before", "_pointer")

    def __init__(self, before: SpoolRefs, pointer: str | None, after: SpoolRefs) -> None:
        self._before, self._after = before, after
        self._pointer = () if pointer is None else (pointer,)

    def __len__(self) -> int:
        return len(self._before) + len(self._pointer) + len(self._after)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...
    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        at = range(len(self))[index]  # IndexError past the end; a negative index counts from it
        if at < len(self._before):
            return next(self._before[at : at + 1].keys())
        at -= len(self._before)
        if at < len(self._pointer):
            return self._pointer[at]
        at -= len(self._pointer)
        return next(self._after[at : at + 1].keys())

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(self._before.keys(), self._pointer, self._after.keys())

    def __repr__(self) -> str:
        return f"PlannedKeys({list(self)!r})"


@dataclass(frozen=True)
class PublishResult:
    plan: UploadPlan
    written: bool


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(
    storage: Storage, listing: Mapping[str, ObjectInfo] | None, altered: set[str] | None = None
) -> ManifestTable:
    """The manifest's entries that still agree with the listing (same ETag and size); others are dropped
    (and, with `altered`, the listed keys among them collected there: changed since this tool wrote them).
    Without a listing, every entry is taken as it stands (a run that audits nothing).

    One JSON array a line after the format line: `[key, sha256, etag, size, referenced]`, parsed
    `MANIFEST_BATCH` lines at a time as one JSON array of them (a whole-document JSON of 130,000 objects
    would cost ~100 MB to parse; one parse a line costs twice the time). Kept in columns (`ManifestTable`).
    """
    with temporary_file(f"a file for {MANIFEST_KEY}") as stored:  # ~150 MB at a million files: read from disk as parsed
        if storage.get_file(MANIFEST_KEY, stored) is None:
            return ManifestTableBuilder().build()
        read = [0]  # entries read
        try:
            try:
                builder = ManifestTableBuilder()
                for row in _trusted(stored, listing, altered, read):
                    builder.add(*row)
                trusted = builder.build()
            except UnsortedError:  # not as this tool writes it (keys in order): sorted first
                read = [0]
                rows = _trusted(stored, listing, altered, read)
                trusted = manifest_table((row[0], ManifestEntry(*row[1:])) for row in rows)
        except (ValueError, TypeError, zstandard.ZstdError) as exc:
            log.warning("%s: unreadable manifest (%s); rebuilding it from the listing", MANIFEST_KEY, exc)
            return ManifestTableBuilder().build()
    if len(trusted) < read[0]:
        log.info("%s: %d stale entries ignored", MANIFEST_KEY, read[0] - len(trusted))
    return trusted


def _trusted(
    stored: BinaryIO, listing: Mapping[str, ObjectInfo] | None, altered: set[str] | None, read: list[int]
) -> Iterator[tuple[str, str, str, int, float]]:
    """(key, sha256, etag, size, referenced) of each entry of the manifest in `stored` (read from its start)
    that agrees with `listing` (every entry without one), in the manifest's order; `read[0]` counts the
    entries read."""
    stored.seek(0)
    lines = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(stored, closefd=False))
    found = lines.readline(100).rstrip(b"\n").decode("utf-8", "replace")
    if found != MANIFEST_FORMAT:
        raise ValueError(f"format {found[:60]!r}")
    for key, sha256, etag, size, referenced in _manifest_items(lines):
        read[0] += 1
        if listing is None:
            yield str(key), str(sha256), str(etag), int(size), float(referenced)
            continue
        info = listing.get(key)
        if info is not None and info.etag == etag and info.size == size:
            yield info.key, str(sha256), info.etag, info.size, float(referenced)
        elif info is not None and altered is not None:
            altered.add(info.key)


def _manifest_items(lines: Iterable[bytes]) -> Iterator[Any]:
    """The JSON value of each non-blank line, a batch of lines parsed at once; ValueError when a line does
    not hold exactly one value."""
    batch: list[bytes] = []
    for line in lines:
        if line.strip():
            batch.append(line)
        if len(batch) >= MANIFEST_BATCH:
            yield from _parse_batch(batch)
            batch = []
    yield from _parse_batch(batch)


def _parse_batch(batch: list[bytes]) -> list[Any]:
    values = loads_strict(b"[" + b",".join(batch) + b"]", what=MANIFEST_KEY) if batch else []
    if len(values) != len(batch):
        raise ValueError("a line holds other than one JSON value")
    return values


class _Holdings:
    """What both views of the destination answer: `holds(key)`, and from it the keys it lost."""

    def holds(self, key: str) -> bool:
        raise NotImplementedError

    def lost(self, keys: Iterable[str]) -> list[str]:
        """The keys among `keys` the destination no longer holds as written (deleted, or altered where the
        view can tell), sorted."""
        return sorted({key for key in keys if not self.holds(key)})


@dataclass(frozen=True)
class Destination(_Holdings):
    """What the destination holds when a run starts, read once: its listing, the manifest entries that
    still agree with it (same ETag and size as the listing shows), and the listed keys whose manifest
    entry disagrees (altered since this tool wrote them).

    Not `listed`: a run that audits nothing takes the manifest (what this tool wrote) for the listing; an
    object deleted or altered since shows at the next audit (README: "What a run guarantees")."""

    listing: Mapping[str, ObjectInfo]
    manifest: ManifestTable
    altered: frozenset[str] = frozenset()
    listed: bool = True

    def holds(self, key: str) -> bool:
        """Whether `key` is there and not known to be altered (a key written after the manifest of a
        killed run is listed but not in the manifest: it counts as held)."""
        return key in (self.listing if self.listed else self.manifest) and key not in self.altered

    def sha256(self, key: str) -> str | None:
        """The SHA-256 the manifest records for `key`, if the destination still holds it as written."""
        entry = self.manifest.get(key)
        return entry.sha256 if entry is not None else None


class _ManifestListing(Mapping[str, ObjectInfo]):
    """The manifest seen as a listing (sizes and ETags as written; no modification time): no second
    object per key at a million keys."""

    def __init__(self, manifest: ManifestTable) -> None:
        self._manifest = manifest

    def __getitem__(self, key: str) -> ObjectInfo:
        entry = self._manifest[key]
        return ObjectInfo(key, entry.size, entry.etag, None)

    def __contains__(self, key: object) -> bool:
        return key in self._manifest

    def __iter__(self) -> Iterator[str]:
        return iter(self._manifest)

    def __len__(self) -> int:
        return len(self._manifest)


def read_destination(storage: Storage, *, listed: bool = True) -> Destination:
    """List the destination and load its manifest (the one read of both in a run); not `listed`: the
    manifest alone, standing for the listing."""
    if not listed:
        manifest = load_manifest(storage, None)
        return Destination(_ManifestListing(manifest), manifest, listed=False)
    listing = {info.key: info for info in storage.list()}
    altered: set[str] = set()
    manifest = load_manifest(storage, listing, altered)
    return Destination(listing, manifest, frozenset(altered))


@dataclass(frozen=True)
class DestinationProbe(_Holdings):
    """The destination looked up key by key (a HEAD each): what a run that audits nothing asks of it, for the
    few objects that do not grow with the snapshot (the index, the signing keys, the clients, the top
    pages). Neither a listing nor the manifest is read: at 200,000 files a listing of the keys alone walks
    ~510,000 objects in ~330,000 directories, over twice the walk of the snapshot (README: "What a run
    guarantees"). A run that finds one gone reads the whole `Destination` before it writes."""

    storage: Storage

    def holds(self, key: str) -> bool:
        return self.storage.head(key) is not None


def _plan_group(
    storage: Storage,
    spool: Spool,
    refs: SpoolRefs,
    listing: Mapping[str, ObjectInfo],
    manifest: Mapping[str, ManifestEntry],
) -> tuple[SpoolRefs, list[str]]:
    put = array("I")  # 4 bytes an entry to write (a list of ints: ~36, 90 MB for a million files' objects)
    skip: list[str] = []
    for number in refs.numbers:
        key = spool.key(number)
        info = listing.get(key)
        if info is None:
            put.append(number)
            continue
        known = manifest.get(key)
        if known is not None:
            same = known.sha256 == spool.sha256(number)
        else:
            ref = spool.ref(number)
            same = info.size == ref.size and storage.same_content(info, spool.read(ref))
        if same:
            skip.append(key)
        else:
            put.append(number)
    return (refs if len(put) == len(refs) else spool.refs(put)), skip


def _heads(storage: Storage, keys: Iterable[str]) -> dict[str, ObjectInfo]:
    """The listing entries of `keys` the destination holds, one HEAD each."""
    return {info.key: info for info in map(storage.head, keys) if info is not None}


def _expired(
    listing: Mapping[str, ObjectInfo],
    manifest: Mapping[str, ManifestEntry],
    referenced: Container[str],
    cutoff: float,
) -> list[str]:
    """Owned keys no publication has reached since `cutoff` (unknown keys: by their modification time), and
    listings this publication does not have, at once."""
    doomed: list[str] = []
    for key in listing:
        if key in referenced or not key.startswith(OWNED_PREFIXES):
            continue
        if key.startswith(LISTING_PREFIXES):
            doomed.append(key)
            continue
        entry = manifest.get(key)
        last = entry.referenced if entry is not None else listing[key].modified
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


@dataclass(frozen=True)
class EarlyContent:
    """New content objects (spool entries `numbers`) that a child process writes while the run builds and
    renders, then the new browse pages (`pages`, in the order they were rendered) it writes while the run
    renders; `publish` takes what it wrote."""

    numbers: range | array[int]
    writer: BackgroundWrite
    pages: array[int] = field(default_factory=lambda: array("I"))


_SEND_EVERY = 512  # content objects spooled between two sends to the child


class NewContent:
    """Spools the run's content objects and has a child process write the new ones (keys the destination does
    not hold) as they are built, once they are `minimum` or more (`write_new_content`)."""

    def __init__(
        self,
        spool: Spool,
        listing: Container[str] | None,
        start: Callable[[], BackgroundWrite] | None,
        minimum: int,
    ) -> None:
        self._spool = spool
        self._listing = listing  # None: an empty destination, every key is new
        self._start = start  # None: nothing is written early
        self._minimum = minimum
        self._numbers = array("I")  # the new ones, in spool order
        self._sent = 0  # how many of them the child was sent (none while it has not started)
        self._writer: BackgroundWrite | None = None
        self._pages = array("I")  # the new browse pages, in the order they were rendered
        self._pages_sent = 0

    def spool_all(self, artifacts: Iterable[Artifact]) -> SpoolRefs:
        """`Spool.add_all`; the new objects among them go to the child every `_SEND_EVERY`."""
        spool = self._spool
        if self._start is None:
            return spool.add_all(artifacts)
        first = len(spool)
        it = iter(artifacts)
        while batch := spool.add_all(itertools.islice(it, _SEND_EVERY)):
            listing = self._listing
            numbers = batch.numbers
            self._numbers.extend(numbers if listing is None else (n for n in numbers if spool.key(n) not in listing))
            self._send()
        return SpoolRefs(spool, range(first, len(spool)))  # a range: no array of every entry

    def start(self) -> None:
        """Start the child now (it then takes every new object, however few)."""
        if self._writer is None and self._start is not None:
            self._writer = self._start()

    def _send(self) -> None:
        if self._writer is None:
            if self._start is None or len(self._numbers) < self._minimum:
                return
            self._writer = self._start()
        spool, unsent = self._spool, self._numbers[self._sent :]
        if not unsent:
            return
        spool.shared_fd()  # their bytes in the spool file first
        self._writer.send((spool.key(number), *spool.extent(number)) for number in unsent)
        self._sent = len(self._numbers)

    def add_page(self, number: int) -> None:
        """A browse page just spooled (spool entry `number`): the child writes it once the content is written,
        while the run renders the other pages, when its key is new (`publish` writes the others after the
        pointer). No publication reaches a new browse page before its pointer: the page that links to it is
        its parent directory's, which the destination holds (then written after the pointer) or which is new
        too. Nothing is sent when no child writes the content."""
        if self._writer is None:
            return
        listing = self._listing
        if listing is not None and self._spool.key(number) in listing:
            return
        self._pages.append(number)
        if len(self._pages) - self._pages_sent >= _SEND_EVERY:
            self._send_pages()

    def _send_pages(self) -> None:
        assert self._writer is not None
        spool, unsent = self._spool, self._pages[self._pages_sent :]
        spool.shared_fd()  # their bytes in the spool file first
        self._writer.send((spool.key(number), *spool.extent(number)) for number in unsent)
        self._pages_sent = len(self._pages)

    def pages_written_early(self, early: EarlyContent | None) -> EarlyContent | None:
        """`early` with the browse pages sent to the child (`add_page`), once every page is rendered; the child
        then flushes them to the disk while the run goes on to publish."""
        if early is None or not self._pages:
            return early
        if self._pages_sent < len(self._pages):
            self._send_pages()
        early.writer.flush()
        return replace(early, pages=self._pages)

    def written_early(self) -> EarlyContent | None:
        """What the child writes (no more content is sent once this is read: `publish` sends it the listing
        pages after the pointer); None: no child was started. The child flushes the content to the disk once
        written, while this run signs and renders: the pointer's durable write, which flushes everything written
        before it, then waits seconds less (~2 s at 60,000 files)."""
        if self._writer is None:
            return None
        self._start = None
        self._writer.flush()
        return EarlyContent(self._numbers, self._writer)


@contextmanager
def write_new_content(
    storage: Storage,
    spool: Spool,
    destination: Destination,
    *,
    dry_run: bool,
    minimum: int = EARLY_MIN,
    expected: int = 0,
) -> Iterator[NewContent]:
    """Spool the content through the `NewContent` yielded, which has a child process write the objects whose
    keys the destination does not hold as they are built, when the storage can (a local folder) and they are
    `minimum` or more: no publication reaches a new key before the pointer this run commits, so they may be
    written at any time before the index. An object that replaces another waits for `publish`, so a run that
    fails before it (a template error, say) changes nothing a publication reaches. Into an empty destination,
    where all of the `expected` objects will be new, the child starts at once (its Python start, ~0.08 s of the
    other core, then overlaps the first objects' building) when they are `minimum` or more. Nothing starts in a
    dry run, or with a fault point armed (the tests' kill points count one process's writes). The child is
    stopped (by its pid) when the block ends."""
    if dry_run or os.environ.get(FAULT_ENV) or not isinstance(storage, WritesInBackground):
        yield NewContent(spool, None, None, minimum)
        return
    listing = destination.listing
    with ExitStack() as stack:

        def start() -> BackgroundWrite:
            return stack.enter_context(storage.write_in_background(spool.shared_fd()))

        empty = not len(listing)
        new = NewContent(spool, None if empty else listing, start, minimum)
        if empty and expected >= minimum:
            new.start()
        yield new


def _without(spool: Spool, refs: SpoolRefs, taken: range | array[int]) -> SpoolRefs:
    """`refs` but the entries `taken` (some of them, in their order)."""
    kept = array("I")
    at = 0
    for number in refs.numbers:
        if at < len(taken) and taken[at] == number:
            at += 1
        else:
            kept.append(number)
    if at != len(taken):
        raise AssertionError("content written early that the upload plan does not put")
    return spool.refs(kept)


def _without_any(spool: Spool, refs: SpoolRefs, taken: Sequence[int]) -> SpoolRefs:
    """`refs` but the entries `taken` (some of them, in any order)."""
    marked = bytearray(len(spool))
    for number in taken:
        marked[number] = 1
    kept = array("I", (number for number in refs.numbers if not marked[number]))
    if len(kept) + len(taken) != len(refs):
        raise AssertionError("pages written early that the upload plan does not put")
    return spool.refs(kept)


def publish(
    storage: Storage,
    publication: Publication,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    retention: timedelta = timedelta(days=14),
    use_cas: bool = True,
    destination: Destination | None = None,
    early: EarlyContent | None = None,
    alongside: Callable[[], None] = lambda: None,
) -> PublishResult:
    """Write `publication` in order (or, with dry_run, only plan it). `destination`: what the run read
    of the destination when it started (read here when not given); `early`: the new content objects a child
    process writes (`write_new_content`), whose writes are taken here, before the other content, and which
    writes the listing pages after the pointer; `alongside()`: the caller's work once the pointer is committed
    and the pages are being written (nothing in a dry run)."""
    progress = progress or NullProgress()
    now = now or datetime.now(UTC)
    destination = destination or read_destination(storage)
    # read, never copied (two dicts of every object at a million files); deleted keys are left out of the manifest
    listing, manifest = destination.listing, destination.manifest

    spool = publication.spool
    content_put, content_skip = _plan_group(storage, spool, publication.content, listing, manifest)
    # Index objects are written create-only: where the manifest stands for the listing, each is looked up
    # (a few per publication; a run killed before its manifest may have written them)
    index_listing = listing if destination.listed else _heads(storage, publication.immutable.keys())
    index_put, index_skip = _plan_group(storage, spool, publication.immutable, index_listing, manifest)
    for ref in index_put:
        if ref.key in index_listing:
            raise StorageError(
                f"{ref.key}: exists in the destination with different bytes and index objects are never "
                "overwritten; another publisher uses this destination, or its previous pointer was lost"
            )
    # the manifest holds only listed keys whose ETag and size still match; the run renders every page the
    # destination does not hold as published, so this only guards that promise
    missing = sorted(
        key
        for key, sha256 in publication.reused.digests()
        if (entry := manifest.get(key)) is None or entry.sha256 != sha256
    )
    if missing:
        raise StorageError(f"{missing[0]}: a listing page reused unrendered is not in the destination; run again")
    listings = publication.listings
    listing_put, listing_skip = _plan_group(storage, spool, listings, listing, manifest)
    delete = _expired(listing, manifest, publication.referenced, (now - retention).timestamp())
    pointer = publication.pointer
    sent = content_put + index_put + listing_put
    plan = UploadPlan(
        put=PlannedKeys(content_put + index_put, pointer.key if pointer else None, listing_put),
        put_bytes=sum(map(spool.size, sent.numbers)) + (len(pointer.data) if pointer else 0),  # no ref made
        skip=(*content_skip, *index_skip, *listing_skip),
        delete=tuple(delete),
        reused=len(publication.reused),
    )
    if dry_run:
        return PublishResult(plan, written=False)

    # key -> SHA-256 of what this run found equal without writing it: the manifest's new entries beside
    # what it writes (whose SHA-256 the spool keeps). Reused pages are not among them: the manifest holds
    # each with its SHA-256 (checked above), and keeps it.
    skipped = frozenset(plan.skip)
    found_equal = (
        {
            key: spool.sha256(n)
            for group in (publication.content, publication.immutable, listings)
            for n in group.numbers
            if (key := spool.key(n)) in skipped
        }
        if skipped
        else {}
    )
    written = _Written(spool)
    progress.start("publish", total=len(plan.put), unit="objects")
    # No manifest between the content and the index: a run killed after it leaves the next run an audit (see
    # run.py), which compares what this one wrote by `same_content` (S3: the ETag; local: the bytes read back),
    # and a manifest is a pass over every object the destination holds (~10 s a million objects).
    if early is not None:
        numbers = early.numbers
        written.add_spooled(numbers, early.writer.take(len(numbers), progress.advance))
        content_put = _without(spool, content_put, numbers)
    _put_all(storage, spool, content_put, written, progress, fault="content")

    fault_point("index")
    for number, ref in zip(index_put.numbers, index_put, strict=True):
        artifact = spool.load(ref)
        info = storage.put_conditional(
            artifact.key, artifact.data, content_type=artifact.content_type, cache_control=artifact.cache_control,
            if_match=None,
        )  # fmt: skip
        written.add(info, spool.sha256(number))
        progress.advance(1, ref.size)

    fault_point("pointer")
    if pointer is not None and use_cas:
        info = storage.put_conditional(
            pointer.key, pointer.data, content_type=pointer.content_type, cache_control=pointer.cache_control,
            if_match=publication.pointer_etag,
        )  # fmt: skip
        written.add(info, _sha256(pointer.data))
    elif pointer is not None:
        info = storage.put(
            pointer.key, pointer.data, content_type=pointer.content_type, cache_control=pointer.cache_control
        )
        written.add(info, _sha256(pointer.data))
    if pointer is not None:
        progress.advance(1, len(pointer.data))
        log.info("committed %s", pointer.key)

    fault_point("listings")
    later: _Later | None = None
    if early is not None and early.pages:
        listing_put = _without_any(spool, listing_put, early.pages)
    if early is not None and listing_put:
        # the child writes the listing pages while this process makes the manifest's other lines
        spool.shared_fd()  # every page's bytes in the spool file
        in_order = _in_key_order(spool, listing_put)
        early.writer.send((spool.key(n), *spool.extent(n)) for n in in_order)
        later = _Later(spool, in_order, early.writer, progress)
    else:
        _put_all(storage, spool, listing_put, written, progress)
    if early is not None:
        early.writer.end()
    alongside()
    if early is not None and early.pages:
        # written before the pages sent above: their results come first
        written.add_spooled(early.pages, early.writer.take(len(early.pages), progress.advance))

    def delete_expired() -> None:  # after the listings, before the manifest
        fault_point("delete")
        for key in delete:
            storage.delete(key)

    gone = frozenset(delete)
    _write_manifest(
        storage, listing, manifest, written, found_equal, publication.referenced, now, gone=gone, later=later,
        before_writing=delete_expired,
    )  # fmt: skip
    for key in OLD_MANIFEST_KEYS:
        if key in listing and key not in gone:
            storage.delete(key)
    storage.put(
        COMPLETE_KEY, publication.pointer_sha256.encode() + b"\n", content_type="text/plain", cache_control=NO_CACHE
    )
    progress.finish()
    return PublishResult(plan, written=True)


_STAT = struct.Struct("<qd")  # a write's size and mtime


_Wrote = tuple[int, str, float | None, str]  # what a write made (size, ETag, mtime), and the bytes' SHA-256


class _Written:
    """What this run wrote, in columns by write: ETag, size, mtime and where its key and SHA-256 are (a spool
    entry number, or the key and digest given). An ObjectInfo a key in a dict costs ~250 bytes, a key string
    ~150, and at a million packages a run writes two million objects: spool entries keep no key here, and
    the ETags, sizes and times are set aside in the scratch file (`pipeline.scratch`)."""

    __slots__ = ("_etags", "_given", "_numbers", "_spool", "_stats")

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._etags = StringColumn()
        self._stats = FixedColumn(_STAT.size)  # size and mtime (NaN: not known)
        self._numbers = array("i")  # spool entry, or -1: the key and SHA-256 are in _given
        self._given: dict[int, tuple[str, str]] = {}  # write -> (key, SHA-256) of a write not from the spool

    def __len__(self) -> int:
        return len(self._numbers)

    def add(self, info: ObjectInfo, sha256: int | str) -> None:
        """`info` written with these bytes: a spool entry's number (whose key `info.key` is), or their SHA-256."""
        if isinstance(sha256, str):
            self._given[len(self._numbers)] = (info.key, sha256)
            sha256 = -1
        self._etags.append(info.etag)
        self._stats.append(_STAT.pack(info.size, math.nan if info.modified is None else info.modified))
        self._numbers.append(sha256)

    def add_spooled(self, numbers: Sequence[int], results: Iterable[Written]) -> None:
        """`add` of each spool entry of `numbers` as the background writer wrote it (`results`, in that order):
        no ObjectInfo made, no key read (~1.7 us an object less, at two million objects)."""
        etags, stats, pack, nan = self._etags, self._stats, _STAT.pack, math.nan
        count = 0
        for size, etag, modified in results:
            etags.append(etag)
            stats.append(pack(size, nan if modified is None else modified))
            count += 1
        if count != len(numbers):
            raise ValueError(f"{count} writes reported for {len(numbers)} objects")
        self._numbers.extend(iter(numbers))  # an iterator: `numbers` may be an array of another type

    def _key(self, row: int) -> str:
        number = self._numbers[row]
        return self._spool.key(number) if number >= 0 else self._given[row][0]

    def by_key(self) -> Iterator[tuple[str, _Wrote]]:
        """Each key's last write, sorted by key: the key, then what the destination said of it and its SHA-256.

        Sorted by `sequences.sorted_by_key`: only one run's keys are held at once."""
        merged = sorted_by_key(range(len(self._numbers)), self._key)
        pending: tuple[str, int] | None = None
        for key, row in merged:
            if pending is not None and pending[0] != key:
                yield self._item(*pending)
            pending = (key, row)
        if pending is not None:
            yield self._item(*pending)

    def _item(self, key: str, row: int) -> tuple[str, _Wrote]:
        size, modified = _STAT.unpack(self._stats[row])
        number = self._numbers[row]
        sha256 = self._spool.sha256(number) if number >= 0 else self._given[row][1]
        return key, (size, self._etags[row], None if math.isnan(modified) else modified, sha256)


def _put_all(
    storage: Storage,
    spool: Spool,
    refs: SpoolRefs,
    written: _Written,
    progress: Progress,
    *,
    fault: str | None = None,
    size: int = 256,
) -> None:
    """Upload `refs` from the spool in batches of `size`, recording each in `written`. With `fault`, one
    object at a time when MIRRORSEED_FAULT is armed, so the fault point can fire after the N-th."""
    step = 1 if fault is not None and os.environ.get(FAULT_ENV) else size
    for start in range(0, len(refs), step):
        batch = refs[start : start + step]
        artifacts = spool.load_many(batch)
        for number, info in zip(batch.numbers, storage.put_many(artifacts), strict=True):
            written.add(info, number)
        progress.advance(len(batch), sum(len(artifact.data) for artifact in artifacts))
        if fault is not None:
            fault_point(fault, len(written))


def _manifest_line(key: str, sha256: str, etag: str, size: int, last: float) -> str:
    """`json.dumps([key, sha256, etag, size, last], ensure_ascii=False)` and a newline, byte for byte, at a
    fraction of the cost (one C string encoder per string, no encoder object per line)."""
    return f"[{_json_string(key)}, {_json_string(sha256)}, {_json_string(etag)}, {int(size)}, {float(last)!r}]\n"


class _Later:
    """Listing pages (spool entries `numbers`, in key order) that the child writes while the manifest's other
    lines are made: their keys and SHA-256 are known now, their ETags and sizes once they are written."""

    def __init__(self, spool: Spool, numbers: Sequence[int], writer: BackgroundWrite, progress: Progress) -> None:
        self._spool = spool
        self._numbers = numbers
        self._writer = writer
        self._progress = progress

    def keys(self) -> Iterator[str]:
        key = self._spool.key
        return (key(number) for number in self._numbers)

    def lines(self, last: float) -> Iterator[str]:
        """Each page's manifest line, in key order, as the child writes the pages."""
        spool, numbers = self._spool, self._numbers
        for number, (size, etag, _) in zip(
            numbers, self._writer.take(len(numbers), self._progress.advance), strict=True
        ):
            yield _manifest_line(spool.key(number), spool.sha256(number), etag, size, last)
        self._writer.wait()


def _in_key_order(spool: Spool, refs: SpoolRefs) -> array[int]:
    return array("I", (number for _, number in sorted_by_key(refs.numbers, spool.key)))


def _write_manifest(
    storage: Storage,
    listing: Mapping[str, ObjectInfo],
    manifest: ManifestTable,
    written: _Written,
    found_equal: Mapping[str, str],
    referenced: Container[str],
    now: datetime,
    *,
    gone: Set[str] = frozenset(),  # deleted by this run (before the manifest is put)
    later: _Later | None = None,
    before_writing: Callable[[], None] = lambda: None,
) -> None:
    """Record key -> SHA-256 of what the destination holds, once the pointer is committed: each key the
    publication reaches, referenced now. Each key this run wrote is one of them: `referenced` is asked only of
    the others (~3 us a key at two million objects).

    A listed key that the manifest does not know, and that this run neither wrote nor found equal to its
    bytes (`found_equal`: key -> SHA-256), is left out (the next run compares it by same_content).

    `later`: writes still in flight (a child's), whose lines go in at their place once they are done; until
    then the other lines wait in a spill file, with the offsets where those go. `before_writing()` runs once
    every write is done, before the manifest is put.
    """
    stamp = now.timestamp()
    # Written a batch of lines at a time into a zstd stream, into a temporary file: the manifest of ~150,000
    # objects is ~27 MB as text, ~9 MB compressed; at a million files, ~150 MB compressed.
    with (
        temporary_file(f"a file for {MANIFEST_KEY}") as body,
        temporary_file(f"the lines of {MANIFEST_KEY}") if later is not None else nullcontext(None) as spill,
    ):
        stream = zstandard.ZstdCompressor(level=3).stream_writer(body, closefd=False)
        stream.write(MANIFEST_FORMAT.encode() + b"\n")
        sink: BinaryIO = stream if spill is None else spill
        marks = array("q")  # offsets in the spill where a line of `later` goes, in their order
        spilled = 0
        lines: list[str] = []

        def put_lines() -> None:
            nonlocal spilled
            data = "".join(lines).encode("utf-8")
            sink.write(data)
            spilled += len(data)
            lines.clear()

        pending = later.keys() if later is not None else iter(())
        next_pending = next(pending, None)
        old_entries = _Cursor(manifest.entries())
        listed = iter(listing) if isinstance(listing, _ManifestListing) else sorted(listing)  # the first: in order
        for key, wrote in _listed_or_written(listed, written.by_key()):
            while next_pending is not None and next_pending <= key:
                put_lines()
                marks.append(spilled)
                written_later, next_pending = next_pending == key, next(pending, None)
                if written_later:
                    break
            else:
                written_later = False
            old = old_entries.at(key)
            if written_later or key == MANIFEST_KEY or key in OLD_MANIFEST_KEYS or key in gone:
                continue
            modified: float | None = None
            if wrote is not None:
                size, etag, modified, sha256 = wrote
            elif old is not None:  # its ETag and size are the listing's (load_manifest keeps only those)
                sha256, etag, size = old.sha256, old.etag, old.size
            elif key in found_equal:  # listed, not in the manifest, and the plan found it equal to our bytes
                info = listing[key]
                sha256, etag, size, modified = found_equal[key], info.etag, info.size, info.modified
            else:
                continue
            if wrote is not None or key in referenced:  # what this run wrote is its publication's (as the pages)
                last = stamp
            elif old is not None:
                last = old.referenced
            else:
                last = modified if modified is not None else stamp
            lines.append(_manifest_line(key, sha256, etag, size, last))
            if len(lines) >= MANIFEST_BATCH:
                put_lines()
        while next_pending is not None:
            put_lines()
            marks.append(spilled)
            next_pending = next(pending, None)
        put_lines()
        if spill is not None and later is not None:
            _merge_spill(spill, marks, later.lines(stamp), stream)
        stream.flush(zstandard.FLUSH_FRAME)
        before_writing()
        storage.put_file(MANIFEST_KEY, body, content_type="application/zstd", cache_control=NO_CACHE)


_MERGE_CHUNK = 1 << 20  # bytes of the spill read, and of the merged lines written, at once


def _merge_spill(spill: BinaryIO, marks: Sequence[int], lines: Iterable[str], out: BinaryIO) -> None:
    """The spill's bytes into `out`, each of `lines` at its mark (an offset in the spill), in order; a chunk
    at a time (what lies between two marks, or after the last, is most of the manifest at times: a
    million-file build's pages come before its two million torrents and metalinks)."""
    spill.flush()
    spill.seek(0)
    at = 0
    pending = bytearray()

    def add(data: bytes) -> None:
        nonlocal pending
        pending += data
        if len(pending) >= _MERGE_CHUNK:
            out.write(pending)
            pending = bytearray()

    for mark, line in zip(marks, lines, strict=True):
        while at < mark:
            data = spill.read(min(mark - at, _MERGE_CHUNK))
            if not data:
                raise AssertionError(f"the spill of {MANIFEST_KEY} ends before offset {mark}")
            add(data)
            at += len(data)
        add(line.encode("utf-8"))  # a full build's page lines all go in at one mark: checked here too
    out.write(pending)
    shutil.copyfileobj(spill, out, _MERGE_CHUNK)  # what follows the last mark


class _Cursor:
    """Entries sorted by key, looked up by keys that ascend: each entry is read once."""

    def __init__(self, entries: Iterator[tuple[str, ManifestEntry]]) -> None:
        self._entries = entries
        self._next = next(entries, None)

    def at(self, key: str) -> ManifestEntry | None:
        """The entry of `key`; the entries of lower keys are passed over."""
        while self._next is not None and self._next[0] < key:
            self._next = next(self._entries, None)
        if self._next is not None and self._next[0] == key:
            return self._next[1]
        return None


def _listed_or_written(
    listed: Iterable[str], written: Iterable[tuple[str, _Wrote]]
) -> Iterator[tuple[str, _Wrote | None]]:
    """Every key of the two (each sorted, each key once), sorted and once, with what this run wrote of it
    (None: nothing). Nothing listed (a first publication): the written, as they come."""
    listed = iter(listed)
    first = next(listed, None)
    if first is None:
        yield from written
        return
    tagged = heapq.merge(
        ((key, 0, wrote) for key, wrote in written), ((key, 1, None) for key in itertools.chain((first,), listed))
    )  # a key written and listed comes first as written
    previous: str | None = None
    for key, _, wrote in tagged:
        if key != previous:
            yield key, wrote
        previous = key
