"""pipeline.mirrors without a network: last-sync parsing, piece choice, the selection rules, the state's
mirror tables, and the snapshot times the probes compare mirrors with (Debian Release Date, Arch lastsync)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import MirrorConfig, Settings
from pipeline.filetable import FileTable, KnownDigests
from pipeline.mirrors import (
    MirrorReport,
    ProbeFile,
    ProbeFiles,
    ProbeLimits,
    check_mirrors,
    choose_piece,
    keeps_url_lists,
    parse_last_sync,
    probe_files,
)
from pipeline.model import FileEntry, MirrorStatus
from pipeline.run import probe_limits
from pipeline.snapshot import ScanSpec, scan_snapshot
from pipeline.snapshot.arch import parse_lastsync
from pipeline.snapshot.debian import release_date
from pipeline.state import CachedFile, MirrorFact, MirrorHealthRecord, StateCache
from tests.unit.test_snapshot_arch import HELLO as ARCH_HELLO
from tests.unit.test_snapshot_arch import write_repo
from tests.unit.test_snapshot_debian import HELLO, HELLO_DOC, Pkg, write_archive

T = datetime(2026, 11, 23, 18, 1, 1, tzinfo=UTC)


# --- last-sync files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1700000000\n", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),  # Arch lastsync
        (b"1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("1700000000.75\n", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("Mon Nov 23 18:01:01 UTC 2026\nDate: Mon, 23 Nov 2026 18:01:01 +0000\n", T),  # Debian trace, date -u
        ("\n  Mon, 23 Nov 2026 19:01:01 +0100  \n", T),  # RFC 2822 with an offset
        ("Mon, 23 Nov 2026 18:01:01 GMT", T),
        ("Mon, 23 Nov 2026 18:01:01 -0000", T),
        ("2026-11-23T18:01:01Z", T),  # RFC 3339
        ("2026-11-23T13:01:01-05:00\n", T),
        ("2026-11-23 18:01:01z", T),
        ("garbage first line\nDate: Mon, 23 Nov 2026 18:01:01 +0000\n", T),  # a trace's Date: line
    ],
)
def test_last_sync_formats(text: str | bytes, expected: datetime) -> None:
    found = parse_last_sync(text)
    assert found == expected and found is not None and found.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "garbage",
        "0",
        "-5",
        "12345678901234567890",
        "Mon Nov 23 18:01:01 CET 2026",  # a zone name other than UTC/GMT: ambiguous
        "Mon, 23 Nov 2026 18:01:01",  # no zone at all
        "2026-11-23T18:01:01",  # RFC 3339 needs an offset
        "2026-13-45T00:00:00Z",
        b"\xff\xfe\x00",
        "<html><body>404 Not Found</body></html>",
    ],
)
def test_last_sync_garbage_is_unknown(text: str | bytes) -> None:
    assert parse_last_sync(text) is None


# --- piece choice -------------------------------------------------------------------------------


def test_piece_choice_is_reproducible_in_range_and_spread() -> None:
    shas = [f"{n:064x}" for n in range(200)]
    first = [choose_piece(sha, 50) for sha in shas]
    assert first == [choose_piece(sha, 50) for sha in shas]  # same inputs, same piece
    assert all(0 <= piece < 50 for piece in first)
    assert len(set(first)) > 25  # spread over the pieces, not always the first or last
    assert choose_piece(shas[0], 1) == choose_piece(shas[0], 0) == 0
    # each re-check reads another piece (over a few checks, several different ones)
    assert len({choose_piece(shas[3], 50, check) for check in range(6)}) > 2
    assert choose_piece(shas[3].upper(), 50) == choose_piece(shas[3], 50)


# --- selection ----------------------------------------------------------------------------------


def status(url: str, **changes: object) -> MirrorStatus:
    base = MirrorStatus(
        url=url,
        country=None,
        continent=None,
        name=None,
        contact=None,
        bandwidth=None,
        priority=100,
        status="ok",
        last_sync=None,
        lag_seconds=None,
        range_ok=True,
        sampled=0,
        sampled_ok=0,
        verified_files=0,
        total_files=0,
        webseed=True,
        detail="",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_selection_order_and_exclusions() -> None:
    statuses = (
        status("http://z.example/debian", priority=1, country="DE"),
        status("http://a.example/debian", country="FR"),
        status("http://m.example/debian", status="no-range", range_ok=False),
        status("http://b.example/debian", status="down"),
        status("http://c.example/debian", priority=1, country="US"),
        status("http://d.example/debian", status="stale"),
    )
    report = MirrorReport(
        statuses=statuses,
        holders={"pool/a.deb": (0, 1, 2, 3, 4, 5), "pool/b.deb": (1,)},
        url_list=(True, True, False, True, True, True),
        metalink=(True, True, False, False, True, True),
    )
    # url-lists: sorted by URL; no-range never; down kept (the flapping rule decided it)
    assert report.webseeds_for("pool/a.deb") == (
        "http://a.example/debian",
        "http://b.example/debian",
        "http://c.example/debian",
        "http://d.example/debian",
        "http://z.example/debian",
    )
    # metalinks: current status only, by priority then URL, with the country
    assert report.metalink_urls_for("pool/a.deb") == (
        ("http://c.example/debian", 1, "US"),
        ("http://z.example/debian", 1, "DE"),
        ("http://a.example/debian", 100, "FR"),
        ("http://d.example/debian", 100, None),
    )
    assert report.webseeds_for("pool/b.deb") == ("http://a.example/debian",)
    assert report.webseeds_for("pool/unknown.deb") == () and report.metalink_urls_for("pool/unknown.deb") == ()
    assert MirrorReport().webseeds_for("x") == ()
    # asked again (answered from what it remembers by holders), the same; a report of other statuses differs
    assert (
        report.webseeds_for("pool/b.deb") == ("http://a.example/debian",)
        and len(report.webseeds_for("pool/a.deb")) == 5
    )
    other = MirrorReport(statuses, report.holders, url_list=(True, False, False, False, False, False))
    assert other.webseeds_for("pool/b.deb") == () and other.webseeds_for("pool/a.deb") == ("http://z.example/debian",)


def test_same_url_twice_is_named_once_with_its_best_priority() -> None:
    statuses = (status("http://a.example", priority=50), status("http://a.example", priority=5, country="DE"))
    report = MirrorReport(statuses, {"p": (0, 1)}, (True, True), (True, True))
    assert report.webseeds_for("p") == ("http://a.example",)
    assert report.metalink_urls_for("p") == (("http://a.example", 5, "DE"),)


@pytest.mark.parametrize(
    "runs, hours, kept",
    [
        (0, 0, True),  # up
        (1, 100, True),  # down once, long ago: one run is not enough
        (2, 5, True),  # two runs but under 6 h
        (2, 6, False),  # both reached
        (5, 30, False),
    ],
)
def test_flapping_rule(runs: int, hours: int, kept: bool) -> None:
    since = T
    limits = ProbeLimits(down_runs=2, down_after=timedelta(hours=6))
    assert keeps_url_lists(runs, since if runs else None, since + timedelta(hours=hours), limits) is kept


def test_limits_and_probe_files_from_pipeline_values() -> None:
    settings = Settings(mirror_timeout=3, mirror_budget=50, mirror_concurrency=2, mirror_down_runs=4)
    assert probe_limits(settings) == ProbeLimits(3.0, 50, 2, 4, timedelta(hours=6))
    table = FileTable.of([FileEntry(path="pool/a.deb", source="/x", size=5, mtime_ns=1)])
    known = KnownDigests(1)
    known[0] = CachedFile("a" * 64, 16384, None)
    files = probe_files(table, known)
    assert list(files) == [ProbeFile("pool/a.deb", 5, "a" * 64, 16384)]
    assert files.paths is table.paths  # the table's column, not a second one
    assert files.position("pool/a.deb") == 0 and files.position("pool/b.deb") is None


def _sha(n: int) -> str:
    return f"{n:064x}"


def test_probe_files_keep_every_value_and_find_paths_in_any_order() -> None:
    rows = [ProbeFile(f"pool/{n:03d}.deb", n * 7, _sha(999 - n), 16384 << (n % 3)) for n in range(200)]
    files = ProbeFiles(rows)
    assert len(files) == 200 and list(files) == rows and files[-1] == rows[-1] and files[3:6] == rows[3:6]
    assert [files.position(r.path) for r in rows] == list(range(200))  # in order: the guess
    assert [files.position(r.path) for r in reversed(rows)] == list(range(199, -1, -1))  # against it
    assert [files.position(r.path) for r in rows for _ in (1, 2)] == [n for n in range(200) for _ in (1, 2)]
    assert files.position("pool/050.deb") == 50 and files.position("pool/051.deb") == 51
    assert files.position("pool/000.debx") is None and files.position("") is None and files.position("z") is None
    assert files.digest(5) == bytes.fromhex(_sha(994)) and files.size(5) == 35 and files.piece_size(5) == 16384 << 2


def test_a_plan_reads_each_chosen_file_once_in_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chosen by SHA-256, the files are read (path and digest, from compressed blocks) once each, in path order;
    the probes keep the chosen order, each with its piece's expected SHA-1."""
    from pipeline import mirrors

    rows = [ProbeFile(f"pool/{n:03d}.deb", 40_000 + n, _sha((n * 37) % 300), 16384) for n in range(300)]
    files = ProbeFiles(rows)
    read: list[int] = []
    real = ProbeFiles.__getitem__

    def counting(self: ProbeFiles, i: Any) -> Any:
        read.append(i)
        return real(self, i)

    monkeypatch.setattr(ProbeFiles, "__getitem__", counting)
    by_digest = sorted(range(300), key=lambda n: (n * 37) % 300)
    picks = {
        "a": mirrors._Pick(tuple((i, 0) for i in by_digest[:120])),
        "b": mirrors._Pick(tuple((i, 1) for i in by_digest[60:200])),
    }
    asked: list[list[str]] = []

    def pieces_of(paths: Any) -> dict[str, bytes]:
        asked.append(list(paths))
        return {path: bytes([n % 256]) * 20 * 3 for n, path in enumerate(r.path for r in rows) if path in paths}

    config_of = {"a": [MirrorConfig(url="http://127.0.0.1:9/a")], "b": [MirrorConfig(url="http://127.0.0.1:9/b")]}
    plans = mirrors._plans(config_of, files, picks, pieces_of)
    assert read == sorted(set(by_digest[:200]))  # once each, ascending
    assert len(asked) == 1 and sorted(asked[0]) == sorted(rows[i].path for i in set(by_digest[:200]))
    for key, pick in picks.items():
        probes = plans[key].probes
        assert [p.path for p in probes] == [rows[i].path for i, _ in pick.chosen]
        for probe, (i, checks) in zip(probes, pick.chosen, strict=True):
            piece = choose_piece(rows[i].sha256, 3, checks)
            assert (probe.piece, probe.expected, probe.size) == (piece, bytes([i % 256]) * 20, rows[i].size)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([ProbeFile("b", 1, _sha(1), 16384), ProbeFile("a", 1, _sha(2), 16384)], "sorted by path and unique"),
        ([ProbeFile("a", 1, _sha(1), 16384), ProbeFile("a", 1, _sha(2), 16384)], "sorted by path and unique"),
        ([ProbeFile("a", 1, "ab" * 20, 16384)], "is not a SHA-256"),
    ],
)
def test_probe_files_refuse_unsorted_paths_and_bad_digests(rows: list[ProbeFile], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeFiles(rows)


def _unprobed_report(mirrors: list[MirrorConfig], files: list[ProbeFile], state: StateCache) -> MirrorReport:
    """What the state says of `mirrors` (no probe budget: nothing is fetched)."""
    return check_mirrors(
        mirrors,
        files,
        pieces_of=lambda paths: {},
        state=state,
        snapshot_time=None,
        now=T,
        limits=ProbeLimits(timeout=0.2, budget=0, stage_timeout=1),
    )


def test_holders_view_names_held_files_in_path_order(tmp_path: Path) -> None:
    """The report's holders: what the state says each mirror verified, for the current SHA-256 only."""
    files = [ProbeFile(f"pool/{n}.deb", 0, _sha(n), 16384) for n in range(6)]
    mirrors = [MirrorConfig(url="http://127.0.0.1:9/a"), MirrorConfig(url="http://127.0.0.1:9/b")]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.update_mirror_facts(
            "http://127.0.0.1:9/a", [MirrorFact(f"pool/{n}.deb", _sha(n), "t", 1) for n in (1, 4)], []
        )
        facts_b = [MirrorFact("pool/1.deb", _sha(1), "t", 1), MirrorFact("pool/3.deb", _sha(9), "t", 1)]
        state.update_mirror_facts("http://127.0.0.1:9/b", facts_b, [])
        report = _unprobed_report(mirrors, files, state)
    assert list(report.holders.items()) == [("pool/1.deb", (0, 1)), ("pool/4.deb", (0,))]
    assert len(report.holders) == 2 and list(report.holders) == ["pool/1.deb", "pool/4.deb"]
    assert report.holders.get("pool/3.deb", ()) == () and report.holders.get("pool/x.deb") is None
    assert report.holders.get("pool/1.deb") == (0, 1) and report.holders.get("pool/4.deb", ()) == (0,)
    assert report.holders["pool/4.deb"] == (0,) and "pool/0.deb" not in report.holders
    assert [s.verified_files for s in report.statuses] == [2, 1]


def test_holders_view_when_no_mirror_holds_anything(tmp_path: Path) -> None:
    files = [ProbeFile(f"pool/{n}.deb", 0, _sha(n), 16384) for n in range(3)]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        report = _unprobed_report([MirrorConfig(url="http://127.0.0.1:9/a")], files, state)
    assert len(report.holders) == 0 and list(report.holders.items()) == []
    assert report.holders.get("pool/1.deb") is None and report.holders.get("pool/1.deb", ()) == ()
    assert "pool/1.deb" not in report.holders and report.webseeds_for("pool/1.deb") == ()
    with pytest.raises(KeyError):
        report.holders["pool/1.deb"]


def test_no_mirrors_and_naive_times(tmp_path: Path) -> None:
    files = [ProbeFile("pool/a.deb", 5, "a" * 64, 16384)]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        report = check_mirrors(
            [],
            files,
            pieces_of=lambda paths: {p: b"" for p in paths},
            state=state,
            snapshot_time=None,
            now=T,
            limits=ProbeLimits(),
        )
        assert report.statuses == () and report.webseeds_for("pool/a.deb") == ()
        with pytest.raises(ValueError, match="timezone-aware"):
            check_mirrors(
                [MirrorConfig(url="http://127.0.0.1:9")],
                files,
                pieces_of=lambda paths: {p: b"" for p in paths},
                state=state,
                snapshot_time=None,
                now=datetime(2026, 1, 1),  # noqa: DTZ001 - the point of the test
                limits=ProbeLimits(),
            )


# --- state --------------------------------------------------------------------------------------


def health(mirror: str = "http://a", **changes: object) -> MirrorHealthRecord:
    return replace(MirrorHealthRecord(mirror, "ok", "2026-11-23T18:01:01Z"), **changes)  # type: ignore[arg-type]


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    fact = MirrorFact("pool/a.deb", "a" * 64, "2026-11-23T18:01:01Z", 2, "Mon, 23 Nov 2026 18:00:00 GMT")
    with StateCache.open(path, repo="r") as state:
        assert list(state.mirror_facts("http://a")) == [] and state.mirror_health("http://a") is None
        state.update_mirror_facts("http://a", [fact, replace(fact, path="pool/b.deb")], [])
        state.update_mirror_facts("http://b", [fact], [])
        state.update_mirror_facts("http://a", [replace(fact, checks=3)], ["pool/b.deb"])
        state.store_mirror_health([health(), health("http://b", status="down", down_runs=2, down_since="x")])
    with StateCache.open(path, repo="r") as state:
        assert list(state.mirror_facts("http://a")) == [replace(fact, checks=3)]
        assert state.mirror_health("http://b") == health("http://b", status="down", down_runs=2, down_since="x")
        # mirrors no longer configured and paths no longer in the snapshot are forgotten
        assert state.forget_mirrors_except(["http://a"], ["pool/a.deb"]) == 1
        assert list(state.mirror_facts("http://b")) == [] and state.mirror_health("http://b") is None
        assert state.forget_mirrors_except(["http://a"], []) == 1
        assert list(state.mirror_facts("http://a")) == [] and state.mirror_health("http://a") == health()


def test_older_state_file_gains_the_mirror_tables_and_keeps_its_files(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:  # the state format before the mirror tables
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('format', 'mirrorseed-state/1'), ('repo', 'r');"
            "CREATE TABLE files (path TEXT PRIMARY KEY, dev INTEGER NOT NULL, inode INTEGER NOT NULL,"
            " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, piece_size INTEGER NOT NULL,"
            " infohash TEXT, expected_sha256 TEXT, pieces BLOB NOT NULL);"
            "INSERT INTO files VALUES ('pool/a.deb', 1, 2, 100, 5, 'aa', 16384, NULL, NULL, x'00');"
        )
    db.close()
    with StateCache.open(path, repo="r") as state:
        assert state.pieces_many(["pool/a.deb"]) == {"pool/a.deb": b"\x00"}
        state.update_mirror_facts("http://a", [MirrorFact("pool/a.deb", "aa", "t")], [])
        assert len(list(state.mirror_facts("http://a"))) == 1


def test_mirror_table_of_another_shape_is_recreated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.sqlite"
    with StateCache.open(path, repo="r") as state:
        state.store_mirror_health([health()])
    with sqlite3.connect(path) as db:
        db.executescript("DROP TABLE mirror_files; CREATE TABLE mirror_files (mirror TEXT, path TEXT);")
    db.close()
    with caplog.at_level(logging.WARNING, logger="pipeline.state"):
        with StateCache.open(path, repo="r") as state:
            assert list(state.mirror_facts("http://a")) == []
            state.update_mirror_facts("http://a", [MirrorFact("p", "s", "t")], [])
            assert state.mirror_health("http://a") == health()  # the other table is kept
    assert len(caplog.records) == 1 and "mirror_files" in caplog.records[0].getMessage()


def test_corrupt_state_is_rebuilt_with_the_mirror_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"\x00garbage" * 512)
    with StateCache.open(path, repo="r") as state:
        state.update_mirror_facts("http://a", [MirrorFact("p", "s", "t")], [])
        state.store_mirror_health([health()])
    with StateCache.open(path, repo="r") as state:
        assert [f.path for f in state.mirror_facts("http://a")] == ["p"]


# --- the snapshot's time ------------------------------------------------------------------------


def test_debian_snapshot_time_components_and_architectures(tmp_path: Path) -> None:
    packages = [HELLO, HELLO_DOC, Pkg("c", "1", "amd64", component="contrib")]
    write_archive(tmp_path, "bookworm", packages, components=("main", "contrib"))
    release = tmp_path / "dists" / "bookworm" / "Release"
    release.write_text("Date: Sat, 10 Jun 2023 08:53:33 UTC\n" + release.read_text())
    snapshot = scan_snapshot(ScanSpec(root=tmp_path))
    assert snapshot.timestamp == datetime(2023, 6, 10, 8, 53, 33, tzinfo=UTC)
    assert snapshot.components == ("main", "contrib")
    assert snapshot.architectures == ("amd64",)  # `all` is not an architecture a client selects
    only_main = scan_snapshot(ScanSpec(root=tmp_path, components=("main",)))
    assert only_main.components == ("main",)


def test_debian_snapshot_time_is_the_newest_release_date(tmp_path: Path) -> None:
    for suite, date in (("a", "Sat, 10 Jun 2023 08:53:33 UTC"), ("b", "Sun, 11 Jun 2023 10:00:00 +0200")):
        write_archive(tmp_path, suite, [HELLO])
        release = tmp_path / "dists" / suite / "Release"
        release.write_text(f"Date: {date}\n" + release.read_text())
    assert scan_snapshot(ScanSpec(root=tmp_path)).timestamp == datetime(2023, 6, 11, 8, 0, 0, tzinfo=UTC)


def test_debian_release_without_usable_date(tmp_path: Path) -> None:
    write_archive(tmp_path, "bookworm", [HELLO])
    assert scan_snapshot(ScanSpec(root=tmp_path)).timestamp is None
    release = tmp_path / "dists" / "bookworm" / "Release"
    release.write_text("Date: next Tuesday\n" + release.read_text())
    assert scan_snapshot(ScanSpec(root=tmp_path)).timestamp is None
    assert release_date("Sat, 10 Jun 2023 08:53:33 CEST") is None
    assert release_date("Sat, 10 Jun 2023 08:53:33 -0000") == datetime(2023, 6, 10, 8, 53, 33, tzinfo=UTC)


def test_arch_snapshot_time_from_lastsync(tmp_path: Path) -> None:
    write_repo(tmp_path, "core", "x86_64", [ARCH_HELLO])
    write_repo(tmp_path, "extra", "aarch64", [replace(ARCH_HELLO, arch="aarch64")])
    no_lastsync = scan_snapshot(ScanSpec(root=tmp_path))
    assert no_lastsync.timestamp is None and no_lastsync.architectures == ("aarch64", "x86_64")
    assert no_lastsync.suites == ("core", "extra") and no_lastsync.components == ()
    (tmp_path / "lastsync").write_text("1700000000\n")
    assert scan_snapshot(ScanSpec(root=tmp_path)).timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    (tmp_path / "lastsync").write_text("yesterday\n")
    assert scan_snapshot(ScanSpec(root=tmp_path)).timestamp is None
    assert parse_lastsync(b"0") is None and parse_lastsync(b"1" * 80) is None
