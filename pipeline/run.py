"""release(): composes the stages in their fixed order and returns a RunReport.

begin (destination, key) -> scan -> hash -> mirrors -> read the destination (once) -> decide
(pipeline.decision) -> build -> sign -> render -> publish. Only `publish` writes to the destination,
and only after every check has passed. The destination is read once, up front; later steps read only the
current index (when the state cache cannot vouch for it) and an orphaned index object whose signature
a re-run reuses.

A tree whose mark (one walk of names and stats, `pipeline.snapshot.mark`) is that of the last scan takes a
shorter path first (`_release_unchanged`): its files come from the state cache, nothing is parsed or looked
up file by file, and when the mirrors and the destination leave nothing to do the run ends there.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import remembered
from pipeline.config import Settings, require_release_inputs, s3_config, user_cache_dir
from pipeline.decision import Decision, Facts, decide, resign_due, same_content
from pipeline.errors import ConfigError, PipelineError, StorageError
from pipeline.executors import open_executor
from pipeline.filetable import FileTable, KnownDigests
from pipeline.hashing import (
    ExecutorFactory,
    check_expected,
    iter_hashed,
    local_pool,
    piece_size_for,
    start_local_pool_early,
)
from pipeline.index import (
    DELTA_MAX_BYTES,
    EncodedIndex,
    decode_index,
    decode_pointer,
    decompress_index,
    encode_json,
    encode_pointer,
    iter_index,
    make_delta,
    package_json,
    rfc3339,
    shard_parts,
)
from pipeline.jsondoc import loads_strict
from pipeline.model import (
    Artifact,
    DeltaRef,
    FileEntry,
    KeyInfo,
    MirrorStatus,
    NullProgress,
    PackageRecord,
    Pointer,
    Progress,
    ShardRef,
    Snapshot,
)
from pipeline.objects import (
    BROWSE_PREFIX,
    CLIENT_KEYS,
    MIRRORS_JSON_KEY,
    POINTER_KEY,
    POINTER_MAX_BYTES,
    SIGNING_KEY_ASC,
    SIGNING_KEY_GPG,
    SIGNING_KEYS,
    browse_directory,
    delta_key,
    make_artifact,
    metalink_key,
    package_of,
    shard_key,
    shard_torrent_key,
    torrent_key,
)
from pipeline.pages import PageDigests
from pipeline.publish import (
    Destination,
    DestinationProbe,
    NewContent,
    Publication,
    UploadPlan,
    is_complete,
    publish,
    read_destination,
    write_new_content,
)
from pipeline.records import BuiltRecords, build_records
from pipeline.report import RunReport
from pipeline.scratch import own_scratch
from pipeline.sequences import sorted_by_key
from pipeline.shards import Fingerprints, PublishedFingerprints, record_hash, shards_of_row
from pipeline.signing import Signer, verify_signed_message
from pipeline.snapshot import ScanSpec, recheck_snapshot, scan_snapshot, snapshot_mark
from pipeline.spool import Spool, SpoolRefs
from pipeline.state import PIECES_BATCH, CachedFile, KnownScan, StateCache, StateRow
from pipeline.storage import Storage, open_storage
from pipeline.strcolumn import StringColumn
from pipeline.torrents import (
    BuildSpec,
    ObjectFacts,
    PackageRecords,
    build_torrent,
    digest_of,
    hash_pieces_of_bytes,
    infohash_for,
    iter_package_artifacts,
    never_announced,
    webseed_bases,
)
from pipeline.tracker import update_whitelist
from pipeline.urls import join_url

if TYPE_CHECKING:
    from pipeline.mirrors import MirrorReport, ProbeFile, ProbeFiles, ProbeLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurrentPointer:
    """The verified `latest.asc` in the destination when the run starts."""

    pointer: Pointer
    etag: str
    pointer_sha256: str


@dataclass(frozen=True)
class CurrentPublication:
    """What `latest.asc` in the destination names when the run starts.

    `fingerprints` maps every path the shards list to a hash of its PackageRecord and the shards listing it
    (equal records, description aside, in the same shards, hash equal): enough to tell what changed
    without keeping ~63,000 records. `webseeds`, `trackers` and `dht_nodes` are the shards' header (None
    when there is no shard, or the destination holds a publication of an earlier format).
    """

    pointer: Pointer
    etag: str
    pointer_sha256: str
    fingerprints: Mapping[str, int]
    header: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None
    remembered: bool = False  # read from the state cache (`pipeline.remembered`), not from the shards

    @classmethod
    def of(
        cls,
        current: CurrentPointer,
        fingerprints: Mapping[str, int],
        header: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None,
        *,
        remembered: bool = False,
    ) -> CurrentPublication:
        """What the verified pointer `current` names: these fingerprints and shard header."""
        return cls(current.pointer, current.etag, current.pointer_sha256, fingerprints, header, remembered)

    @property
    def webseeds(self) -> tuple[str, ...]:
        return self.header[0] if self.header else ()

    @property
    def trackers(self) -> tuple[str, ...]:
        return self.header[1] if self.header else ()

    @property
    def dht_nodes(self) -> tuple[str, ...]:
        return self.header[2] if self.header else ()


class StageClock:
    """Wall time per stage, in the order stages first ran; a stage entered twice accumulates."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @property
    def stages(self) -> list[tuple[str, float]]:
        return list(self._seconds.items())

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start


def read_pointer(storage: Storage, *, repo: str, keyring: Path, fingerprint: str) -> CurrentPointer | None:
    """Read and verify the current pointer; None on a fresh destination."""
    stored = storage.get(POINTER_KEY)
    if stored is None:
        return None
    try:
        payload = verify_signed_message(stored.data, keyring=keyring, fingerprint=fingerprint)
    except PipelineError as exc:
        raise StorageError(
            f"{POINTER_KEY}: the destination's pointer does not verify with key {fingerprint} ({exc}); "
            "publish to a fresh destination or restore the previous key"
        ) from exc
    pointer = decode_pointer(payload)
    if pointer.repo != repo:
        raise StorageError(
            f"{POINTER_KEY}: the destination holds repo {pointer.repo!r}, not {repo!r}; check --dest and repo"
        )
    return CurrentPointer(pointer=pointer, etag=stored.info.etag, pointer_sha256=_sha256(stored.data))


def shard_bytes(storage: Storage, shard: ShardRef) -> bytes:
    """The compressed shard `shard` names, checked against the pointer's size and SHA-256."""
    stored = storage.get(shard.path)
    if stored is None:
        raise StorageError(f"{shard.path}: named by {POINTER_KEY} but missing from the destination")
    if stored.info.size != shard.size or _sha256(stored.data) != shard.sha256:
        raise StorageError(f"{shard.path}: size or SHA-256 differs from {POINTER_KEY}; the shard was altered")
    return stored.data


def read_index(storage: Storage, current: CurrentPointer, files: FileTable | None = None) -> CurrentPublication:
    """The shards the current pointer names, reduced to one fingerprint per path (each read streaming), by
    row of `files` (the run's scan) for the paths it has."""
    fingerprints = PublishedFingerprints(files)
    header: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None
    for shard in sorted(current.pointer.shards, key=lambda shard: (shard.name, shard.part)):
        index = iter_index(shard_bytes(storage, shard), uncompressed_size=shard.uncompressed_size)
        try:
            for doc in index.packages():
                record = PackageRecord.from_json(doc)
                fingerprints.add(record.path, record_hash(package_json(record)), shard.name)
        except (KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"{shard.path}: a package entry is malformed ({exc!r}); re-publish") from exc
        found = index.header
        if found["shard"] != shard.name or found["repo"] != current.pointer.repo:
            raise StorageError(f"{shard.path}: not the shard {shard.name!r} of {current.pointer.repo!r}; re-publish")
        header = (tuple(found["webseeds"]), tuple(found["trackers"]), tuple(found.get("dht_nodes", ())))
    return CurrentPublication.of(current, fingerprints, header)


def _current_publication(
    storage: Storage, state: StateCache, current: CurrentPointer, files: FileTable, *, audit: bool
) -> CurrentPublication:
    """What the current pointer's shards list: as the state cache remembered it when the run that published
    (or verified) them kept it (`pipeline.remembered`), else (or in an audit) read from the shards."""
    kept = None if audit else remembered.recall(state, current.pointer_sha256, files)
    if kept is None:
        return read_index(storage, current, files)
    fingerprints, header = kept
    return CurrentPublication.of(current, fingerprints, header, remembered=True)


def _remember_fingerprints(
    settings: Settings,
    state: StateCache,
    pointer_sha256: str,
    built: BuiltRecords,
    current: CurrentPublication | None,
    changes: Changes,
) -> None:
    """Keep what the publication named by the `latest.asc` of SHA-256 `pointer_sha256` lists: `built`; when
    the `current` publication's came from the state, only its `changes` are written."""
    header = None
    if built.shards:
        header = remembered.shard_header(_shard_webseeds(settings), settings.trackers, settings.dht_nodes)
    if current is not None and current.remembered:
        new, changed, removed, _ = changes
        written = remembered.update(
            state, current.pointer_sha256, pointer_sha256, header, built.fingerprints, (*new, *changed), removed
        )
        if written:
            return
    remembered.remember(state, pointer_sha256, header, built.fingerprints)


def _shard_webseeds(settings: Settings) -> list[str]:
    """The webseeds every shard's header lists."""
    return [m.url for m in settings.all_mirrors]


def read_current(storage: Storage, *, repo: str, keyring: Path, fingerprint: str) -> CurrentPublication | None:
    """Read and verify the current pointer and the shards it names; None on a fresh destination."""
    current = read_pointer(storage, repo=repo, keyring=keyring, fingerprint=fingerprint)
    return None if current is None else read_index(storage, current)


def published_records(storage: Storage, pointer: Pointer) -> tuple[PackageRecord, ...]:
    """Every record the shards `pointer` names, once each, sorted by path (all in memory: demo and checks)."""
    records: dict[str, PackageRecord] = {}
    for shard in pointer.shards:
        doc = decode_index(shard_bytes(storage, shard), uncompressed_size=shard.uncompressed_size)
        for item in doc["packages"]:
            records.setdefault(item["path"], PackageRecord.from_json(item))
    return tuple(records[path] for path in sorted(records))


def _sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Digests:
    """What is known of every file's content, by row of `files`; the piece hashes stay in the state cache
    (read back when a torrent is built)."""

    files: FileTable
    known: KnownDigests  # by row of `files`: (sha256, piece size, infohash)
    files_hashed: int
    bytes_hashed: int

    def infohashes(self) -> Iterator[tuple[str, str | None]]:
        """Every file's path and infohash (None: an empty file), in path order."""
        known = self.known
        for row, path in enumerate(self.files.paths):
            yield path, known[row].infohash


STORE_BATCH = 1024  # hashed files written to the state cache per transaction


def digest_files(
    files: Sequence[FileEntry],
    state: StateCache,
    *,
    workers: int,
    progress: Progress,
    executor: ExecutorFactory = local_pool,
    never_announce: Sequence[str] = (),
) -> Digests:
    """Hash only the files whose stat key the state cache does not know; remember what was hashed.

    Piece hashes go to the state cache as files are hashed and are not kept: ~63,000 Debian packages
    carry ~110 MB of them.
    """
    table = files if isinstance(files, FileTable) else FileTable.of(files)
    known = KnownDigests(len(table))
    for row, cached in state.lookup(table):
        # A cached digest the repository's metadata contradicts is not evidence against the mirror: the file
        # may have been rewritten in place with its size and mtime restored (some sync tools do). The
        # metadata is the stronger evidence; hash such a file again before blaming the mirror.
        expected = table.expected_sha256_at(row)
        if expected is None or cached.sha256 == expected.lower():
            known[row] = cached
    misses = table.take(known.unknown())
    rows: list[StateRow] = []
    paths = table.paths
    for item in iter_hashed(misses, workers=workers, progress=progress, executor=executor):
        digest = digest_of(item)
        at = table.row_of(item.entry.path)
        assert at is not None, f"{item.entry.path}: hashed but not in the scan"
        known[at] = CachedFile(digest.sha256, digest.piece_size, digest.infohash)
        rows.append(StateRow(item.entry, item.sha256, item.piece_size, digest.infohash, item.pieces))
        if len(rows) >= STORE_BATCH:
            state.store(rows)
            rows = []
    state.store(rows)
    if misses or state.file_count() != len(table):
        state.forget_except(paths)
    check_expected((table[row], known[row].sha256) for row in _contradicted(table, known))
    if never_announce:
        _private_infohashes(table, state, known, never_announce)
    return Digests(table, known, files_hashed=len(misses), bytes_hashed=sum(entry.size for entry in misses))


def _contradicted(files: FileTable, known: KnownDigests) -> Iterator[int]:
    """The rows whose SHA-256 differs from the one the repository metadata lists (`check_expected` names them)."""
    for row in range(len(files)):
        expected = files.expected_sha256_at(row)
        if expected is not None and known[row].sha256 != expected.lower():
            yield row


def _private_infohashes(files: FileTable, state: StateCache, known: KnownDigests, patterns: Sequence[str]) -> None:
    """A never-announced package's torrent has the BEP 27 private flag inside `info`, so its infohash is
    not the one the state cache keeps (the public form): compute it from the cached piece hashes."""
    private = [row for row, entry in enumerate(files) if entry.size > 0 and never_announced(patterns, entry.path)]
    for start in range(0, len(private), PIECES_BATCH):
        batch = private[start : start + PIECES_BATCH]
        pieces = state.pieces_many([files.paths[row] for row in batch])
        for row in batch:
            entry, cached = files[row], known[row]
            infohash = infohash_for(
                name=entry.path.rpartition("/")[2],
                length=entry.size,
                piece_size=cached.piece_size,
                pieces=pieces[entry.path],
                private=True,
            )
            known[row] = CachedFile(cached.sha256, cached.piece_size, infohash)


@dataclass(frozen=True)
class IndexObjects:
    pointer: Pointer
    artifacts: SpoolRefs  # spooled as made: at a million files the compressed shards are ~190 MB


SHARD_THREADS = 2  # index parts compressed at once (zstd runs outside the GIL: ~1.7x one thread's pace on 2 cores)


@dataclass(frozen=True)
class _PreparedPart:
    """An index part's JSON compressed, its torrent's pieces, and the read of the previous part (when a delta
    is to be made from it)."""

    encoded: EncodedIndex
    piece_size: int
    pieces: bytes
    base: Future[bytes | None] | None


# an index part while it is compressed: its shard's name, its number, its packages, JSON and previous part
_Pending = tuple[str, int, int, bytearray, ShardRef | None, Future[_PreparedPart]]


def build_index_objects(
    *,
    spool: Spool,
    settings: Settings,
    public_url: str,
    sequence: int,
    generated: datetime,
    expires: datetime,
    shard_json: Mapping[str, StringColumn],
    previous: Callable[[str, int], ShardRef | None] = lambda name, part: None,
    previous_json: Callable[[ShardRef], bytes | None] = lambda shard: None,
) -> IndexObjects:
    """The index's shards (docs/sharded-index.md), each in parts of at most PART_MAX_BYTES of JSON, each
    part with its torrent and, when `previous(name, part)` names the previous
    publication's part of that name and number, its JSON changed and `previous_json` reads it, the delta
    from it; and the pointer naming them. At most SHARD_THREADS parts' JSON is in memory at a time; every
    object goes to `spool` as it is made.

    `shard_json`: each shard's records as `pipeline.index.package_json`, in path order, by name (sorted).
    """
    webseeds = _shard_webseeds(settings)
    shards_url = join_url(public_url, "index/shards") + "/"
    shards: list[ShardRef] = []
    artifacts = array("q")  # spool entry numbers

    def prepared(new_json: bytearray, before: ShardRef | None) -> _PreparedPart:
        # in a thread: zstd and hashlib let the others run meanwhile
        raw_sha256 = _sha256(new_json)
        base = None
        if before is not None and before.uncompressed_sha256 != raw_sha256:
            base = reader.submit(previous_json, before)
        encoded = encode_json(new_json, raw_sha256)
        piece_size = piece_size_for(encoded.size)
        return _PreparedPart(encoded, piece_size, hash_pieces_of_bytes([encoded.data], piece_size), base)

    def add(entry: _Pending) -> None:
        name, part, packages, new_json, before, future = entry
        made = future.result()
        encoded = made.encoded
        key = shard_key(encoded.sha256)
        torrent, infohash = build_torrent(
            name=key.rpartition("/")[2],
            files=None,
            length=encoded.size,
            piece_size=made.piece_size,
            pieces=made.pieces,
            webseeds=[shards_url],
            trackers=settings.trackers,
            nodes=settings.dht_node_pairs,
        )
        torrent_object = make_artifact(shard_torrent_key(_sha256(torrent)), torrent)
        artifacts.append(spool.put(make_artifact(key, encoded.data)))
        artifacts.append(spool.put(torrent_object))
        delta = None
        if made.base is not None and before is not None:
            delta_made = _delta(before, made.base.result(), new_json, encoded.sha256)
            if delta_made is not None:
                delta, delta_object = delta_made
                artifacts.append(spool.put(delta_object))
        shards.append(
            ShardRef(
                name=name,
                part=part,
                path=key,
                size=encoded.size,
                sha256=encoded.sha256,
                uncompressed_size=encoded.uncompressed_size,
                uncompressed_sha256=encoded.uncompressed_sha256,
                packages=packages,
                torrent=torrent_object.key,
                infohash=infohash,
                delta=delta,
            )
        )

    # Parts are compressed SHARD_THREADS at a time, in threads, while the next one's JSON is put together here,
    # and added in order: the same bytes as one at a time. The previous part a delta is made from is read
    # (fetched, decompressed, checked) in another thread meanwhile; deltas are made here, one at a time (each
    # holds both JSONs and zstd's tables: ~60 MB at PART_MAX_BYTES).
    pending: deque[_Pending] = deque()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirrorseed-delta-base") as reader,
        ThreadPoolExecutor(max_workers=SHARD_THREADS, thread_name_prefix="mirrorseed-shard") as compressing,
    ):
        for name, column in shard_json.items():
            parts = shard_parts(
                repo=settings.repo, shard=name, webseeds=webseeds, trackers=settings.trackers,
                packages=column, dht_nodes=settings.dht_nodes,
            )  # fmt: skip
            for part, (packages, new_json) in enumerate(parts):
                before = previous(name, part)
                pending.append((name, part, packages, new_json, before, compressing.submit(prepared, new_json, before)))
                del new_json  # up to PART_MAX_BYTES of JSON: kept only while its part is pending
                while len(pending) >= SHARD_THREADS:
                    add(pending.popleft())
        while pending:
            add(pending.popleft())
    pointer = Pointer(settings.repo, sequence, rfc3339(generated), rfc3339(expires), tuple(shards))
    return IndexObjects(pointer, spool.refs(artifacts))


def _delta(
    before: ShardRef, old_json: bytes | None, new_json: bytes | bytearray, sha256: str
) -> tuple[DeltaRef, Artifact] | None:
    """The delta from part `before` (its JSON `old_json`, None if unreadable) to the new JSON, whose compressed
    part has SHA-256 `sha256`; None when there is no base or the new JSON is too large for a delta."""
    if old_json is None or len(new_json) > DELTA_MAX_BYTES:
        return None
    data = make_delta(old_json, new_json)
    path = delta_key(sha256, before.sha256)
    return DeltaRef(before.uncompressed_sha256, path, len(data), _sha256(data)), make_artifact(path, data)


def shard_named(pointer: Pointer | None, name: str, part: int = 0) -> ShardRef | None:
    """Part `part` of the shard `name` of `pointer`, if it has one."""
    if pointer is None:
        return None
    return next((shard for shard in pointer.shards if shard.name == name and shard.part == part), None)


def previous_shard_json(storage: Storage, shard: ShardRef) -> bytes | None:
    """The JSON of the current publication's `shard`, to make a delta from; None when it is too large for one
    or cannot be read as published (the new shard is then published without a delta)."""
    if shard.uncompressed_size > DELTA_MAX_BYTES:
        return None
    try:
        text = decompress_index(shard_bytes(storage, shard), uncompressed_size=shard.uncompressed_size)
    except StorageError as exc:
        log.warning("%s: no delta from it (%s)", shard.path, exc)
        return None
    if _sha256(text) != shard.uncompressed_sha256:
        log.warning("%s: its JSON is not the one %s names; no delta from it", shard.path, POINTER_KEY)
        return None
    return text


def _changes(current: CurrentPublication | None, fingerprints: Mapping[str, int]) -> Changes:
    if current is None and isinstance(fingerprints, Fingerprints):  # every file is new: the table's paths
        return fingerprints.paths, (), (), 0
    before = current.fingerprints if current else {}
    by_row = before.changes(fingerprints) if isinstance(before, PublishedFingerprints) else None
    if by_row is not None:
        return by_row
    new = tuple(sorted(p for p in fingerprints if p not in before))
    removed = tuple(sorted(p for p in before if p not in fingerprints))
    changed = tuple(sorted(p for p, f in fingerprints.items() if p in before and before[p] != f))
    unchanged = len(fingerprints) - len(new) - len(changed)
    return new, changed, removed, unchanged


def release(
    settings: Settings,
    *,
    progress: Progress | None = None,
    now: Callable[[], datetime] | None = None,
) -> RunReport:
    """The operator's job: publish `settings.snapshot` to `settings.dest` (or plan it, with dry_run)."""
    try:
        with own_scratch(), Spool() as spool:
            return _release(settings, spool, progress or NullProgress(), now or (lambda: datetime.now(UTC)))
    finally:
        gc.unfreeze()


def _settle() -> None:
    """Move what exists now (the scan's ~3 objects a file, later the records) out of the garbage collector's
    way: they live until the run ends, and each full collection would walk all of them again (~90 ms
    at 60,000 files). `release` unfreezes them when it returns."""
    gc.freeze()


def _release(settings: Settings, spool: Spool, progress: Progress, now: Callable[[], datetime]) -> RunReport:
    """The product's story, one named step each: read everything, decide, then build, sign, render, publish."""
    run = _begin(settings, now)
    clock = run.clock
    with StateCache.open(settings.state_path, repo=settings.repo) as state:
        first = state.knows_no_file()  # nothing known: every file will be scanned and hashed
        if run.executor is local_pool and settings.workers > 1 and first:
            # The workers' server starts while the tree is walked (the pool stops it; a tree too small for a pool
            # leaves it to end with this process, as multiprocessing does: stopping it would wait for it to finish
            # starting)
            start_local_pool_early()
        scan_spec = _scan_spec(settings, state)
        with clock.stage("scan"):
            # the mark cannot match a scan then: the files its walk stats are kept, for the scan to look up
            marked = snapshot_mark(scan_spec, _mark_context(settings), seen=first)
            mark = marked.digest if marked is not None else None
            known = state.known_scan(mark) if mark is not None else None
        audit = _audit_due(settings, state, run.storage, run.started)
        probed: _Probed | None = None  # the mirrors and the destination, once probed by the unchanged tree's path
        if known is not None and not audit:
            unchanged = _release_unchanged(settings, run, state, scan_spec, known, progress)
            if isinstance(unchanged, RunReport):
                return unchanged
            probed = unchanged
        state.forget_scan()  # the files table may change now: no mark vouches for it until the scan is remembered
        with clock.stage("scan"):
            snapshot = scan_snapshot(scan_spec, marked)  # a flat tree: the mark's walk made its table
            del marked
        with clock.stage("hash"):
            digested = digest_files(
                snapshot.files, state, workers=settings.workers, progress=progress, executor=run.executor,
                never_announce=settings.never_announce,
            )  # fmt: skip
        run = replace(run, hashed=(digested.files_hashed, digested.bytes_hashed))
        files = len(snapshot.files)
        _settle()
        with clock.stage("mirrors"):
            mirrors = (
                probed.mirrors
                if probed is not None
                else _check_mirrors(settings, _probe_files(digested), snapshot.timestamp, state, run.started, progress)
            )
        with clock.stage("build"):
            files_digest = inputs_of_files(digested, snapshot.format)
            inputs = publication_inputs(settings, run.public_url, mirrors, files_digest)
            if mark is not None:
                state.remember_scan(KnownScan(mark, snapshot.format, files, _iso(snapshot.timestamp), files_digest))
        with clock.stage("read-current"):
            destination = (
                probed.destination
                if probed is not None
                else read_destination_state(
                    run.storage, repo=settings.repo, signer=run.signer, key=run.key, audit=audit
                )
            )
        spec = replace(run.spec, webseeds_for=mirrors.webseeds_for, metalink_urls_for=mirrors.metalink_urls_for)
        memo = state.page_memo()
        facts = _facts(settings, run, destination, state, snapshot.files, memo, mirrors, inputs)
        decision = decide(facts)
        if (decision is None or decision.action != "noop") and not isinstance(destination.objects, Destination):
            # this run writes (or may): it needs the manifest, and the listing too when the probe found an
            # object gone or the last publication was not completed (an audit, then)
            listed = facts.lost_objects or facts.lost_index or not facts.complete
            with clock.stage("read-current"):
                destination = replace(destination, objects=read_destination(run.storage, listed=listed))
            facts = _facts(settings, run, destination, state, snapshot.files, memo, mirrors, inputs)
            decision = decide(facts)
        if decision is not None and decision.action == "noop":
            # the state vouches for the current index: nothing decoded, rebuilt or written
            assert destination.pointer is not None
            _remember_audit(settings, state, run, destination)
            _tracker_whitelist(settings, destination.pointer, digested.infohashes())
            return _report(run, mirrors, destination.pointer, "noop", _no_changes(files))

        with clock.stage("build"):
            records = PackageRecords(digested.files, digested.known, spec)  # each made when read
            built = build_records(records, records.files, snapshot.format)
            fingerprints = built.fingerprints
            _settle()
        current = None
        if destination.current is not None and not facts.lost_index and decision is None:
            with clock.stage("read-current"):
                current = _current_publication(run.storage, state, destination.current, records.files, audit=audit)
            facts = replace(facts, unchanged=_same_content(current, fingerprints, settings))
            decision = decide(facts)
        assert decision is not None
        changes = _changes(current, fingerprints) if facts.unchanged is not True else _no_changes(files)
        if decision.action == "noop":
            assert destination.current is not None
            if not settings.dry_run:
                state.remember_publication(destination.current.pointer.index_id, inputs)
                _remember_fingerprints(settings, state, destination.current.pointer_sha256, built, current, changes)
            _remember_audit(settings, state, run, destination)
            _tracker_whitelist(settings, destination.current.pointer, digested.infohashes())
            return _report(run, mirrors, destination.pointer, "noop", changes)

        with ExitStack() as writing:
            with clock.stage("build"):
                # new content objects: written by a child as they are built, and while the pages are rendered
                new_content = writing.enter_context(
                    write_new_content(
                        run.storage, spool, destination.whole, dry_run=settings.dry_run, expected=2 * files
                    )
                )
                content = _build_content(
                    settings, new_content, state, spec, records, fingerprints, current, facts, destination,
                    mirrors.statuses,
                )  # fmt: skip
                early = new_content.written_early()
            with clock.stage("sign"):
                signed = _sign(settings, run, spool, built, snapshot, decision, destination)
                content += signed.keys
            last_audit = state.last_audit(run.storage.url)
            if not settings.dry_run:
                # while this run writes, no audit is remembered: one killed midway leaves the next run an audit,
                # which lists what it wrote after its last manifest
                state.forget_audit(run.storage.url)
            with clock.stage("render"):
                pages = _render(
                    settings, run, spool, state, snapshot, records, built, mirrors, signed.pointer, destination, memo,
                    new_content,
                )  # fmt: skip
                early = new_content.pages_written_early(early)
            if not settings.dry_run:
                # before publishing, by the new pointer's SHA-256: if that publication never appears, it is never read
                with clock.stage("build"):
                    _remember_fingerprints(settings, state, signed.pointer_sha256, built, current, changes)
            # before the pointer: the tracker knows the new torrents by the time clients see them
            _tracker_whitelist(settings, signed.pointer, digested.infohashes())
            publication = Publication(
                spool=spool,
                content=content,
                immutable=signed.index_objects,
                pointer=signed.artifact,
                pointer_etag=destination.current.etag if destination.current else None,
                listings=pages.listings,
                referenced=_Referenced(records.files, frozenset([*pages.others, *signed.pointer.keys, *_FIXED_KEYS])),
                pointer_sha256=signed.pointer_sha256,
                reused=pages.reused,
            )
            # Publishing needs only the spooled objects, the keys and the files' paths (what is referenced): drop
            # the other per-file values first so that the upload plan and manifest reuse their memory.
            del records, built, fingerprints, snapshot, current, digested
            with clock.stage("publish"):
                result = publish(
                    run.storage, publication, dry_run=settings.dry_run, progress=progress, now=run.started,
                    retention=settings.retention, use_cas=not settings.no_cas, destination=destination.whole,
                    early=early,
                    # while the pages are written: a page remembered is reused only as the destination holds it
                    alongside=lambda: state.remember_pages(pages.rows, keep=publication.referenced),
                )  # fmt: skip
            if result.written:
                state.remember_sequence(signed.pointer.sequence)
                state.remember_publication(signed.pointer.index_id, inputs)
                _remember_audit(settings, state, run, destination, previous=last_audit)
    return _report(run, mirrors, signed.pointer, decision.action, changes, plan=result.plan)


# --- the steps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What every step of one run shares: the clock, times, destination, signer and key, URLs."""

    settings: Settings
    clock: StageClock
    started: datetime
    expires: datetime
    public_url: str
    spec: BuildSpec
    storage: Storage
    signer: Signer
    key: KeyInfo
    executor: ExecutorFactory  # where files are hashed (the state cache is written here only)
    hashed: tuple[int, int] = (0, 0)  # files and bytes hashed


def _begin(settings: Settings, now: Callable[[], datetime]) -> _Run:
    """Check the inputs, open the destination (probing conditional writes), check the signing key."""
    require_release_inputs(settings)
    assert settings.snapshot is not None and settings.key is not None and settings.public_url is not None
    clock = StageClock()
    started = now().replace(microsecond=0)
    expires = started + settings.expires_after
    public_url = settings.public_url.rstrip("/")
    spec = BuildSpec(webseeds=tuple(m.url for m in settings.all_mirrors), trackers=settings.trackers,
                     public_url=public_url, nodes=settings.dht_node_pairs,
                     never_announce=settings.never_announce)  # fmt: skip
    with clock.stage("start-up"):
        storage = open_storage(settings.dest, s3_config(settings))
        probe = getattr(storage, "probe_conditional_writes", None)
        if probe is not None and not settings.no_cas and not settings.dry_run:
            probe()
        signer = Signer(gnupghome=settings.gnupghome, key=settings.key)
        key = signer.check_key(must_be_valid_until=expires + settings.key_valid_margin)
    executor = open_executor(settings.executor, snapshot=settings.snapshot)
    return _Run(settings, clock, started, expires, public_url, spec, storage, signer, key, executor)


def _scan_spec(settings: Settings, state: StateCache) -> ScanSpec:
    """What to scan; the state cache keeps the last parse of each metadata file."""
    assert settings.snapshot is not None
    return ScanSpec(
        listing_cache=state,
        root=settings.snapshot,
        format=settings.format,
        suites=settings.suites,
        components=settings.components,
        architectures=settings.architectures,
        upstream_keyring=settings.upstream_keyring,
        sync_lock=settings.sync_lock,
    )


def _mark_context(settings: Settings) -> list[str]:
    """What the per-file part of the publication inputs depends on besides the scan (never-announced
    packages have a private infohash), for the tree's mark."""
    return [RECORDS_RECIPE, *settings.never_announce]


@dataclass(frozen=True)
class _Probed:
    """What the unchanged tree's path read before it found that the run must go on: the whole run reuses it."""

    mirrors: MirrorReport
    destination: DestinationState  # as read between audits (a probe, not a listing)


def _release_unchanged(
    settings: Settings, run: _Run, state: StateCache, scan_spec: ScanSpec, known: KnownScan, progress: Progress
) -> RunReport | _Probed | None:
    """The run of a tree whose mark is that of the last scan: its files and their facts are the state's, so
    nothing is parsed or looked up file by file. The scan's time-dependent checks run again, the mirrors are
    probed and the destination probed as in any run. When that leaves nothing to do the run ends here
    (noop: the RunReport). Else the whole run follows with what was read here (neither the mirrors nor the
    destination are probed twice), or with None when the state cannot give this path its files."""
    clock = run.clock
    with clock.stage("scan"):
        recheck_snapshot(scan_spec, known.format)
    files: ProbeFiles | tuple[()] = ()
    if settings.all_mirrors:  # the probes need every file; nothing else here does
        with clock.stage("hash"):
            files = _known_probe_files(state)
        if len(files) != known.files:
            return None
    with clock.stage("mirrors"):
        mirrors = _check_mirrors(settings, files, _from_iso(known.timestamp), state, run.started, progress)
    del files
    with clock.stage("build"):
        inputs = publication_inputs(settings, run.public_url, mirrors, known.files_digest)
    with clock.stage("read-current"):
        destination = read_destination_state(
            run.storage, repo=settings.repo, signer=run.signer, key=run.key, audit=False
        )
    assert isinstance(destination.objects, DestinationProbe), "no package object is checked here: no audit"
    decision = decide(_facts(settings, run, destination, state, (), state.page_keys(), mirrors, inputs))
    if decision is None or decision.action != "noop":
        return _Probed(mirrors, destination)
    assert destination.pointer is not None
    log.info("the snapshot is unchanged since the last run (%d files): nothing scanned or looked up", known.files)
    _tracker_whitelist(settings, destination.pointer, ((path, infohash) for path, *_, infohash in state.file_facts()))
    return _report(run, mirrors, destination.pointer, "noop", _no_changes(known.files))


def _known_probe_files(state: StateCache) -> ProbeFiles:
    from pipeline.mirrors import ProbeFiles

    return ProbeFiles((path, size, sha256, piece_size) for path, size, sha256, piece_size, _ in state.file_facts())


def _probe_files(digested: Digests) -> ProbeFiles:
    from pipeline.mirrors import probe_files

    return probe_files(digested.files, digested.known)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True)
class DestinationState:
    """What the destination holds when the run starts, read once: the verified pointer, whether its
    publication was completed, the mirror summary it shows, and its objects: listing and manifest (an
    audit), the manifest alone (a run that writes between audits) or a probe (a run that may not write)."""

    current: CurrentPointer | None
    complete: bool
    mirror_summary: list[tuple[str, str, bool]]
    objects: Destination | DestinationProbe  # probed key by key: a run that audits nothing (see audit_interval)

    @property
    def pointer(self) -> Pointer | None:
        return self.current.pointer if self.current else None

    @property
    def whole(self) -> Destination:
        """The destination's manifest (and listing, when audited), which every step that writes needs (read
        after the probe of a run that found it must write)."""
        assert isinstance(self.objects, Destination), "the whole destination is read before a run writes"
        return self.objects


def read_destination_state(
    storage: Storage,
    *,
    repo: str,
    signer: Signer,
    key: KeyInfo,
    audit: bool = True,
) -> DestinationState:
    """The pointer, completion and mirror summary, and the objects: with `audit`, the whole `Destination`
    (listing and manifest), else a probe key by key (the objects that do not grow with the snapshot are
    checked; package objects and browse pages, lost or altered, wait for an audit)."""
    with signer.keyring() as keyring:
        current = read_pointer(storage, repo=repo, keyring=keyring, fingerprint=key.fingerprint)
    return DestinationState(
        current=current,
        complete=current is not None and is_complete(storage, current.pointer_sha256),
        mirror_summary=_published_mirror_summary(storage),
        objects=read_destination(storage) if audit else DestinationProbe(storage),
    )


def _audit_due(settings: Settings, state: StateCache, storage: Storage, now: datetime) -> bool:
    """Whether this run checks every published object against the manifest: asked for, or the last such
    check (remembered by this state cache, for this destination) is `audit_interval` old or more."""
    if settings.audit or not settings.audit_interval:
        return True
    last = state.last_audit(storage.url)
    return last is None or now.timestamp() - last >= settings.audit_interval.total_seconds()


def _remember_audit(
    settings: Settings, state: StateCache, run: _Run, destination: DestinationState, *, previous: float | None = None
) -> None:
    """A run that listed the destination and completed audited it; one that wrote without listing puts back
    the `previous` audit (a dry run changes no state)."""
    if settings.dry_run:
        return
    if isinstance(destination.objects, Destination) and destination.objects.listed:
        state.remember_audit(run.storage.url, run.started.timestamp())
    elif previous is not None:
        state.remember_audit(run.storage.url, previous)


def _facts(
    settings: Settings,
    run: _Run,
    destination: DestinationState,
    state: StateCache,
    files: Sequence[FileEntry],
    pages: Iterable[str],
    mirrors: MirrorReport,
    inputs: str,
) -> Facts:
    """The values the decision needs. `unchanged` is known without the records only when this state cache
    built (or verified) the current index from exactly these inputs."""
    pointer = destination.pointer
    objects = destination.objects
    lost_index = pointer is not None and bool(objects.lost(pointer.keys))
    return Facts(
        current_sequence=pointer.sequence if pointer else None,
        highest_sequence=state.highest_sequence(),
        resign_due=pointer is not None and resign_due(pointer, run.started, settings.effective_resign_before),
        complete=destination.complete,
        mirrors_changed=_mirror_summary(mirrors.statuses) != destination.mirror_summary,
        lost_index=lost_index,
        lost_objects=pointer is not None and _lost(objects, files, pages),
        unchanged=(
            True
            if pointer is not None and not pointer.outdated and state.publication_inputs(pointer.index_id) == inputs
            else None
        ),
    )


def _same_content(current: CurrentPublication, fingerprints: Mapping[str, int], settings: Settings) -> bool:
    if current.pointer.outdated:  # a pointer of an earlier format: published again in the current one
        return False
    if current.header is None:  # no shard (nothing published)
        return not fingerprints
    return same_content(
        current_fingerprints=current.fingerprints,
        current_webseeds=current.webseeds,
        current_trackers=current.trackers,
        fingerprints=fingerprints,
        webseeds=[m.url for m in settings.all_mirrors],
        trackers=settings.trackers,
    ) and not _nodes_changed(current, settings)


def _nodes_changed(current: CurrentPublication, settings: Settings) -> bool:
    """Whether the DHT nodes differ from those of the current shards: every announced torrent carries them, no
    record does (a tracker change shows in every record's magnet), so a change rebuilds every torrent."""
    return list(current.dht_nodes) != list(dict.fromkeys(settings.dht_nodes))


def _build_content(
    settings: Settings,
    new_content: NewContent,
    state: StateCache,
    spec: BuildSpec,
    records: PackageRecords,
    fingerprints: Mapping[str, int],
    current: CurrentPublication | None,
    facts: Facts,
    destination: DestinationState,
    statuses: Sequence[MirrorStatus],
) -> SpoolRefs:
    """Torrents and metalinks of the records the current index does not hold (the objects of every record it
    holds are in the destination, published before its pointer), of the records whose objects the
    destination lost, and, when a mirror's status changed, every metalink again. Rows of `records.files`
    are chosen first; each record is made as its objects are."""
    files = records.files
    paths = files.paths
    if facts.unchanged:
        to_build = array("l")
    elif current is not None and _nodes_changed(current, settings):
        to_build = array("l", range(len(paths)))
    else:
        published = current.fingerprints if current else {}
        by_row = published.changed_rows(fingerprints) if isinstance(published, PublishedFingerprints) else None
        to_build = (
            by_row
            if by_row is not None
            else array("l", (row for row, path in enumerate(paths) if published.get(path) != fingerprints[path]))
        )
    objects = destination.whole
    building = bytearray(len(paths))
    for row in to_build:
        building[row] = 1
    held = (building[row] or _holds_package(objects, path, files.size_at(row)) for row, path in enumerate(paths))
    lost = [row for row, is_held in enumerate(held) if not is_held]
    if lost:
        log.warning(
            "%d torrents or metalinks the current index names are missing or altered in the destination "
            "(first: %s); putting them back",
            len(lost), paths[lost[0]],
        )  # fmt: skip
    refresh = facts.mirrors_changed and bool(settings.all_mirrors)
    # with a refresh every other metalink is built again anyway: only lost torrents need the whole package
    whole = to_build
    whole.extend(
        row for row in lost if not refresh or (files.size_at(row) > 0 and not objects.holds(torrent_key(paths[row])))
    )
    if not settings.allow_peer_only:
        _refuse_unserved(((paths[row], files.size_at(row)) for row in whole), spec, statuses)
    content = new_content.spool_all(iter_package_artifacts(_with_pieces(state, records.objects_at(whole)), spec))
    if refresh:
        for row in whole:
            building[row] = 1
        others = records.objects_at(row for row in range(len(paths)) if not building[row])
        content += new_content.spool_all(iter_package_artifacts(_with_pieces(state, others), spec, metalinks_only=True))
    return content


@dataclass(frozen=True)
class _Signed:
    pointer: Pointer  # current once this run's publication is complete
    pointer_sha256: str
    artifact: Artifact | None  # the new latest.asc; None: the current one stays (finish, refresh)
    index_objects: SpoolRefs  # the new index's shards, their torrents and deltas (publish only)
    keys: SpoolRefs  # the public signing key, armored and binary; the clients


def _sign(
    settings: Settings,
    run: _Run,
    spool: Spool,
    built: BuiltRecords,
    snapshot: Snapshot,
    decision: Decision,
    destination: DestinationState,
) -> _Signed:
    """publish: a new index (its shards) and pointer; resign: the pointer with a new expiry; finish and
    refresh: the current pointer as it is."""
    current = destination.current
    index_objects = spool.refs(())
    artifact: Artifact | None = None
    if decision.action in ("finish", "refresh"):
        assert current is not None
        pointer, pointer_sha256 = current.pointer, current.pointer_sha256
    else:
        if decision.action == "resign":
            assert current is not None
            pointer = replace(current.pointer, generated=rfc3339(run.started), expires=rfc3339(run.expires))
        else:
            objects = build_index_objects(
                spool=spool,
                settings=settings,
                public_url=run.public_url,
                sequence=decision.sequence,
                generated=run.started,
                expires=run.expires,
                shard_json=built.shards,
                previous=lambda name, part: shard_named(destination.pointer, name, part),
                previous_json=lambda shard: previous_shard_json(run.storage, shard),
            )
            pointer, index_objects = objects.pointer, objects.artifacts
            del objects
        artifact = make_artifact(POINTER_KEY, run.signer.sign_message(encode_pointer(pointer)))
        if len(artifact.data) > POINTER_MAX_BYTES:
            raise ConfigError(
                f"{POINTER_KEY}: {len(artifact.data):,} bytes with {len(pointer.shards):,} index shards, over the "
                f"{POINTER_MAX_BYTES:,} bytes clients read; publish fewer suites, components or architectures "
                "(suites, components, architectures) or split the snapshot into several publications"
            )
        pointer_sha256 = _sha256(artifact.data)
    from pipeline.render import client_artifacts  # lazy: jinja2 only when needed

    key_asc, key_gpg = run.signer.export_public_key()
    keys = spool.add_all(
        (
            make_artifact(SIGNING_KEY_ASC, key_asc),
            make_artifact(SIGNING_KEY_GPG, key_gpg),
            *client_artifacts(run.public_url, run.key.fingerprint),  # they name the key and the public URL
        )
    )
    return _Signed(pointer, pointer_sha256, artifact, index_objects, keys)


@dataclass(frozen=True)
class _Pages:
    listings: SpoolRefs  # rendered, sorted by key
    reused: PageDigests  # browse pages not rendered (unchanged, and held), with the SHA-256 of each
    others: frozenset[str]  # the pages that are not browse pages (a browse page's key names its directory)
    rows: PageDigests  # (key, inputs digest, SHA-256) of every rendered page


def _render(
    settings: Settings,
    run: _Run,
    spool: Spool,
    state: StateCache,
    snapshot: Snapshot,
    records: PackageRecords,
    built: BuiltRecords,
    mirrors: MirrorReport,
    pointer: Pointer,
    destination: DestinationState,
    memo: Mapping[str, tuple[str, str]],
    new_content: NewContent,
) -> _Pages:
    """Every listing page. A browse page whose inputs are those of the page published last time, and which
    the destination still holds as published, is not rendered again. A new browse page goes to the child
    writing the new content as it is rendered (`NewContent.add_page`)."""
    from pipeline.render import (
        KeptInEither,
        ListingInput,
        TemplateCodeFiles,
        iter_pages,
    )  # lazy: jinja2 only when needed

    listing_input = ListingInput(
        repo=settings.repo,
        snapshot_format=snapshot.format,
        public_url=run.public_url,
        pointer=pointer,
        fingerprint=run.key.fingerprint,
        records=records,
        page_digests=built.page_digests,
        webseeds=_webseeds_now(mirrors, run.spec.webseeds),
        webseeds_for=mirrors.webseeds_for if settings.all_mirrors else None,
        templates_dir=settings.templates_dir,
        mirrors=mirrors.statuses,
        dht_nodes=tuple(dict.fromkeys(settings.dht_nodes)),
        suites=snapshot.suites,
        components=snapshot.components,
        architectures=snapshot.architectures,
        snapshot_time=rfc3339(snapshot.timestamp) if snapshot.timestamp else None,
        compiled=KeptInEither(state, TemplateCodeFiles(user_cache_dir() / "templates")),
    )
    objects = destination.whole

    held: dict[str, str] = {}  # the page `unchanged` vouched for last: key -> SHA-256
    recalled = bool(memo)  # else a first run, or a new state: no page to look up (~10 µs a query)

    def unchanged(key: str, inputs: str) -> bool:
        remembered = memo.get(key) if recalled else None
        if remembered is None or remembered[0] != inputs or objects.sha256(key) != remembered[1]:
            return False
        held.clear()
        held[key] = remembered[1]
        return True

    rendered = array("q")  # spool entry numbers
    reused, rows = PageDigests(), PageDigests()
    others: set[str] = set()
    for page in iter_pages(listing_input, unchanged=unchanged):
        browse = page.key.startswith(BROWSE_PREFIX)
        if not browse:
            others.add(page.key)
        if page.artifact is None:
            reused.add(page.key, "", held[page.key])
            continue
        number = spool.put(page.artifact)
        rendered.append(number)
        if browse:
            new_content.add_page(number)
        # every page is remembered (so a no-change run can tell one the destination lost); pages rendered
        # on every run have no inputs digest ("")
        rows.add(page.key, page.inputs or "", spool.sha256(number))
    in_key_order = (number for _, number in sorted_by_key(rendered, spool.key))
    return _Pages(spool.refs(in_key_order), reused, frozenset(others), rows)


_FIXED_KEYS = (POINTER_KEY, *SIGNING_KEYS, *CLIENT_KEYS)


@dataclass(frozen=True)
class _Referenced:
    """Every key the new publication reaches (retention keeps them): each file's Metalink and (non-empty
    files) torrent, found by the file's path, and each directory's browse page, found by its directory (no
    set of every key), and the `others` (the other pages, index, pointer)."""

    files: FileTable
    others: frozenset[str]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self.others:
            return True
        directory = browse_directory(key)
        if directory is not None:
            return self.files.holds_directory(directory)
        package = package_of(key)
        if package is None:
            return False
        path, is_torrent = package
        row = self.files.row_of(path)
        return row is not None and (not is_torrent or self.files.size_at(row) > 0)


Changes = tuple[Sequence[str], tuple[str, ...], tuple[str, ...], int]  # new, changed, removed, unchanged count


def _no_changes(files: int) -> Changes:
    return (), (), (), files


def _report(
    run: _Run,
    mirrors: MirrorReport,
    pointer: Pointer | None,
    action: str,
    changes: Changes,
    *,
    plan: UploadPlan | None = None,
) -> RunReport:
    assert pointer is not None
    new, changed, removed, unchanged = changes
    return RunReport(
        action=action,
        sequence=pointer.sequence,
        dry_run=run.settings.dry_run,
        files=len(new) + len(changed) + unchanged,
        bytes_hashed=run.hashed[1],
        files_hashed=run.hashed[0],
        new=new,
        changed=changed,
        removed=removed,
        unchanged=unchanged,
        objects_put=len(plan.put) if plan else 0,
        objects_skipped=len(plan.skip) + plan.reused if plan else 0,
        bytes_put=plan.put_bytes if plan else 0,
        planned_keys=plan.put if plan else (),
        deleted_keys=plan.delete if plan else (),
        pointer_expires=pointer.expires,
        pointer_expires_epoch=int(datetime.fromisoformat(pointer.expires).timestamp()),
        key_fingerprint=run.key.fingerprint,
        key_expires_epoch=run.key.expires,
        stages=tuple(run.clock.stages),
        destination=run.storage.url,
        mirrors=tuple((m.url, m.status, m.detail) for m in mirrors.statuses),
    )


# What the records and the index are built from, besides the files: bump when package_records or the
# index's record layout changes, so a state cache written by an older mirrorseed never vouches for it.
RECORDS_RECIPE = "2"  # 2: the index is sharded (docs/sharded-index.md)
INPUTS_BATCH = 4096  # holders per digest update


def publication_inputs(settings: Settings, public_url: str, mirror_report: MirrorReport, files_digest: str) -> str:
    """A digest of everything the index's records and header depend on (description aside, like decide):
    the settings, the mirrors' statuses and who holds which file, and the files (`inputs_of_files`).

    Equal inputs give equal records, so a state cache that saw an index built from these inputs can
    vouch for it without the index being decoded and compared record by record.
    """
    head = json.dumps(
        [
            RECORDS_RECIPE,
            settings.repo,
            public_url,
            list(dict.fromkeys(m.url for m in settings.all_mirrors)),
            list(dict.fromkeys(settings.trackers)),
            [(m.url, m.webseed) for m in mirror_report.statuses],
            list(mirror_report.url_list),
        ]
        + ([list(dict.fromkeys(settings.dht_nodes))] if settings.dht_nodes else [])  # no churn for no nodes
    )
    digest = hashlib.sha256(head.encode("utf-8", "surrogateescape"))
    digest.update(b"\n" + files_digest.encode("ascii"))
    # the holders by path, a batch at a time: no string of every file at once
    holders = iter(mirror_report.holders.items())
    while batch := list(itertools.islice(holders, INPUTS_BATCH)):
        digest.update(b"\n" + repr(batch).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def inputs_of_files(digests: Digests, snapshot_format: str) -> str:
    """The files' part of the publication inputs: each file's path, size, digests, package fields and shards.
    The state remembers it with the tree's mark (`KnownScan`)."""
    # Fed line by line (the digest of the lines joined by "\n"): no string of every file at once. Read from the
    # table's columns: no FileEntry is made (~3 µs each, a million a run).
    digest = hashlib.sha256()
    files, known = digests.files, digests.known
    for row in range(len(files)):
        path, size, name, version, arch, _, sig = files.shown_at(row)
        sha256, piece_size, infohash = known[row]
        signature = None if sig is None else (sig.path, sig.size, sig.sha256)
        line = repr((path, size, sha256, piece_size, infohash, name, version, arch, signature,
                     shards_of_row(files, row, snapshot_format)))  # fmt: skip
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _holds_package(destination: Destination, path: str, size: int) -> bool:
    """Whether the destination holds, as written, the metalink and (non-empty files) the torrent of `path`."""
    return destination.holds(metalink_key(path)) and (size == 0 or destination.holds(torrent_key(path)))


def _lost(destination: Destination | DestinationProbe, files: Sequence[FileEntry], pages: Iterable[str]) -> bool:
    """Whether the destination lost (or holds altered) a signing key, a client, one of the `pages` of the
    publication built from `files` or a package object (index objects aside). A run that audits nothing
    probes only the objects that do not grow with the snapshot: package objects and browse pages wait for
    the audit."""
    fixed = (*SIGNING_KEYS, *CLIENT_KEYS)
    if isinstance(destination, DestinationProbe):
        return bool(destination.lost([*fixed, *(key for key in pages if not key.startswith(BROWSE_PREFIX))]))
    # of a FileTable, its columns: no FileEntry is made (~1 µs each, a million a run)
    if isinstance(files, FileTable):
        pairs: Iterable[tuple[str, int]] = zip(files.paths, files.sizes(), strict=True)
    else:
        pairs = ((entry.path, entry.size) for entry in files)
    return bool(destination.lost([*fixed, *pages])) or not all(
        _holds_package(destination, path, size) for path, size in pairs
    )


def _tracker_whitelist(settings: Settings, pointer: Pointer, packages: Iterable[tuple[str, str | None]]) -> None:
    """The tracker may track the index torrent and the package torrents of the current publication
    (never-announced packages aside)."""
    if settings.tracker_whitelist is None or settings.dry_run:
        return
    patterns = settings.never_announce
    known = (h for path, h in packages if h is not None and not never_announced(patterns, path))
    update_whitelist(settings.tracker_whitelist, [*pointer.infohashes, *known], pid_file=settings.tracker_pid_file)


def _refuse_unserved(files: Iterable[tuple[str, int]], spec: BuildSpec, statuses: Sequence[MirrorStatus]) -> None:
    """A torrent (a non-empty file of `files`, (path, size) each) without a webseed depends on peers alone:
    refuse to publish one unless the operator said a seed box serves it (`allow_peer_only`). `invoke
    verify` applies the same rule."""
    unserved = [path for path, size in files if size > 0 and not webseed_bases(spec, path)]
    if not unserved:
        return
    more = f" and {len(unserved) - 1} more" if len(unserved) > 1 else ""
    if not spec.webseeds:
        why = "no webseed is configured; add --webseed URL (or [[mirrorseed.mirrors]] in mirror.toml)"
    else:
        shown = "; ".join(f"{m.url}: {m.status}{f' ({m.detail})' if m.detail else ''}" for m in statuses)
        why = f"no webseed holds them ({shown}); fix the mirror URLs or bring the mirrors up"
    raise ConfigError(
        f"{unserved[0]}{more}: no webseed would serve this torrent, so downloads would depend on peers alone: "
        f"{why}, or pass --allow-peer-only (allow_peer_only = true) if a seed box of yours serves them"
    )


def probe_limits(settings: Settings) -> ProbeLimits:
    """The mirror probes' part of the settings."""
    from pipeline.mirrors import ProbeLimits

    return ProbeLimits(
        timeout=float(settings.mirror_timeout),
        budget=settings.mirror_budget,
        concurrency=settings.mirror_concurrency,
        down_runs=settings.mirror_down_runs,
        down_after=settings.mirror_down_after,
    )


def _check_mirrors(
    settings: Settings,
    files: Sequence[ProbeFile],
    snapshot_time: datetime | None,
    state: StateCache,
    now: datetime,
    progress: Progress,
) -> MirrorReport:
    """Probe the mirrors (every one, --webseed included): only a mirror verified to hold a file serves it."""
    from pipeline.mirrors import MirrorReport, check_mirrors

    if not settings.all_mirrors:
        return MirrorReport()
    return check_mirrors(
        settings.all_mirrors,
        files,
        pieces_of=state.pieces_many,
        state=state,
        snapshot_time=snapshot_time,
        now=now,
        limits=probe_limits(settings),
        progress=progress,
    )


def _webseeds_now(report: MirrorReport, configured: Sequence[str]) -> tuple[str, ...]:
    """The mirrors the listings present as webseeds: those in url-lists this run (all when none is probed)."""
    if not report.statuses:
        return tuple(configured)
    return tuple(m.url for m in report.statuses if m.webseed)


def _mirror_summary(statuses: Sequence[MirrorStatus]) -> list[tuple[str, str, bool]]:
    """What of the mirrors' status the published metalinks and pages depend on (not the volatile lag)."""
    return sorted((m.url.rstrip("/"), m.status, m.webseed) for m in statuses)


def _published_mirror_summary(storage: Storage) -> list[tuple[str, str, bool]]:
    stored = storage.get(MIRRORS_JSON_KEY)
    if stored is None:
        return []
    try:
        doc = loads_strict(stored.data, what=MIRRORS_JSON_KEY)
        return sorted((str(m["url"]).rstrip("/"), str(m["status"]), bool(m["webseed"])) for m in doc["mirrors"])
    except (ValueError, KeyError, TypeError):
        return [("unreadable", "", False)]


def _with_pieces(state: StateCache, facts: Iterable[ObjectFacts]) -> Iterator[tuple[ObjectFacts, bytes]]:
    """Each package's facts with its piece hashes from the state cache (b"" for an empty file), one query per batch."""
    rest = iter(facts)
    while batch := list(itertools.islice(rest, PIECES_BATCH)):
        pieces = state.pieces_many([f.path for f in batch if f.size > 0])
        for fact in batch:
            yield fact, pieces[fact.path] if fact.size > 0 else b""
