"""Mirror probes against real HTTP mirrors on 127.0.0.1: complete, stale, missing files, no Range, down, hanging.

The snapshot is flat (names with `+`, `~`, `:` and a space, a zero-length file, multi-piece files);
its files are hashed with `pipeline.hashing`, as the pipeline does. Good, stale and partial mirrors are
`pipeline.serve` servers on altered copies; every webseed the report names is checked against the
bytes each mirror really serves.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torf

from pipeline.config import MirrorConfig, Settings
from pipeline.hashing import hash_files
from pipeline.mirrors import MirrorReport, ProbeFile, ProbeLimits, check_mirrors
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.snapshot import ScanSpec, scan_snapshot
from pipeline.state import StateCache
from pipeline.urls import webseed_dir_url
from tests.integration.conftest import SigningKey, aria2_command
from tests.mirror_servers import (
    HangingServer,
    NoRangeServer,
    RequestLog,
    TricklingServer,
    closed_port_url,
    copy_tree,
    request_log,
    rewrite,
)

pytestmark = pytest.mark.integration

SNAPSHOT_TIME = datetime(2026, 11, 23, 18, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 6, 0, 0, tzinfo=UTC)
TIMEOUT = 1.0

FILES = {
    "pool/main/h/hello/hello_2.10-3_amd64.deb": 70_000,
    "pool/main/libs/libstdc++6_12.2.0-14+deb12u1_amd64.deb": 40_000,
    "pool/main/v/vim/vim_2:9.0.1378-2_all.deb": 20_000,
    "pool/main/t/tilde/tilde_1.0~rc1-1_amd64.deb": 5_000,
    "pool/main/b/big/big_3.0+b1_amd64.deb": 300_000,
    "pool/main/e/empty/empty_1.0_all.deb": 0,
    "pool/main/s/space/with space_1.0_all.deb": 1_000,
    "pool/main/o/one/one_1.0_all.deb": 16_384,
    "pool/main/t/two/two_1.0_all.deb": 16_385,
}
STALE_ALTERED = {
    "pool/main/h/hello/hello_2.10-3_amd64.deb": 70_000,  # an older copy: other bytes, same size
    "pool/main/b/big/big_3.0+b1_amd64.deb": 250_000,  # an older copy: other size
}
PARTIAL_DELETED = ("pool/main/v/vim/vim_2:9.0.1378-2_all.deb", "pool/main/e/empty/empty_1.0_all.deb")


@dataclass(frozen=True)
class Hashed:
    files: tuple[ProbeFile, ...]
    pieces: dict[str, bytes]

    def pieces_of(self, paths: Sequence[str]) -> dict[str, bytes]:
        return {path: self.pieces[path] for path in paths if path in self.pieces}


def write_snapshot(root: Path, files: dict[str, int], seed: int = 1) -> None:
    rng = random.Random(seed)
    for path, size in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(size))


def hash_snapshot(root: Path) -> Hashed:
    snapshot = scan_snapshot(ScanSpec(root=root, format="flat"))
    hashed = hash_files(snapshot.files, workers=1)
    return Hashed(
        tuple(ProbeFile(h.entry.path, h.entry.size, h.sha256, h.piece_size) for h in hashed),
        {h.entry.path: h.pieces for h in hashed},
    )


def holds_exactly(mirror_root: Path, path: str, snapshot_root: Path) -> bool:
    served = mirror_root / path
    return served.is_file() and served.read_bytes() == (snapshot_root / path).read_bytes()


def date_line(moment: datetime) -> str:
    """`date -u` output, the first line of a Debian trace file."""
    return moment.strftime("%a %b %d %H:%M:%S UTC %Y")


@dataclass
class Farm:
    snapshot: Path
    hashed: Hashed
    site: Path  # complete/, stale/, partial/: each served by its own server, under its name
    urls: dict[str, str]  # name -> mirror base URL
    no_range: NoRangeServer
    hanging: HangingServer
    down_url: str
    log: RequestLog

    @property
    def mirrors(self) -> list[MirrorConfig]:
        return [
            MirrorConfig(url=self.urls["complete"], country="DE", lastsync="project/trace/master", priority=1),
            MirrorConfig(url=self.urls["stale"], country="FR", lastsync="lastsync"),
            MirrorConfig(url=self.urls["partial"], country="US", lastsync="project/trace/mirror.example"),
            MirrorConfig(url=self.no_range.url, country="NL", lastsync="lastsync"),
            MirrorConfig(url=self.down_url, country="SE", lastsync="lastsync"),
            MirrorConfig(url=self.hanging.url, lastsync="lastsync"),
        ]

    def root_of(self, mirror: MirrorConfig) -> Path | None:
        for name, url in self.urls.items():
            if mirror.url == url:
                return self.site / name / name
        return None


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    snapshot = tmp_path / "snapshot"
    write_snapshot(snapshot, FILES)
    hashed = hash_snapshot(snapshot)
    # one server per mirror (its backlog is small), each serving the copy under /<name>/ so that
    # the request log tells the mirrors apart
    site = tmp_path / "site"
    complete = copy_tree(snapshot, site / "complete" / "complete")
    (complete / "project" / "trace").mkdir(parents=True)
    (complete / "project" / "trace" / "master").write_text(
        f"{date_line(SNAPSHOT_TIME)}\nDate: whatever\nArchive serial: 2026112301\n"
    )
    stale = copy_tree(snapshot, site / "stale" / "stale")
    (stale / "lastsync").write_text(f"{int((SNAPSHOT_TIME - timedelta(days=1)).timestamp())}\n")
    rng = random.Random(99)
    for path, size in STALE_ALTERED.items():
        rewrite(stale / path, rng.randbytes(size))
    partial = copy_tree(snapshot, site / "partial" / "partial")
    for path in PARTIAL_DELETED:
        (partial / path).unlink()
    (partial / "project" / "trace").mkdir(parents=True)
    (partial / "project" / "trace" / "mirror.example").write_text("2026-11-23T19:01:01+01:00\n")
    (snapshot.parent / "norange").mkdir()
    no_range_root = copy_tree(snapshot, snapshot.parent / "norange" / "root")
    (no_range_root / "lastsync").write_text(f"{int(SNAPSHOT_TIME.timestamp())}\n")
    with (
        request_log() as log,
        serve_directory(site / "complete") as complete_server,
        serve_directory(site / "stale") as stale_server,
        serve_directory(site / "partial") as partial_server,
        NoRangeServer(no_range_root) as no_range,
        HangingServer() as hanging,
    ):
        urls = {
            "complete": f"{complete_server.url}/complete",
            "stale": f"{stale_server.url}/stale/",  # a trailing slash works too
            "partial": f"{partial_server.url}/partial",
        }
        yield Farm(snapshot, hashed, site, urls, no_range, hanging, closed_port_url(), log)


def run(
    farm: Farm,
    state: StateCache,
    *,
    now: datetime = NOW,
    mirrors: list[MirrorConfig] | None = None,
    limits: ProbeLimits | None = None,
    files: tuple[ProbeFile, ...] | None = None,
    pieces: Hashed | None = None,
) -> MirrorReport:
    hashed = pieces or farm.hashed
    return check_mirrors(
        mirrors if mirrors is not None else farm.mirrors,
        files if files is not None else hashed.files,
        pieces_of=hashed.pieces_of,
        state=state,
        snapshot_time=SNAPSHOT_TIME,
        now=now,
        limits=limits or ProbeLimits(timeout=TIMEOUT, budget=400, concurrency=4),
    )


def assert_only_exact_holders(farm: Farm, report: MirrorReport) -> None:
    """Every webseed and metalink URL names a mirror that serves the file's exact bytes, and a mirror
    that serves them (and was verified) is named."""
    mirrors = farm.mirrors
    for probe_file in farm.hashed.files:
        named = set(report.webseeds_for(probe_file.path))
        in_metalink = {url for url, _, _ in report.metalink_urls_for(probe_file.path)}
        for mirror in mirrors:
            root = farm.root_of(mirror)
            holds = root is not None and holds_exactly(root, probe_file.path, farm.snapshot)
            assert (mirror.url in named) == holds, (mirror.url, probe_file.path)
            assert (mirror.url in in_metalink) == holds, (mirror.url, probe_file.path)


def test_each_bad_mirror_gets_its_status_and_only_exact_holders_are_named(farm: Farm, tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        started = time.monotonic()
        report = run(farm, state)
        elapsed = time.monotonic() - started
    # the hanging mirror is given up within the bound (a correctness bound, not a benchmark)
    assert elapsed < 3 * TIMEOUT, elapsed
    assert farm.hanging.accepted <= 2

    by_url = {s.url: s for s in report.statuses}
    complete, stale, partial, no_range, down, hanging = (by_url[m.url] for m in farm.mirrors)
    assert [s.url for s in report.statuses] == [m.url for m in farm.mirrors]
    assert [s.status for s in report.statuses] == ["ok", "stale", "partial", "no-range", "down", "down"]
    total = len(FILES)

    assert complete.range_ok is True and complete.webseed
    assert (complete.sampled, complete.sampled_ok, complete.verified_files, complete.total_files) == (total,) * 4
    assert complete.last_sync == "2026-11-23T18:01:01Z" and complete.lag_seconds == 0
    assert complete.priority == 1 and complete.country == "DE"

    assert stale.last_sync == "2026-11-22T18:01:01Z" and stale.lag_seconds == 86400
    assert stale.verified_files == total - len(STALE_ALTERED) and stale.webseed
    assert "behind the snapshot" in stale.detail and "different" in stale.detail

    assert partial.verified_files == total - len(PARTIAL_DELETED) and partial.webseed
    assert partial.lag_seconds == 0 and partial.last_sync == "2026-11-23T18:01:01Z"
    assert f"{len(PARTIAL_DELETED)} of {total} probed files missing (HTTP 404)" in partial.detail

    assert no_range.range_ok is False and not no_range.webseed and "Range" in no_range.detail
    # the no-range mirror was asked for its last sync and one ranged GET, nothing more
    assert len([r for r in farm.no_range.requests if r[0] == "GET"]) == 2

    for dead in (down, hanging):
        assert dead.range_ok is None and not dead.webseed and dead.verified_files == 0
        assert dead.sampled == 0 and dead.last_sync is None
    assert "refused" in down.detail and "timed out" in hanging.detail

    assert_only_exact_holders(farm, report)
    for probe_file in farm.hashed.files:
        assert farm.no_range.url not in report.webseeds_for(probe_file.path)
        urls = report.metalink_urls_for(probe_file.path)
        assert list(urls) == sorted(urls, key=lambda e: (e[1], e[0]))
        if urls:
            assert urls[0] == (farm.urls["complete"], 1, "DE")


def test_verification_is_incremental_across_runs(farm: Farm, tmp_path: Path) -> None:
    good = farm.mirrors[:3]
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        first = run(farm, state, mirrors=good)
        first_counts = {name: len(farm.log.under(name)) for name in ("complete", "stale", "partial")}
        # every non-empty file: HEAD + one ranged GET; the empty one: HEAD; plus the last-sync file
        assert first_counts["complete"] == 1 + 2 * len(FILES) - 1
        farm.log.clear()
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:  # a new process, same cache
        second = run(farm, state, mirrors=good, now=NOW + timedelta(hours=1))
    counts = {name: len(farm.log.under(name)) for name in ("complete", "stale", "partial")}
    # only the last-sync file and one re-checked file on the complete mirror
    assert counts["complete"] == 3
    for name in ("stale", "partial"):
        assert counts[name] < first_counts[name]
    # files found missing or different are probed again (cheaply: a HEAD answered 404 ends it)
    assert ("HEAD", f"/partial/{PARTIAL_DELETED[0]}", 404) in farm.log.under("partial")
    assert [s.status for s in second.statuses] == [s.status for s in first.statuses] == ["ok", "stale", "partial"]
    assert [s.verified_files for s in second.statuses] == [s.verified_files for s in first.statuses]
    assert second.statuses[0].sampled == 1
    for probe_file in farm.hashed.files:
        assert second.webseeds_for(probe_file.path) == first.webseeds_for(probe_file.path)
    assert_only_exact_holders(farm, second)


def test_a_changed_file_invalidates_its_fact(farm: Farm, tmp_path: Path) -> None:
    """Same path, new SHA-256 (a flat snapshot that changed): nobody holds it until re-verified."""
    good = farm.mirrors[:1]
    path = "pool/main/t/tilde/tilde_1.0~rc1-1_amd64.deb"
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        run(farm, state, mirrors=good)
        (farm.snapshot / path).write_bytes(b"new content of the same path")
        changed = hash_snapshot(farm.snapshot)
        farm.log.clear()
        report = run(farm, state, mirrors=good, pieces=changed, now=NOW + timedelta(hours=1))
    assert report.webseeds_for(path) == ()
    assert report.statuses[0].status == "partial" and "different" in report.statuses[0].detail
    assert "GET" not in {m for m, p, _ in farm.log.under("complete") if p.endswith("tilde_1.0~rc1-1_amd64.deb")}
    assert report.statuses[0].verified_files == len(FILES) - 1


def test_a_down_mirror_leaves_url_lists_only_after_runs_and_hours(farm: Farm, tmp_path: Path) -> None:
    flaky_root = copy_tree(farm.snapshot, tmp_path / "flaky")
    paths = [f.path for f in farm.hashed.files]
    limits = ProbeLimits(timeout=TIMEOUT, budget=400, concurrency=4, down_runs=2, down_after=timedelta(hours=6))
    server = serve_directory(flaky_root)
    port = int(server.url.rsplit(":", 1)[1])
    mirrors = [MirrorConfig(url=server.url, priority=5)]
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        try:
            first = run(farm, state, mirrors=mirrors, limits=limits)
        finally:
            server.close()
        assert first.statuses[0].status == "ok" and first.statuses[0].verified_files == len(paths)

        def at(hours: float) -> MirrorReport:
            return run(farm, state, mirrors=mirrors, limits=limits, now=NOW + timedelta(hours=hours))

        # run 2 (down once): still in url-lists, out of metalinks at once
        second = at(1)
        status = second.statuses[0]
        assert status.status == "down" and status.webseed and "kept in url-lists" in status.detail
        assert status.verified_files == len(paths)
        for path in paths:
            assert second.webseeds_for(path) == (server.url,)
            assert second.metalink_urls_for(path) == ()
        # run 3: down for 2 runs but only 1 hour: kept
        third = at(2)
        assert third.statuses[0].webseed and all(third.webseeds_for(p) == (server.url,) for p in paths)
        # run 4: 3 runs and 7 hours: dropped
        fourth = at(8)
        assert fourth.statuses[0].status == "down" and not fourth.statuses[0].webseed
        assert "dropped from url-lists" in fourth.statuses[0].detail
        assert all(fourth.webseeds_for(p) == () for p in paths)
        # back on the same port: its facts were kept, it is a webseed again at once
        with serve_directory(flaky_root, port=port):
            back = at(9)
        assert back.statuses[0].status == "ok" and back.statuses[0].webseed
        assert all(back.webseeds_for(p) == (server.url,) for p in paths)
        health = state.mirror_health(server.url)
        assert health is not None and health.down_runs == 0 and health.down_since is None


def test_a_tiny_budget_verifies_a_larger_repo_over_several_runs(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    write_snapshot(snapshot, {f"pool/f{n:02d}/pkg-{n:02d}_1.0_all.deb": 500 + 37 * n for n in range(60)}, seed=5)
    hashed = hash_snapshot(snapshot)
    site = tmp_path / "site"
    copy_tree(snapshot, site / "m")
    budget = 20
    limits = ProbeLimits(timeout=TIMEOUT, budget=budget, concurrency=4)
    verified: list[int] = []
    with (
        request_log() as log,
        serve_directory(site) as server,
        StateCache.open(tmp_path / "state.sqlite", repo="t") as state,
    ):
        mirrors = [MirrorConfig(url=f"{server.url}/m")]
        for runs in range(1, 12):
            log.clear()
            report = check_mirrors(
                mirrors,
                hashed.files,
                pieces_of=hashed.pieces_of,
                state=state,
                snapshot_time=None,
                now=NOW + timedelta(hours=runs),
                limits=limits,
            )
            assert len(log.under("m")) <= budget
            status = report.statuses[0]
            assert status.status == "ok"
            verified.append(status.verified_files)
            if status.verified_files == len(hashed.files):
                break
        assert verified[0] == budget // 2 < len(hashed.files)
        assert verified == sorted(verified) and verified[-1] == len(hashed.files) and len(verified) <= 8
        held = {f.path for f in hashed.files if report.webseeds_for(f.path)}
        assert held == {f.path for f in hashed.files}

        # a mirror that loses a file: the re-check sample finds it within a bounded number of runs
        lost = hashed.files[17].path
        (site / "m" / lost).unlink()
        for extra in range(1, len(hashed.files) + 1):
            report = check_mirrors(
                mirrors,
                hashed.files,
                pieces_of=hashed.pieces_of,
                state=state,
                snapshot_time=None,
                now=NOW + timedelta(days=1, hours=extra),
                limits=limits,
            )
            if report.statuses[0].status != "ok":
                break
        assert report.statuses[0].status == "partial"
        assert report.webseeds_for(lost) == () and report.statuses[0].verified_files == len(hashed.files) - 1
        assert {f.path for f in hashed.files if report.webseeds_for(f.path)} == held - {lost}


def test_without_snapshot_time_differing_files_and_an_older_sync_mean_stale(farm: Farm, tmp_path: Path) -> None:
    mirrors = farm.mirrors[:3]
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        report = check_mirrors(
            mirrors,
            farm.hashed.files,
            pieces_of=farm.hashed.pieces_of,
            state=state,
            snapshot_time=None,
            now=NOW,
            limits=ProbeLimits(timeout=TIMEOUT, concurrency=4),
        )
    assert [s.status for s in report.statuses] == ["ok", "stale", "partial"]
    assert all(s.lag_seconds is None for s in report.statuses)
    assert "older than another mirror's" in report.statuses[1].detail


def test_redirects_are_followed(farm: Farm, tmp_path: Path) -> None:
    """A mirror whose base redirects elsewhere (here: a server answering 302 to the complete copy)."""
    target = farm.urls["complete"]

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self.send_response(302)
            self.send_header("Location", target + self.path.removeprefix("/debian"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, format: str, *args: object) -> None:
            return None

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

    server = Server(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/debian"
        with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
            report = run(farm, state, mirrors=[MirrorConfig(url=url)])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert report.statuses[0].status == "ok", report.statuses[0].detail
    assert report.statuses[0].verified_files == len(FILES)
    assert all(report.webseeds_for(f.path) == (url,) for f in farm.hashed.files)


def test_snapshot_copy_is_untouched(farm: Farm) -> None:
    """The fixture's altered copies really differ from the snapshot (guards the other tests' premises)."""
    for path in STALE_ALTERED:
        assert not holds_exactly(farm.site / "stale" / "stale", path, farm.snapshot)
    for path in PARTIAL_DELETED:
        assert not (farm.site / "partial" / "partial" / path).exists()
    first = next(iter(FILES))
    served = hashlib.sha256((farm.site / "complete" / "complete" / first).read_bytes()).hexdigest()
    assert served == next(f.sha256 for f in farm.hashed.files if f.path == first)


def test_aria2_downloads_through_the_selected_webseeds_with_bad_mirrors_configured(farm: Farm, tmp_path: Path) -> None:
    """Torrents whose url-lists come from the selection download with aria2 (every piece checked),
    although stale, partial, no-Range, down and hanging mirrors are all configured."""
    assert shutil.which("aria2c") is not None, "aria2c not installed: run ./bootstrap.sh"
    with StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        report = run(farm, state)
    wanted = [*STALE_ALTERED, *PARTIAL_DELETED[:1], "pool/main/libs/libstdc++6_12.2.0-14+deb12u1_amd64.deb"]
    torrents: list[str] = []
    for path in wanted:
        probe_file = next(f for f in farm.hashed.files if f.path == path)
        webseeds = [webseed_dir_url(base, path) for base in report.webseeds_for(path)]
        assert webseeds and farm.no_range.url not in " ".join(webseeds)
        torrent = torf.Torrent(
            path=farm.snapshot / path, webseeds=webseeds, piece_size=probe_file.piece_size, created_by="test"
        )
        torrent.generate()
        target = tmp_path / "torrents" / (Path(path).name + ".torrent")
        target.parent.mkdir(exist_ok=True)
        torrent.write(target)
        torrents.append(str(target))
    done = subprocess.run(
        aria2_command("-d", str(tmp_path / "dl"), *torrents),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for path in wanted:
        assert (tmp_path / "dl" / Path(path).name).read_bytes() == (farm.snapshot / path).read_bytes()


def test_a_trickling_mirror_is_bounded_too(farm: Farm, tmp_path: Path) -> None:
    """Bytes that keep coming, slowly, never let one request run past its deadline."""
    with TricklingServer() as trickling, StateCache.open(tmp_path / "state.sqlite", repo="t") as state:
        started = time.monotonic()
        report = run(farm, state, mirrors=[MirrorConfig(url=trickling.url, lastsync="lastsync")])
        elapsed = time.monotonic() - started
    assert elapsed < 3 * TIMEOUT, elapsed
    assert report.statuses[0].status == "down" and not report.statuses[0].webseed
    assert "timed out" in report.statuses[0].detail


def test_release_with_bad_mirrors_publishes_only_exact_holders_and_aria2_downloads(
    farm: Farm, tmp_path: Path, signing_key: SigningKey
) -> None:
    """Through `release`: every published url-list and metalink names only mirrors that hold the file's exact
    bytes (never the no-Range, down or hanging one), the listings show each status, and aria2 fetches
    packages by their published torrents with all the bad mirrors configured."""
    dest = tmp_path / "dest"
    settings = Settings(
        snapshot=farm.snapshot, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="farm",
        mirrors=tuple(farm.mirrors), key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
        state=tmp_path / "state.sqlite", mirror_timeout=1, mirror_concurrency=4,
    )  # fmt: skip
    report = release(settings)
    statuses = {url: status for url, status, _ in report.mirrors}
    assert statuses[farm.urls["complete"]] == "ok"
    assert statuses[farm.no_range.url] == "no-range"
    assert statuses[farm.down_url] == "down" and statuses[farm.hanging.url] == "down"
    assert statuses[farm.urls["partial"]] in ("partial", "stale")

    by_base = {m.url.rstrip("/"): m for m in farm.mirrors}
    checked = 0
    for torrent_path in (dest / "torrents").rglob("*.torrent"):
        path = str(torrent_path.relative_to(dest / "torrents"))[: -len(".torrent")]
        torrent = torf.Torrent.read(torrent_path)
        for entry in torrent.webseeds:
            base = next(b for b in by_base if entry.startswith(b + "/"))
            root = farm.root_of(by_base[base])
            assert root is not None, (path, entry)  # never the no-Range, down or hanging mirror
            assert holds_exactly(root, path, farm.snapshot), (path, entry)
            checked += 1
        metalink = (dest / "metalinks" / (path + ".meta4")).read_text()
        for url in re.findall(r"<url [^>]*>([^<]+)</url>", metalink):
            base = next(b for b in by_base if url.startswith(b + "/"))
            root = farm.root_of(by_base[base])
            assert root is not None and holds_exactly(root, path, farm.snapshot), (path, url)
    assert checked > 0
    page = (dest / "mirrors" / "index.html").read_text()
    assert all(word in page for word in ("ok", "no-range", "down"))

    wanted = [p for p in ("pool/main/libs/libstdc++6_12.2.0-14+deb12u1_amd64.deb", *STALE_ALTERED)][:3]
    torrents = [str(dest / "torrents" / (p + ".torrent")) for p in wanted]
    done = subprocess.run(
        aria2_command("-Z", "-d", str(tmp_path / "dl"), *torrents),
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for path in wanted:
        assert (tmp_path / "dl" / Path(path).name).read_bytes() == (farm.snapshot / path).read_bytes()


def test_a_mirror_trickling_its_headers_is_named_and_the_stage_stays_bounded(farm: Farm, tmp_path: Path) -> None:
    """`HTTP/1.1 200 OK`, then one header byte every 0.2 s: the slow mirror is down with a detail naming it
    and why; the good mirror is still every file's webseed; the stage ends well within its budget."""
    limits = ProbeLimits(timeout=TIMEOUT, budget=400, concurrency=4)
    good = MirrorConfig(url=farm.urls["complete"], lastsync="project/trace/master")
    with (
        TricklingServer(0.2, in_headers=True) as slow,
        StateCache.open(tmp_path / "state.sqlite", repo="t") as state,
    ):
        started = time.monotonic()
        report = run(farm, state, mirrors=[good, MirrorConfig(url=slow.url, lastsync="lastsync")], limits=limits)
        elapsed = time.monotonic() - started
    assert elapsed < limits.stage_budget, elapsed  # the answer window (2 x timeout) ends it, with room to spare
    assert report.statuses[0].status == "ok" and report.statuses[0].webseed, report.statuses[0].detail
    assert all(report.webseeds_for(f.path) == (good.url,) for f in farm.hashed.files)
    down = report.statuses[1]
    assert down.status == "down" and not down.webseed
    assert f"{slow.url}/" in down.detail and "too slow: the headers did not arrive within 1 s" in down.detail


def test_the_stage_budget_stops_a_mirror_that_goes_slow_after_answering(farm: Farm, tmp_path: Path) -> None:
    """A mirror that answers its last-sync file at once, then trickles every header: its probes are cut at the
    stage's time budget (no request outlives it) and it is down, the detail saying why."""
    limits = ProbeLimits(timeout=5.0, budget=400, concurrency=4, stage_timeout=1.5)
    answers = {"/lastsync": f"{int(SNAPSHOT_TIME.timestamp())}\n".encode()}
    with (
        TricklingServer(0.2, in_headers=True, answers=answers) as slow,
        StateCache.open(tmp_path / "state.sqlite", repo="t") as state,
    ):
        started = time.monotonic()
        report = run(farm, state, mirrors=[MirrorConfig(url=slow.url, lastsync="lastsync")], limits=limits)
        elapsed = time.monotonic() - started
    assert elapsed < 3 * limits.stage_budget, elapsed  # 1.5 s budget; without it, 5 s per request
    status = report.statuses[0]
    assert status.status == "down" and not status.webseed and status.last_sync is not None
    assert "too slow: not done within the mirror stage's 1.5 s" in status.detail, status.detail
