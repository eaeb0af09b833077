"""Re-runs cost what changed: the state cache, change detection against the published index, lazy imports."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import pipeline.hashing
import pipeline.run
import pipeline.snapshot.flat
from pipeline import forked
from pipeline.config import Settings
from pipeline.model import Snapshot
from pipeline.publish import FAULT_ENV, load_manifest
from pipeline.run import release
from pipeline.snapshot import ScanSpec, TreeMark
from pipeline.state import StateCache
from pipeline.storage.background import BackgroundWrite
from pipeline.storage.local import LocalStorage
from tests.integration.conftest import SigningKey, run_cli, tree_state
from tests.tools import forks_seen

pytestmark = pytest.mark.integration


def make_flat(root: Path, count: int = 12) -> None:
    for i in range(count):
        path = root / f"dir{i % 3}" / f"file-{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (40_000 + 997 * i))


def settings(snapshot: Path, dest: Path, key: SigningKey, state: Path) -> Settings:
    return Settings(
        snapshot=snapshot,
        format="flat",
        dest=str(dest),
        public_url="http://127.0.0.1:9/pub",
        repo="incr",
        webseeds=("http://127.0.0.1:9/mirror",),
        allow_peer_only=True,  # the mirror is never up: these tests are about re-runs
        key=key.fingerprint,
        gnupghome=key.gnupghome,
        state=state,
    )


def forbid_reading_and_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_read(*args: object, **kwargs: object) -> object:
        raise AssertionError("a file was read although its stat key is cached")

    def no_build(*args: object, **kwargs: object) -> object:
        raise AssertionError("a torrent was rebuilt on a no-change run")

    monkeypatch.setattr(pipeline.hashing, "_hash_one", no_read)
    monkeypatch.setattr(pipeline.run, "iter_package_artifacts", no_build)


def no_memo(*args: object) -> object:
    raise AssertionError("the pages' memo was read on an unchanged tree's run")


def test_no_change_reads_nothing_builds_nothing_writes_nothing(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    first = release(settings(snap, dest, signing_key, state))
    assert first.action == "publish" and first.files_hashed == 12
    before = tree_state(dest)

    forbid_reading_and_building(monkeypatch)
    again = release(settings(snap, dest, signing_key, state))
    assert again.action == "noop"
    assert again.files_hashed == 0 and again.bytes_hashed == 0 and again.objects_put == 0
    assert tree_state(dest) == before


def test_an_unchanged_tree_is_neither_scanned_nor_looked_up(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The state remembers the tree's mark: an untouched tree costs a walk, not a scan and a lookup."""
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    assert release(settings(snap, dest, signing_key, state)).action == "publish"
    before = tree_state(dest)

    scans: list[object] = []
    real_scan = pipeline.run.scan_snapshot

    def counted_scan(spec: ScanSpec, *marked: TreeMark | None) -> Snapshot:
        scans.append(spec)
        return real_scan(spec, *marked)

    monkeypatch.setattr(pipeline.run, "scan_snapshot", counted_scan)
    forbid_reading_and_building(monkeypatch)
    monkeypatch.setattr(StateCache, "page_memo", no_memo)  # the pages' keys are streamed, never all held
    with caplog.at_level(logging.INFO, logger="pipeline.run"):
        again = release(settings(snap, dest, signing_key, state))
    assert again.action == "noop" and again.files == 12 and again.unchanged == 12
    assert scans == [] and "the snapshot is unchanged since the last run (12 files)" in caplog.text
    assert [status for _, status, _ in again.mirrors] == ["down"]  # the mirror was probed all the same
    assert tree_state(dest) == before

    # touched (same bytes, new mtime): scanned and looked up again, hashed, still nothing to publish
    (snap / "dir1" / "file-04.bin").write_bytes((snap / "dir1" / "file-04.bin").read_bytes())
    monkeypatch.undo()
    walks: list[bytes] = []
    real_walk = pipeline.snapshot.flat.scan_flat
    monkeypatch.setattr(pipeline.snapshot.flat, "scan_flat", lambda root: walks.append(root) or real_walk(root))
    touched = release(settings(snap, dest, signing_key, state))
    assert touched.action == "noop" and touched.files_hashed == 1
    assert walks == []  # the mark's walk made the flat scan's table: the changed tree was walked once
    assert tree_state(dest) == before
    monkeypatch.setattr(pipeline.run, "scan_snapshot", counted_scan)
    assert release(settings(snap, dest, signing_key, state)).action == "noop" and scans == []

    # a page lost from the destination: the probe of the pages' keys finds it, and the whole run puts it back
    lost = (dest / "index.html").read_bytes()
    (dest / "index.html").unlink()
    restored = release(settings(snap, dest, signing_key, state))
    assert restored.action != "noop" and len(scans) == 1 and (dest / "index.html").read_bytes() == lost


def test_an_unchanged_tree_that_must_be_resigned_probes_the_mirrors_and_destination_once(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    t0 = datetime.now(UTC).replace(microsecond=0)
    release(settings(snap, dest, signing_key, state), now=lambda: t0)
    assert release(settings(snap, dest, signing_key, state), now=lambda: t0).action == "noop"

    probes: list[int] = []
    real_check = pipeline.run._check_mirrors
    monkeypatch.setattr(pipeline.run, "_check_mirrors", lambda *args: probes.append(len(args[1])) or real_check(*args))
    reads: list[bool] = []
    real_read = pipeline.run.read_destination_state
    monkeypatch.setattr(
        pipeline.run, "read_destination_state", lambda *a, **k: reads.append(k["audit"]) or real_read(*a, **k)
    )
    # the last audit is 5 days old then: with the default interval (1 day) that run would audit, and an audit
    # always takes the whole run
    later = replace(settings(snap, dest, signing_key, state), audit_interval=timedelta(days=30))
    resigned = release(later, now=lambda: t0 + timedelta(days=5))
    assert resigned.action == "resign" and resigned.sequence == 1
    assert probes == [12]  # by the unchanged tree's path; the whole run that follows takes its report
    assert reads == [False]  # the destination too is read once, by a probe


def test_one_added_one_changed_one_removed(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, dest, signing_key, state))
    old_torrent = (dest / "torrents/dir1/file-04.bin.torrent").read_bytes()
    untouched = (dest / "torrents/dir2/file-05.bin.torrent").stat().st_mtime_ns

    (snap / "dir0" / "added.bin").write_bytes(b"new" * 5000)
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed" * 7000)
    (snap / "dir2" / "file-08.bin").unlink()
    report = release(settings(snap, dest, signing_key, state))

    assert report.action == "publish" and report.sequence == 2
    assert report.new == ("dir0/added.bin",)
    assert report.changed == ("dir1/file-04.bin",)
    assert report.removed == ("dir2/file-08.bin",)
    assert report.unchanged == 10
    assert report.files_hashed == 2  # the added and the changed file, nothing else
    assert (dest / "torrents/dir0/added.bin.torrent").is_file()
    assert (dest / "torrents/dir1/file-04.bin.torrent").read_bytes() != old_torrent
    assert (dest / "torrents/dir2/file-05.bin.torrent").stat().st_mtime_ns == untouched
    assert not any(k.startswith("torrents/dir2/file-05") for k in report.planned_keys)


def test_lost_cache_costs_hashing_never_a_republish_and_output_is_identical(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, state = tmp_path / "snap", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, tmp_path / "a", signing_key, state))
    state.unlink()
    again = release(settings(snap, tmp_path / "a", signing_key, state))
    assert again.action == "noop" and again.files_hashed == 12

    # a second destination built from a warm cache: torrents and metalinks byte-identical to the cold one
    release(settings(snap, tmp_path / "b", signing_key, state))

    def artifacts(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and str(p.relative_to(root)).startswith(("torrents/", "metalinks/"))
        }

    assert artifacts(tmp_path / "a") and artifacts(tmp_path / "a") == artifacts(tmp_path / "b")


def indexes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sequence of each index whose shards a run reads back (`read_index`), as they are read."""
    decoded: list[int] = []
    real_read_index = pipeline.run.read_index

    def spy(storage: object, current: pipeline.run.CurrentPointer, files: object = None) -> object:
        decoded.append(current.pointer.sequence)
        return real_read_index(storage, current, files)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.run, "read_index", spy)
    return decoded


def test_no_change_run_trusts_the_state_memo_only_for_the_index_the_pointer_names(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, dest, signing_key, state))
    decoded = indexes_read(monkeypatch)
    assert release(settings(snap, dest, signing_key, state)).action == "noop"
    assert decoded == []  # the state cache vouched for the published index: nothing decoded, nothing built

    # Another publisher moved the pointer to an index this cache never saw: compared record by record.
    other_state = tmp_path / "other.sqlite"
    (snap / "dir0" / "extra.bin").write_bytes(b"extra" * 999)
    assert release(settings(snap, dest, signing_key, other_state)).action == "publish"
    (snap / "dir0" / "extra.bin").unlink()
    report = release(settings(snap, dest, signing_key, state))
    assert report.action == "publish" and report.removed == ("dir0/extra.bin",)
    assert decoded == [1, 2]  # the first: the other state's run


def kept_rows(state: Path) -> list[tuple[str, int]]:
    with closing(sqlite3.connect(state)) as db:
        return db.execute("SELECT path, fingerprint FROM publication_files ORDER BY path").fetchall()


def test_a_changed_run_tells_the_changes_from_what_the_state_kept_of_the_publication_not_the_shards(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, dest, signing_key, state))
    # the same publication made again, by a state that then loses what it kept of it: that one reads the shards
    release(settings(snap, tmp_path / "dest2", signing_key, tmp_path / "state2.sqlite"))
    with closing(sqlite3.connect(tmp_path / "state2.sqlite")) as db, db:
        db.execute("DELETE FROM meta WHERE key = 'publication_files'")
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed" * 7000)
    (snap / "dir2" / "new.bin").write_bytes(b"new" * 999)
    (snap / "dir0" / "file-00.bin").unlink()
    decoded = indexes_read(monkeypatch)
    report = release(settings(snap, dest, signing_key, state))
    assert decoded == []  # the first run kept every path's fingerprint, under its latest.asc's SHA-256
    assert (report.action, list(report.new), report.changed, report.removed) == (
        "publish",
        ["dir2/new.bin"],
        ("dir1/file-04.bin",),
        ("dir0/file-00.bin",),
    )
    other = release(settings(snap, tmp_path / "dest2", signing_key, tmp_path / "state2.sqlite"))
    assert decoded == [1]
    assert (list(other.new), other.changed, other.removed, other.unchanged) == (
        list(report.new),
        report.changed,
        report.removed,
        report.unchanged,
    )
    assert sorted(other.planned_keys) == sorted(report.planned_keys)  # the same shards, torrents and pages
    # the first state wrote only the changes into what it kept, the other all of it anew: the same rows
    kept = [kept_rows(path) for path in (state, tmp_path / "state2.sqlite")]
    assert kept[0] == kept[1] and len(kept[0]) == report.unchanged + 2
    # an audit reads the shards, whatever the state kept
    (snap / "dir1" / "file-04.bin").write_bytes(b"again" * 7000)
    audited = release(replace(settings(snap, dest, signing_key, state), audit=True))
    assert decoded == [1, 2] and audited.changed == ("dir1/file-04.bin",)


def test_one_changed_file_rewrites_only_its_own_listing_pages(signing_key: SigningKey, tmp_path: Path) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, dest, signing_key, state))
    untouched = (dest / "browse/dir0/index.html").stat().st_mtime_ns
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed" * 7000)
    report = release(settings(snap, dest, signing_key, state))
    pages = sorted(k for k in report.planned_keys if k.endswith(".html"))
    # the front and mirrors pages name the new sequence; of the browse pages only dir1's changed
    assert pages == ["browse/dir1/index.html", "index.html", "mirrors/index.html"]
    assert "browse/dir0/index.html" not in report.planned_keys
    assert (dest / "browse/dir0/index.html").stat().st_mtime_ns == untouched
    assert not any(k.startswith(("torrents/dir0", "metalinks/dir2")) for k in report.planned_keys)


def test_only_changed_directories_are_rendered_and_a_lost_page_is_rendered_again(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.render

    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap)
    release(settings(snap, dest, signing_key, state))
    lost = dest / "browse/dir0/index.html"
    lost_bytes = lost.read_bytes()
    rendered: list[str] = []
    real_page = pipeline.render._page

    def spy(env: object, template: str, context: dict[str, object], where: object) -> bytes:
        rendered.append(str(context["page_key"]))
        return real_page(env, template, context, where)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.render, "_page", spy)
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed" * 7000)
    release(settings(snap, dest, signing_key, state))
    assert sorted(k for k in rendered if k.startswith("browse/")) == ["browse/dir1/index.html"]

    lost.unlink()  # the destination lost a page the state vouches for
    rendered.clear()
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed again" * 7000)
    between = release(settings(snap, dest, signing_key, state))  # between audits: the manifest stands for it
    assert sorted(k for k in rendered if k.startswith("browse/")) == ["browse/dir1/index.html"]
    assert between.action == "publish" and not lost.exists()

    rendered.clear()
    (snap / "dir1" / "file-04.bin").write_bytes(b"changed once more" * 7000)
    report = release(replace(settings(snap, dest, signing_key, state), audit=True))  # the audit lists it
    assert sorted(k for k in rendered if k.startswith("browse/")) == [
        "browse/dir0/index.html",
        "browse/dir1/index.html",
    ]
    assert lost.read_bytes() == lost_bytes and "browse/dir0/index.html" in report.planned_keys


@pytest.mark.parametrize("garbage", [b"this is not a database" * 100, b"foreign"])
def test_corrupt_or_foreign_cache_is_reported_in_one_line_and_rebuilt(
    signing_key: SigningKey, tmp_path: Path, garbage: bytes
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap, 4)
    if garbage == b"foreign":
        import sqlite3

        with sqlite3.connect(state) as db:
            db.execute("CREATE TABLE something (x)")
    else:
        state.write_bytes(garbage)
    args = [
        "release", "--snapshot", str(snap), "--format", "flat", "--dest", str(dest), "--key",
        signing_key.fingerprint, "--public-url", "http://127.0.0.1:9/pub", "--repo", "incr", "--state", str(state),
        "--allow-peer-only", "--json",
    ]  # fmt: skip
    done = run_cli(*args, env={"GNUPGHOME": str(signing_key.gnupghome)})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "state cache" in line]
    assert len(warnings) == 1 and str(state) in warnings[0]
    assert json.loads(done.stdout)["files_hashed"] == 4
    rerun = run_cli(*args, env={"GNUPGHOME": str(signing_key.gnupghome)})
    assert json.loads(rerun.stdout)["files_hashed"] == 0 and "state cache" not in rerun.stderr


def test_a_no_change_run_imports_neither_torf_nor_jinja2_nor_boto3_nor_distributed(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest, state = tmp_path / "snap", tmp_path / "dest", tmp_path / "state.sqlite"
    make_flat(snap, 3)
    release(settings(snap, dest, signing_key, state))
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from pipeline.config import Settings
        from pipeline.run import release
        report = release(Settings(snapshot=Path({str(snap)!r}), format="flat", dest={str(dest)!r},
                                  public_url="http://127.0.0.1:9/pub", repo="incr",
                                  webseeds=("http://127.0.0.1:9/mirror",), allow_peer_only=True,
                                  key={signing_key.fingerprint!r},
                                  gnupghome=Path({str(signing_key.gnupghome)!r}), state=Path({str(state)!r})))
        heavy = sorted(m for m in ("torf", "jinja2", "boto3", "botocore", "distributed") if m in sys.modules)
        print(json.dumps({{"action": report.action, "heavy": heavy}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, check=True, env=dict(os.environ),
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result == {"action": "noop", "heavy": []}


def test_a_full_build_whose_new_objects_a_child_writes_publishes_what_one_process_does(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, state = tmp_path / "snap", tmp_path / "state.sqlite"
    for i in range(1_100):  # 2,200 new torrents and metalinks: more than EARLY_MIN
        path = snap / f"d{i % 20}" / f"f {i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i % 251]) * (10 + i))
    started: list[int] = []
    sent: list[str] = []
    write_in_background, send = LocalStorage.write_in_background, BackgroundWrite.send

    def spy(storage: LocalStorage, spool_fd: int) -> Any:
        started.append(spool_fd)
        return write_in_background(storage, spool_fd)

    def spy_send(writer: BackgroundWrite, jobs: Iterable[tuple[str, int, int]]) -> None:
        listed = list(jobs)
        sent.extend(key for key, _, _ in listed)
        send(writer, listed)

    monkeypatch.setattr(LocalStorage, "write_in_background", spy)
    monkeypatch.setattr(BackgroundWrite, "send", spy_send)
    early = release(settings(snap, tmp_path / "early", signing_key, state))
    # one child, sent every torrent and metalink as they were built (not the signing keys, made later), then
    # the new browse pages as they were rendered, then after the pointer the other listing pages, in key order
    assert len(started) == 1 and len(sent) == len(set(sent))
    content, pages = sent[:2_200], sent[2_200:]
    assert all(key.startswith(("torrents/", "metalinks/")) for key in content)
    browse = [key for key in pages if key.startswith("browse/")]
    after = pages[len(browse) :]
    assert pages[: len(browse)] == browse and "browse/d7/index.html" in browse and len(browse) == 21
    assert after == sorted(after) and "index.html" in after
    assert not any(key.startswith(("torrents/", "metalinks/")) for key in pages)
    monkeypatch.setenv(FAULT_ENV, "none")  # a fault point armed: every write from this process
    serial = release(settings(snap, tmp_path / "serial", signing_key, state))
    assert len(started) == 1 and early.action == serial.action == "publish"

    def objects(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and str(p.relative_to(root)).startswith(("torrents/", "metalinks/", "browse/"))
        }

    assert len(objects(tmp_path / "early")) == 2_200 + 21
    assert objects(tmp_path / "early") == objects(tmp_path / "serial")
    storage = LocalStorage(tmp_path / "early")
    listing = {info.key: info for info in storage.list()}
    manifest = load_manifest(storage, listing)
    for key, data in objects(tmp_path / "early").items():  # the child's writes are in the manifest, ETags and all
        assert manifest[key].sha256 == hashlib.sha256(data).hexdigest() and manifest[key].etag == listing[key].etag


def test_a_run_that_knows_no_file_starts_the_hashing_server_before_it_walks_the_tree(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap, state, dest = tmp_path / "snap", tmp_path / "state.sqlite", tmp_path / "dest"
    (snap / "d").mkdir(parents=True)
    (snap / "d" / "a.bin").write_bytes(b"a")
    events: list[str] = []
    mark = pipeline.run.snapshot_mark

    def walk(*args: Any, **kwargs: Any) -> Any:
        events.append("walk")
        return mark(*args, **kwargs)

    monkeypatch.setattr(pipeline.run, "start_local_pool_early", lambda: events.append("server"))
    monkeypatch.setattr(pipeline.run, "snapshot_mark", walk)
    assert release(settings(snap, dest, signing_key, state)).action == "publish"
    assert events == ["server", "walk"]
    (snap / "d" / "b.bin").write_bytes(b"b")  # a changed tree, and a state that knows files: no early server
    assert release(settings(snap, dest, signing_key, state)).action == "publish"
    assert events == ["server", "walk", "walk"]
    assert release(replace(settings(snap, dest, signing_key, tmp_path / "new.sqlite"), workers=1)).action == "noop"
    assert events == ["server", "walk", "walk", "walk"]  # one worker: no pool, no server


def test_records_made_with_a_forked_helper_publish_what_one_process_does(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of 300 files makes every other record in a forked child (`pipeline.forked`); the same snapshot
    published by a run that makes them all itself gives the same torrents, metalinks, index shards and pages:
    only what names the run's time differs."""
    snap = tmp_path / "snap"
    for i in range(300):
        path = snap / "pool" / f"p{i:03d}" / f"p{i:03d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(bytes([i % 256]) * (100 + i))
    started = forks_seen(monkeypatch)
    release(settings(snap, tmp_path / "forked", signing_key, tmp_path / "forked.sqlite"))
    assert started == [True]
    monkeypatch.setattr(forked, "MIN_ITEMS", 1_000_000)
    release(settings(snap, tmp_path / "alone", signing_key, tmp_path / "alone.sqlite"))
    assert started == [True]

    forked_tree, alone_tree = (
        {path: data for path, (data, _) in tree_state(tmp_path / name).items()} for name in ("forked", "alone")
    )
    differ = {path for path in forked_tree.keys() | alone_tree.keys() if forked_tree.get(path) != alone_tree.get(path)}
    # only what names the run's time may differ (a page checked within the same second as the other is equal)
    times = {".mirrorseed/complete", ".mirrorseed/manifest.jsonl.zst", "index.html", "latest.asc", "mirrors/index.html"}
    assert differ <= times
    assert sum(1 for path in forked_tree if path.startswith(("torrents/", "metalinks/", "index/"))) > 600
