"""release(): composes the stages in their fixed order and returns a RunReport.

scan -> hash -> build -> (read current publication) -> decide -> index + sign -> render -> publish
Only `publish` writes to the destination, and only after every check has passed.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import MirrorConfig, Settings, require_release_inputs
from pipeline.errors import PipelineError, StorageError
from pipeline.hashing import check_expected, iter_hashed, piece_size_for
from pipeline.index import (
    Decision,
    decide,
    decode_index,
    decode_pointer,
    encode_index_stream,
    encode_pointer,
    index_key,
    index_torrent_key,
    iter_index,
    record_fingerprints,
    resign_due,
    rfc3339,
)
from pipeline.jsondoc import loads_strict
from pipeline.model import (
    Artifact,
    FileDigest,
    FileEntry,
    IndexRef,
    MirrorStatus,
    NullProgress,
    PackageRecord,
    Pointer,
    Progress,
    Snapshot,
)
from pipeline.objects import make_artifact
from pipeline.publish import Publication, UploadPlan, is_complete, publish
from pipeline.report import RunReport
from pipeline.signing import Signer, verify_detached, verify_signed_message
from pipeline.snapshot import ScanSpec, scan_snapshot
from pipeline.spool import Spool, SpooledArtifact
from pipeline.state import PIECES_BATCH, CachedFile, StateCache, StateRow
from pipeline.storage import Storage, open_storage
from pipeline.torrents import (
    BuildSpec,
    build_torrent,
    digest_of,
    hash_pieces_of_bytes,
    iter_package_artifacts,
    package_records,
)
from pipeline.urls import join_url, magnet_uri

if TYPE_CHECKING:
    from pipeline.mirrors import MirrorReport

log = logging.getLogger(__name__)

POINTER_KEY = "latest.asc"


@dataclass(frozen=True)
class CurrentPointer:
    """The verified `latest.asc` in the destination when the run starts."""

    pointer: Pointer
    etag: str
    pointer_sha256: str


@dataclass(frozen=True)
class CurrentPublication:
    """What `latest.asc` in the destination names when the run starts.

    `fingerprints` maps every path the index lists to `hash()` of its PackageRecord (equal records,
    description aside, hash equal): enough to tell what changed without keeping ~63,000 records.
    """

    pointer: Pointer
    etag: str
    pointer_sha256: str
    fingerprints: Mapping[str, int]
    webseeds: tuple[str, ...]
    trackers: tuple[str, ...]


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


def _index_bytes(storage: Storage, pointer: Pointer) -> bytes:
    """The index object `pointer` names, checked against the pointer's size and SHA-256."""
    index_object = storage.get(pointer.index.path)
    if index_object is None:
        raise StorageError(f"{pointer.index.path}: named by {POINTER_KEY} but missing from the destination")
    if index_object.info.size != pointer.index.size or _sha256(index_object.data) != pointer.index.sha256:
        raise StorageError(f"{pointer.index.path}: size or SHA-256 differs from {POINTER_KEY}; the index was altered")
    return index_object.data


def read_index(storage: Storage, current: CurrentPointer) -> CurrentPublication:
    """The index the current pointer names, reduced to one fingerprint per path (read streaming)."""
    data = _index_bytes(storage, current.pointer)
    index = iter_index(data, uncompressed_size=current.pointer.index.uncompressed_size)
    try:
        fingerprints = record_fingerprints(PackageRecord.from_json(doc) for doc in index.packages())
    except (KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{current.pointer.index.path}: a package entry is malformed ({exc!r}); re-publish") from exc
    return CurrentPublication(
        pointer=current.pointer,
        etag=current.etag,
        pointer_sha256=current.pointer_sha256,
        fingerprints=fingerprints,
        webseeds=tuple(index.header["webseeds"]),
        trackers=tuple(index.header["trackers"]),
    )


def read_current(storage: Storage, *, repo: str, keyring: Path, fingerprint: str) -> CurrentPublication | None:
    """Read and verify the current pointer and the index it names; None on a fresh destination."""
    current = read_pointer(storage, repo=repo, keyring=keyring, fingerprint=fingerprint)
    return None if current is None else read_index(storage, current)


def published_records(storage: Storage, pointer: Pointer) -> tuple[PackageRecord, ...]:
    """Every record of the index `pointer` names (the whole list in memory: demo and checks only)."""
    doc = decode_index(_index_bytes(storage, pointer), uncompressed_size=pointer.index.uncompressed_size)
    return tuple(PackageRecord.from_json(p) for p in doc["packages"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Digests:
    """What is known of every file's content, by path; the piece hashes stay in the state cache (read
    back when a torrent is built). FileDigest objects are made only when records are built: a no-change
    run never needs them."""

    files: tuple[FileEntry, ...]  # sorted by path
    known: Mapping[str, CachedFile]  # path -> (sha256, piece size, infohash)
    files_hashed: int
    bytes_hashed: int

    def rows(self) -> Iterator[tuple[FileEntry, CachedFile]]:
        known = self.known
        for entry in self.files:
            yield entry, known[entry.path]

    def digests(self) -> list[FileDigest]:
        return [FileDigest(entry, *facts) for entry, facts in self.rows()]


STORE_BATCH = 1024  # hashed files written to the state cache per transaction


def digest_files(files: Sequence[FileEntry], state: StateCache, *, workers: int, progress: Progress) -> Digests:
    """Hash only the files whose stat key the state cache does not know; remember what was hashed.

    Piece hashes go to the state cache as files are hashed and are not kept: ~63,000 Debian packages
    carry ~110 MB of them.
    """
    known = state.lookup(files)
    misses = [entry for entry in files if entry.path not in known]
    rows: list[StateRow] = []
    for item in iter_hashed(misses, workers=workers, progress=progress):
        digest = digest_of(item)
        known[item.entry.path] = CachedFile(digest.sha256, digest.piece_size, digest.infohash)
        rows.append(StateRow(item.entry, item.sha256, item.piece_size, digest.infohash, item.pieces))
        if len(rows) >= STORE_BATCH:
            state.store(rows)
            rows = []
    state.store(rows)
    if misses or state.file_count() != len(files):
        state.forget_except(entry.path for entry in files)
    check_expected((entry, known[entry.path].sha256) for entry in files if entry.expected_sha256 is not None)
    return Digests(tuple(files), known, files_hashed=len(misses), bytes_hashed=sum(entry.size for entry in misses))


@dataclass(frozen=True)
class IndexObjects:
    pointer: Pointer
    artifacts: tuple[Artifact, ...]


def build_index_objects(
    *,
    settings: Settings,
    public_url: str,
    sequence: int,
    generated: datetime,
    expires: datetime,
    records: Sequence[PackageRecord],
    signer: Signer,
    existing_signature: Callable[[str, bytes], bytes | None] = lambda key, data: None,
) -> IndexObjects:
    """The compressed index, its detached signature, its multi-file torrent, and the pointer naming them.

    `existing_signature(key, data)` returns a valid signature already published for these exact index
    bytes (a run that died before its pointer, re-run within the same second): index objects are
    create-only, so it is reused rather than replaced.
    """
    encoded = encode_index_stream(
        repo=settings.repo,
        sequence=sequence,
        generated=generated,
        webseeds=[m.url for m in settings.all_mirrors],
        trackers=settings.trackers,
        records=records,
    )
    zst_key = index_key(sequence, encoded.sha256)
    signature = existing_signature(zst_key, encoded.data) or signer.sign_detached(encoded.data)
    torrent_key = index_torrent_key(sequence, encoded.sha256)
    name = zst_key.split("/")[1]
    piece_size = piece_size_for(len(encoded.data) + len(signature))
    torrent, infohash = build_torrent(
        name=name,
        files=[("index.json.zst", len(encoded.data)), ("index.json.zst.sig", len(signature))],
        length=None,
        piece_size=piece_size,
        pieces=hash_pieces_of_bytes([encoded.data, signature], piece_size),
        webseeds=[join_url(public_url, "index") + "/"],
        trackers=settings.trackers,
    )
    pointer = Pointer(
        repo=settings.repo,
        sequence=sequence,
        generated=rfc3339(generated),
        expires=rfc3339(expires),
        index=IndexRef(zst_key, encoded.size, encoded.uncompressed_size, encoded.sha256),
        index_torrent=torrent_key,
        infohash=infohash,
        magnet=magnet_uri(
            infohash=infohash,
            name=name,
            trackers=settings.trackers,
            webseeds=[join_url(public_url, "index") + "/"],
            torrent_url=join_url(public_url, torrent_key),
        ),
    )
    artifacts = (
        make_artifact(zst_key, encoded.data),
        make_artifact(zst_key + ".sig", signature),
        make_artifact(torrent_key, torrent),
    )
    return IndexObjects(pointer, artifacts)


def _changes(
    current: CurrentPublication | None, fingerprints: Mapping[str, int]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]:
    before = current.fingerprints if current else {}
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
        with Spool() as spool:
            return _release(settings, spool, progress or NullProgress(), now or (lambda: datetime.now(UTC)))
    finally:
        gc.unfreeze()


def _settle() -> None:
    """Move what exists now (the scan's ~3 objects a file, later the records) out of the garbage collector's
    way: they live until the run ends, and each full collection would walk all of them again (~90 ms
    at 60,000 files). `release` unfreezes them when it returns."""
    gc.freeze()


def _release(settings: Settings, spool: Spool, progress: Progress, now: Callable[[], datetime]) -> RunReport:
    require_release_inputs(settings)
    assert settings.snapshot is not None and settings.key is not None and settings.public_url is not None
    clock = StageClock()
    started = now().replace(microsecond=0)
    expires = started + settings.expires_after
    public_url = settings.public_url.rstrip("/")
    mirror_urls = tuple(m.url for m in settings.all_mirrors)
    spec = BuildSpec(webseeds=mirror_urls, trackers=settings.trackers, public_url=public_url)

    with clock.stage("start-up"):
        storage = open_storage(settings.dest, settings)
        probe = getattr(storage, "probe_conditional_writes", None)
        if probe is not None and not settings.no_cas and not settings.dry_run:
            probe()
        signer = Signer(gnupghome=settings.gnupghome, key=settings.key)
        key_info = signer.check_key(must_be_valid_until=expires + settings.key_valid_margin)

    with clock.stage("scan"):
        snapshot = scan_snapshot(
            ScanSpec(
                root=settings.snapshot,
                format=settings.format,
                suites=settings.suites,
                components=settings.components,
                architectures=settings.architectures,
                upstream_keyring=settings.upstream_keyring,
                sync_lock=settings.sync_lock,
            )
        )
    with StateCache.open(settings.state_path, repo=settings.repo) as state:
        with clock.stage("hash"):
            digested = digest_files(snapshot.files, state, workers=settings.workers, progress=progress)
        file_count, files_hashed, bytes_hashed = len(snapshot.files), digested.files_hashed, digested.bytes_hashed
        _settle()
        with clock.stage("mirrors"):
            mirror_report = _check_mirrors(settings, snapshot, digested, state, started, progress)
            spec = replace(
                spec,
                webseeds_for=mirror_report.webseeds_for,
                metalink_urls_for=mirror_report.metalink_urls_for,
            )
            mirrors_changed = _mirror_summary(mirror_report.statuses) != _published_mirror_summary(storage)
        with clock.stage("read-current"), signer.keyring() as keyring:
            current_pointer = read_pointer(
                storage, repo=settings.repo, keyring=keyring, fingerprint=key_info.fingerprint
            )
        with clock.stage("build"):
            inputs = publication_inputs(settings, public_url, digested, mirror_report)

        def report(
            pointer: Pointer,
            action: str,
            changes: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int],
            *,
            plan: UploadPlan | None = None,
        ) -> RunReport:
            new, changed, removed, unchanged = changes
            return RunReport(
                action=action,
                sequence=pointer.sequence,
                dry_run=settings.dry_run,
                files=file_count,
                bytes_hashed=bytes_hashed,
                files_hashed=files_hashed,
                new=new,
                changed=changed,
                removed=removed,
                unchanged=unchanged,
                objects_put=len(plan.put) if plan else 0,
                objects_skipped=len(plan.skip) if plan else 0,
                bytes_put=plan.put_bytes if plan else 0,
                planned_keys=plan.put if plan else (),
                deleted_keys=plan.delete if plan else (),
                pointer_expires=pointer.expires,
                pointer_expires_epoch=int(datetime.fromisoformat(pointer.expires).timestamp()),
                key_fingerprint=key_info.fingerprint,
                key_expires_epoch=key_info.expires,
                stages=tuple(clock.stages),
                destination=storage.url,
                mirrors=tuple((m.url, m.status, m.detail) for m in mirror_report.statuses),
            )

        # The common case after a sync with nothing new: this state cache remembers that the index the
        # current pointer names was built from exactly these inputs. Nothing is decoded or rebuilt.
        if (
            current_pointer is not None
            and not mirrors_changed
            and state.publication_inputs(current_pointer.pointer.index.sha256) == inputs
            and is_complete(storage, current_pointer.pointer_sha256)
            and not resign_due(current_pointer.pointer, started, settings.effective_resign_before)
        ):
            with clock.stage("read-current"):
                _index_bytes(storage, current_pointer.pointer)  # still there, intact
            return report(current_pointer.pointer, "noop", ((), (), (), file_count))

        with clock.stage("build"):
            records = package_records(digested.digests(), spec)
            fingerprints = record_fingerprints(records)
            del digested
            _settle()
        with clock.stage("read-current"):
            current = None if current_pointer is None else read_index(storage, current_pointer)
        decision: Decision = decide(
            current=current.pointer if current else None,
            current_fingerprints=current.fingerprints if current else None,
            current_webseeds=current.webseeds if current else (),
            current_trackers=current.trackers if current else (),
            fingerprints=fingerprints,
            webseeds=mirror_urls,
            trackers=settings.trackers,
            now=started,
            resign_before=settings.effective_resign_before,
        )
        changes = _changes(current, fingerprints)
        action: str = decision.action
        if action == "noop":
            assert current is not None
            if not is_complete(storage, current.pointer_sha256):
                action = "finish"  # a run committed this pointer but died before its listings: finish them
            elif mirrors_changed:
                action = "refresh"  # same packages, but a mirror's status changed: metalinks and pages show it
        if action == "noop":
            assert current is not None
            if not settings.dry_run:
                state.remember_publication(current.pointer.index.sha256, inputs)
            return report(current.pointer, action, changes)

        with clock.stage("build"):
            # Torrents and metalinks only for records the current index does not already hold: the
            # objects of every record it holds are in the destination (published before its pointer).
            published = current.fingerprints if current else {}
            to_build = [r for r in records if published.get(r.path) != fingerprints[r.path]]
            content = spool.add_all(iter_package_artifacts(_with_pieces(state, to_build), spec))
            if mirrors_changed and settings.all_mirrors:
                unchanged_records = [r for r in records if published.get(r.path) == fingerprints[r.path]]
                content += spool.add_all(
                    iter_package_artifacts(_with_pieces(state, unchanged_records), spec, metalinks_only=True)
                )
            del to_build, published

        with clock.stage("sign"):
            index_refs: tuple[SpooledArtifact, ...] = ()
            pointer_artifact: Artifact | None = None
            if action in ("finish", "refresh"):
                assert current is not None
                pointer, pointer_sha256 = current.pointer, current.pointer_sha256
            elif action == "resign":
                assert current is not None
                pointer = replace(current.pointer, generated=rfc3339(started), expires=rfc3339(expires))
            else:
                objects = build_index_objects(
                    settings=settings,
                    public_url=public_url,
                    sequence=decision.sequence,
                    generated=started,
                    expires=expires,
                    records=records,
                    signer=signer,
                    existing_signature=lambda key, data: _published_signature(storage, key, data, signer),
                )
                pointer, index_refs = objects.pointer, spool.add_all(objects.artifacts)
                del objects
            if action not in ("finish", "refresh"):
                pointer_artifact = make_artifact(POINTER_KEY, signer.sign_message(encode_pointer(pointer)))
                pointer_sha256 = _sha256(pointer_artifact.data)
            key_asc, key_gpg = signer.export_public_key()
            content += spool.add_all(
                (make_artifact("signing-key.asc", key_asc), make_artifact("signing-key.gpg", key_gpg))
            )

        with clock.stage("render"):
            from pipeline.render import ListingInput, iter_pages, render_only  # lazy: jinja2 only when needed

            listing_input = ListingInput(
                repo=settings.repo,
                snapshot_format=snapshot.format,
                public_url=public_url,
                pointer=pointer,
                fingerprint=key_info.fingerprint,
                records=records,
                webseeds=_webseeds_now(mirror_report, mirror_urls),
                webseeds_for=mirror_report.webseeds_for if settings.all_mirrors else None,
                templates_dir=settings.templates_dir,
                mirrors=mirror_report.statuses,
                suites=snapshot.suites,
                components=snapshot.components,
                architectures=snapshot.architectures,
                snapshot_time=rfc3339(snapshot.timestamp) if snapshot.timestamp else None,
            )
            # A browse page whose inputs are those of the page published last time is not rendered
            # again (publish renders it after all if the destination no longer holds that copy).
            memo = state.page_memo()
            rendered: list[SpooledArtifact] = []
            reused: dict[str, str] = {}
            page_rows: list[tuple[str, str, str]] = []
            page_keys: list[str] = []
            for page in iter_pages(listing_input, unchanged=lambda key, inputs: memo.get(key, ("",))[0] == inputs):
                page_keys.append(page.key)
                if page.artifact is None:
                    assert page.inputs is not None
                    reused[page.key] = memo[page.key][1]
                    continue
                ref = spool.add(page.artifact)
                rendered.append(ref)
                if page.inputs is not None:
                    page_rows.append((ref.key, page.inputs, ref.sha256))
            memo.clear()
            listings = tuple(sorted(rendered, key=lambda ref: ref.key))
            # keeps listing_input (the records) alive through publish, only when a page may be re-rendered
            render_again = functools.partial(render_only, listing_input) if reused else None

        index_keys = (pointer.index.path, pointer.index.path + ".sig", pointer.index_torrent)
        pointer_etag = current.etag if current else None
        referenced = frozenset(
            [r.metalink for r in records]
            + [r.torrent for r in records if r.torrent is not None]
            + page_keys
            + [*index_keys, POINTER_KEY, "signing-key.asc", "signing-key.gpg"]
        )
        # Publishing needs only the spooled objects and the keys: drop the per-file values first (~130 MB
        # at 63,000 packages) so that the upload plan and manifest reuse their memory.
        del records, fingerprints, snapshot, current, listing_input
        with clock.stage("publish"):
            result = publish(
                storage,
                Publication(
                    spool=spool,
                    content=content,
                    immutable=index_refs,
                    pointer=pointer_artifact,
                    pointer_etag=pointer_etag,
                    listings=listings,
                    referenced=referenced,
                    pointer_sha256=pointer_sha256,
                    reused=reused,
                    render=render_again or (lambda keys: ()),
                ),
                dry_run=settings.dry_run,
                progress=progress,
                now=started,
                retention=settings.retention,
                use_cas=not settings.no_cas,
            )
        if result.written:
            state.remember_publication(pointer.index.sha256, inputs)
            state.remember_pages(page_rows, keep=page_keys)
    return report(pointer, action, changes, plan=result.plan)


# What the records and the index are built from, besides the files: bump when package_records or the
# index's record layout changes, so a state cache written by an older mirrorseed never vouches for it.
RECORDS_RECIPE = "1"


def publication_inputs(settings: Settings, public_url: str, digests: Digests, mirror_report: MirrorReport) -> str:
    """A digest of everything the index's records and header depend on (description aside, like decide).

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
    )
    holders = mirror_report.holders
    lines = [head]
    for e, (sha256, piece_size, infohash) in digests.rows():
        signature = None if e.signature is None else (e.signature.path, e.signature.size, e.signature.sha256)
        lines.append(
            repr((e.path, e.size, sha256, piece_size, infohash, e.name, e.version, e.arch, signature,
                  holders.get(e.path)))
        )  # fmt: skip
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _published_signature(storage: Storage, key: str, data: bytes, signer: Signer) -> bytes | None:
    """The destination's signature of index `key` if it holds exactly `data` and the signature is ours."""
    stored = storage.get(key)
    signature = storage.get(key + ".sig") if stored is not None and stored.data == data else None
    if signature is None:
        return None
    with signer.keyring() as keyring:
        try:
            verify_detached(data, signature.data, keyring=keyring, fingerprint=signer.fingerprint)
        except PipelineError:
            return None
    return signature.data


def _check_mirrors(
    settings: Settings, snapshot: Snapshot, digested: Digests, state: StateCache, now: datetime, progress: Progress
) -> MirrorReport:
    """Probe the mirrors (every one, --webseed included): only a mirror verified to hold a file serves it."""
    from pipeline.mirrors import MirrorReport, ProbeLimits, check_mirrors, probe_files

    if not settings.all_mirrors:
        return MirrorReport()
    return check_mirrors(
        settings.all_mirrors,
        probe_files(digested.rows()),
        pieces_of=state.pieces_many,
        state=state,
        snapshot_time=snapshot.timestamp,
        now=now,
        limits=ProbeLimits.from_settings(settings),
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
    stored = storage.get("mirrors/mirrors.json")
    if stored is None:
        return []
    try:
        doc = loads_strict(stored.data, what="mirrors/mirrors.json")
        return sorted((str(m["url"]).rstrip("/"), str(m["status"]), bool(m["webseed"])) for m in doc["mirrors"])
    except (ValueError, KeyError, TypeError):
        return [("unreadable", "", False)]


def _with_pieces(state: StateCache, records: Sequence[PackageRecord]) -> Iterator[tuple[PackageRecord, bytes]]:
    """Each record with its piece hashes from the state cache (b"" for an empty file), one query per batch."""
    for start in range(0, len(records), PIECES_BATCH):
        batch = records[start : start + PIECES_BATCH]
        pieces = state.pieces_many([r.path for r in batch if r.size > 0])
        for record in batch:
            yield record, pieces[record.path] if record.size > 0 else b""


DEMO_PUBLIC_PORT = 8780
DEMO_MIRROR_PORT = 8781


@dataclass(frozen=True)
class DemoResult:
    report: RunReport
    recipe: str
    fetched: str
    public_url: str
    mirror_url: str


def run_demo(
    *,
    cache_dir: Path,
    dest: Path,
    serve: bool = False,
    progress: Progress | None = None,
    announce: Callable[[str], None] = lambda line: None,
    wait: Callable[[], None] | None = None,
    public_port: int = DEMO_PUBLIC_PORT,
    mirror_port: int = DEMO_MIRROR_PORT,
) -> DemoResult:
    """`invoke demo`: demo snapshot + demo key -> publish to `dest` through release() -> serve both on
    loopback -> run the front page's user recipe (aria2c, gpgv, sha256sum) in a scratch dir -> check it."""
    import subprocess

    from pipeline.demo import build_demo_snapshot, demo_key
    from pipeline.render import example_package
    from pipeline.serve import serve_directory

    public_url = f"http://127.0.0.1:{public_port}"
    mirror_url = f"http://127.0.0.1:{mirror_port}"
    announce(f"demo: building the demo Debian snapshot in {cache_dir} (cached after the first run)")
    snapshot = build_demo_snapshot(cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        servers = (serve_directory(dest, port=public_port), serve_directory(snapshot.root, port=mirror_port))
    except OSError as exc:
        raise PipelineError(
            f"127.0.0.1:{public_port}/{mirror_port}: cannot listen ({exc.strerror}); stop the other demo and retry"
        ) from exc
    with servers[0], servers[1]:
        announce(f"demo: mirror of the snapshot at {mirror_url}/ (probed before it becomes a webseed)")
        with demo_key(cache_dir) as key:
            settings = Settings(
                snapshot=snapshot.root,
                format="debian",
                dest=str(dest),
                public_url=public_url,
                repo="demo",
                mirrors=(
                    MirrorConfig(
                        url=mirror_url, country="DE", continent="EU", name="demo mirror (loopback)", priority=1
                    ),
                ),
                key=key.fingerprint,
                gnupghome=key.gnupghome,
            )
            announce(f"demo: publishing {snapshot.package_count} packages to {dest} with DEMO key {key.fingerprint}")
            report = release(settings, progress=progress)
            with Signer(gnupghome=key.gnupghome, key=key.fingerprint).keyring() as keyring:
                current = read_pointer(
                    open_storage(str(dest)), repo="demo", keyring=keyring, fingerprint=key.fingerprint
                )
        assert current is not None
        example = example_package(published_records(open_storage(str(dest)), current.pointer))
        if example is None:
            raise PipelineError("demo: the demo snapshot has no package to fetch; delete .demo/ and run again")
        recipe = front_page_recipe((dest / "index.html").read_text(encoding="utf-8"))
        announce(f"demo: destination served at {public_url}/index.html")
        announce(f"demo: fetching {example.path} with aria2 exactly as the front page says")
        with tempfile.TemporaryDirectory(prefix="mirrorseed-demo-user-") as scratch:
            done = subprocess.run(
                ["bash", "-c", recipe], cwd=scratch, capture_output=True, text=True, timeout=300, check=False
            )
            if done.returncode != 0:
                tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise PipelineError(f"demo: the user recipe failed (exit {done.returncode}): {tail}")
            fetched = Path(scratch) / "packages" / example.path.rsplit("/", 1)[-1]
            if not fetched.is_file() or _sha256(fetched.read_bytes()) != example.sha256:
                raise PipelineError(f"demo: {fetched.name} was not fetched intact by the recipe")
        announce(f"demo: fetched {example.path} ({example.size} bytes), SHA-256 matches the signed index")
        if serve:
            announce("demo: serving until Ctrl-C")
            (wait or _wait_forever)()
    return DemoResult(report, recipe, example.path, public_url, mirror_url)


def front_page_recipe(front_page: str) -> str:
    """The first copy-paste recipe of a published front page, as a user copies it."""
    import html
    import re

    found = re.search(r'<pre class="recipe"><code>(.*?)</code></pre>', front_page, re.DOTALL)
    if found is None:
        raise PipelineError("index.html: no recipe on the front page; check templates_dir")
    return html.unescape(found.group(1))


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
