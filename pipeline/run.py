"""release(): composes the stages in their fixed order and returns a RunReport.

scan -> hash -> build -> (read current publication) -> decide -> index + sign -> render -> publish
Only `publish` writes to the destination, and only after every check has passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import MirrorConfig, Settings, require_release_inputs
from pipeline.errors import PipelineError, StorageError
from pipeline.hashing import check_expected, hash_files, piece_size_for
from pipeline.index import (
    Decision,
    decide,
    decode_index,
    decode_pointer,
    encode_index,
    encode_pointer,
    index_document,
    index_key,
    index_torrent_key,
    rfc3339,
)
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
from pipeline.publish import Publication, is_complete, publish
from pipeline.report import RunReport
from pipeline.signing import Signer, verify_detached, verify_signed_message
from pipeline.snapshot import ScanSpec, scan_snapshot
from pipeline.state import StateCache, StateRow
from pipeline.storage import Storage, open_storage
from pipeline.torrents import (
    BuildSpec,
    build_torrent,
    digest_of,
    hash_pieces_of_bytes,
    package_artifacts,
    package_records,
)
from pipeline.urls import join_url, magnet_uri

if TYPE_CHECKING:
    from pipeline.mirrors import MirrorReport

log = logging.getLogger(__name__)

POINTER_KEY = "latest.asc"


@dataclass(frozen=True)
class CurrentPublication:
    """What `latest.asc` in the destination names when the run starts."""

    pointer: Pointer
    etag: str
    pointer_sha256: str
    records: tuple[PackageRecord, ...]
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


def read_current(storage: Storage, *, repo: str, keyring: Path, fingerprint: str) -> CurrentPublication | None:
    """Read and verify the current pointer and the index it names; None on a fresh destination."""
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
    index_object = storage.get(pointer.index.path)
    if index_object is None:
        raise StorageError(f"{pointer.index.path}: named by {POINTER_KEY} but missing from the destination")
    if index_object.info.size != pointer.index.size or _sha256(index_object.data) != pointer.index.sha256:
        raise StorageError(f"{pointer.index.path}: size or SHA-256 differs from {POINTER_KEY}; the index was altered")
    doc = decode_index(index_object.data, uncompressed_size=pointer.index.uncompressed_size)
    return CurrentPublication(
        pointer=pointer,
        etag=stored.info.etag,
        pointer_sha256=_sha256(stored.data),
        records=tuple(PackageRecord.from_json(p) for p in doc["packages"]),
        webseeds=tuple(doc["webseeds"]),
        trackers=tuple(doc["trackers"]),
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Digests:
    """Every file's digest, and the piece hashes of the files hashed in this run."""

    digests: tuple[FileDigest, ...]
    fresh_pieces: dict[str, bytes]
    files_hashed: int
    bytes_hashed: int


def digest_files(files: Sequence[FileEntry], state: StateCache, *, workers: int, progress: Progress) -> Digests:
    """Hash only the files whose stat key the state cache does not know; remember what was hashed."""
    cached = state.lookup(files)
    misses = [entry for entry in files if entry.path not in cached]
    hashed = hash_files(misses, workers=workers, progress=progress, verify_expected=False)
    fresh = [digest_of(item) for item in hashed]
    state.store(
        StateRow(d.entry, d.sha256, d.piece_size, d.infohash, item.pieces)
        for d, item in zip(fresh, hashed, strict=True)
    )
    state.forget_except(entry.path for entry in files)
    digests = [
        FileDigest(entry, cached[entry.path].sha256, cached[entry.path].piece_size, cached[entry.path].infohash)
        for entry in files
        if entry.path in cached
    ] + fresh
    check_expected((d.entry, d.sha256) for d in digests)
    return Digests(
        digests=tuple(digests),
        fresh_pieces={item.entry.path: item.pieces for item in hashed},
        files_hashed=len(hashed),
        bytes_hashed=sum(entry.size for entry in misses),
    )


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
    doc = index_document(
        repo=settings.repo,
        sequence=sequence,
        generated=generated,
        webseeds=[m.url for m in settings.all_mirrors],
        trackers=settings.trackers,
        packages=records,
    )
    encoded = encode_index(doc)
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
    current: CurrentPublication | None, records: Sequence[PackageRecord]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]:
    before = {r.path: r for r in current.records} if current else {}
    after = {r.path: r for r in records}
    new = tuple(sorted(p for p in after if p not in before))
    removed = tuple(sorted(p for p in before if p not in after))
    changed = tuple(sorted(p for p in after if p in before and before[p] != after[p]))
    unchanged = len(after) - len(new) - len(changed)
    return new, changed, removed, unchanged


def release(
    settings: Settings,
    *,
    progress: Progress | None = None,
    now: Callable[[], datetime] | None = None,
) -> RunReport:
    """The operator's job: publish `settings.snapshot` to `settings.dest` (or plan it, with dry_run)."""
    require_release_inputs(settings)
    assert settings.snapshot is not None and settings.key is not None and settings.public_url is not None
    progress = progress or NullProgress()
    clock = StageClock()
    started = (now or (lambda: datetime.now(UTC)))().replace(microsecond=0)
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
        with clock.stage("mirrors"):
            mirror_report = _check_mirrors(settings, snapshot, digested, state, started, progress)
            spec = replace(
                spec,
                webseeds_for=mirror_report.webseeds_for,
                metalink_urls_for=mirror_report.metalink_urls_for,
            )
        with clock.stage("build"):
            records = package_records(digested.digests, spec)

        with clock.stage("read-current"), signer.keyring() as keyring:
            current = read_current(storage, repo=settings.repo, keyring=keyring, fingerprint=key_info.fingerprint)
        decision: Decision = decide(
            current=current.pointer if current else None,
            current_records=current.records if current else None,
            current_webseeds=current.webseeds if current else (),
            current_trackers=current.trackers if current else (),
            records=records,
            webseeds=mirror_urls,
            trackers=settings.trackers,
            now=started,
            resign_before=settings.effective_resign_before,
        )
        new, changed, removed, unchanged = _changes(current, records)
        action: str = decision.action
        mirrors_changed = _mirror_summary(mirror_report.statuses) != _published_mirror_summary(storage)
        if action == "noop":
            assert current is not None
            if not is_complete(storage, current.pointer_sha256):
                action = "finish"  # a run committed this pointer but died before its listings: finish them
            elif mirrors_changed:
                action = "refresh"  # same packages, but a mirror's status changed: metalinks and pages show it

        def report(
            pointer: Pointer,
            *,
            put: int,
            skipped: int,
            put_bytes: int,
            keys: tuple[str, ...],
            deleted: tuple[str, ...] = (),
        ) -> RunReport:
            return RunReport(
                action=action,
                sequence=pointer.sequence,
                dry_run=settings.dry_run,
                files=len(snapshot.files),
                bytes_hashed=digested.bytes_hashed,
                files_hashed=digested.files_hashed,
                new=new,
                changed=changed,
                removed=removed,
                unchanged=unchanged,
                objects_put=put,
                objects_skipped=skipped,
                bytes_put=put_bytes,
                planned_keys=keys,
                deleted_keys=deleted,
                pointer_expires=pointer.expires,
                pointer_expires_epoch=int(datetime.fromisoformat(pointer.expires).timestamp()),
                key_fingerprint=key_info.fingerprint,
                key_expires_epoch=key_info.expires,
                stages=tuple(clock.stages),
                destination=storage.url,
                mirrors=tuple((m.url, m.status, m.detail) for m in mirror_report.statuses),
            )

        if action == "noop":
            assert current is not None
            return report(current.pointer, put=0, skipped=0, put_bytes=0, keys=())

        with clock.stage("build"):
            # Torrents and metalinks only for records the current index does not already hold: the
            # objects of every record it holds are in the destination (published before its pointer).
            published = {r.path: r for r in current.records} if current else {}
            to_build = [r for r in records if published.get(r.path) != r]
            package_objects = package_artifacts(
                ((r, digested.fresh_pieces.get(r.path) or _cached_pieces(state, r)) for r in to_build), spec
            )
            if mirrors_changed and settings.all_mirrors:
                unchanged_records = [r for r in records if published.get(r.path) == r]
                package_objects += package_artifacts(
                    ((r, _cached_pieces(state, r)) for r in unchanged_records), spec, metalinks_only=True
                )

    with clock.stage("sign"):
        index_artifacts: tuple[Artifact, ...] = ()
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
            pointer, index_artifacts = objects.pointer, objects.artifacts
        if action not in ("finish", "refresh"):
            pointer_artifact = make_artifact(POINTER_KEY, signer.sign_message(encode_pointer(pointer)))
            pointer_sha256 = _sha256(pointer_artifact.data)
        key_asc, key_gpg = signer.export_public_key()

    with clock.stage("render"):
        from pipeline.render import ListingInput, render_listings  # lazy: jinja2 only when there is a page to write

        listings = render_listings(
            ListingInput(
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
        )

    index_keys = (pointer.index.path, pointer.index.path + ".sig", pointer.index_torrent)
    referenced = frozenset(
        [r.metalink for r in records]
        + [r.torrent for r in records if r.torrent is not None]
        + [a.key for a in listings]
        + [*index_keys, POINTER_KEY, "signing-key.asc", "signing-key.gpg"]
    )
    with clock.stage("publish"):
        result = publish(
            storage,
            Publication(
                content=package_objects
                + (make_artifact("signing-key.asc", key_asc), make_artifact("signing-key.gpg", key_gpg)),
                immutable=index_artifacts,
                pointer=pointer_artifact,
                pointer_etag=current.etag if current else None,
                listings=listings,
                referenced=referenced,
                pointer_sha256=pointer_sha256,
            ),
            dry_run=settings.dry_run,
            progress=progress,
            now=started,
            retention=settings.retention,
            use_cas=not settings.no_cas,
        )
    return report(
        pointer,
        put=len(result.plan.put),
        skipped=len(result.plan.skip),
        put_bytes=result.plan.put_bytes,
        keys=tuple(a.key for a in result.plan.put),
        deleted=result.plan.delete,
    )


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
        probe_files(digested.digests),
        pieces_of=lambda path: digested.fresh_pieces.get(path) or state.pieces(path),
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
        doc = json.loads(stored.data)
        return sorted((str(m["url"]).rstrip("/"), str(m["status"]), bool(m["webseed"])) for m in doc["mirrors"])
    except (ValueError, KeyError, TypeError):
        return [("unreadable", "", False)]


def _cached_pieces(state: StateCache, record: PackageRecord) -> bytes:
    return state.pieces(record.path) if record.size > 0 else b""


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
                current = read_current(
                    open_storage(str(dest)), repo="demo", keyring=keyring, fingerprint=key.fingerprint
                )
        assert current is not None
        example = example_package(current.records)
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
