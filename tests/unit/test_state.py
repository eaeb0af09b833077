"""pipeline.state: what counts as unchanged, forgetting removed paths, refusing foreign files."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.filetable import FileTable
from pipeline.model import FileEntry
from pipeline.state import CachedFile, KnownScan, StateCache, StateRow


def lookup(state: StateCache, files: Sequence[FileEntry]) -> dict[str, CachedFile]:
    """StateCache.lookup's hits by path (it gives them by position in `files`)."""
    return {files[index].path: cached for index, cached in state.lookup(files)}


def entry(path: str = "pool/a.deb", **changes: int) -> FileEntry:
    base = FileEntry(path=path, source=Path("/x") / path, size=100, mtime_ns=5, dev=1, inode=2)
    return replace(base, **changes)  # type: ignore[arg-type]


def row(e: FileEntry, sha: str = "a" * 64) -> StateRow:
    return StateRow(e, sha, 16384, "b" * 40, b"\x01" * 20)


def test_hit_only_when_dev_inode_size_and_mtime_all_match(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry())])
        assert lookup(state, [entry()]) == {"pool/a.deb": CachedFile("a" * 64, 16384, "b" * 40)}
        for change in ({"dev": 9}, {"inode": 9}, {"size": 101}, {"mtime_ns": 6}):
            assert lookup(state, [entry(**change)]) == {}, change
        assert state.pieces_many(["pool/a.deb", "pool/none.deb"]) == {"pool/a.deb": b"\x01" * 20}


def test_store_replaces_and_forget_drops_removed_paths(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry()), row(entry("pool/b.deb"))])
        state.store([row(entry(mtime_ns=7), sha="c" * 64)])
        assert lookup(state, [entry(mtime_ns=7)])["pool/a.deb"].sha256 == "c" * 64
        assert state.forget_except(["pool/a.deb"]) == 1
        assert lookup(state, [entry("pool/b.deb")]) == {}
        assert state.pieces_many(["pool/b.deb"]) == {}


def test_forget_walks_the_sorted_paths_beside_the_cache(tmp_path: Path) -> None:
    """Kept paths are found by a merge (or, where SQLite's byte order and Python's differ, a bisect):
    exactly the paths missing from the snapshot are dropped, wherever they fall."""
    names = ["pool/a.deb", "pool/a-b.deb", "pool/a/x.deb", "pool/é.deb", "pool/z.deb", "pool/\U0001f600.deb", "zz"]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry(name)) for name in names])
        keep = sorted(["pool/a-b.deb", "pool/é.deb", "pool/\U0001f600.deb", "pool/new.deb"])
        assert state.forget_except(keep) == 4
        assert sorted(path for path, *_ in state.file_facts()) == sorted(set(keep) - {"pool/new.deb"})
        assert state.forget_except([]) == 3 and not list(state.file_facts())


def test_a_tables_files_are_looked_up_by_a_merge_wherever_they_fall(tmp_path: Path) -> None:
    """A FileTable's sorted paths are read beside the cache's rows in order (no dict of every path): a hit at
    every position, including names where SQLite's byte order and Python's could differ, and none for
    cached paths the table does not hold or files whose stat changed."""
    names = ["pool/a.deb", "pool/a-b.deb", "pool/a/x.deb", "pool/é.deb", "pool/z.deb", "pool/\U0001f600.deb", "zz"]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry(name), sha=f"{i:064x}") for i, name in enumerate(names)])
        held = ["pool/a-b.deb", "pool/a/x.deb", "pool/new.deb", "pool/é.deb", "pool/\U0001f600.deb", "zz"]
        entries = [entry(name, size=101) if name == "zz" else entry(name) for name in held]
        files = FileTable.of([replace(e, source=str(e.source)) for e in entries])
        hits = {files.paths[index]: cached.sha256 for index, cached in state.lookup(files)}
        assert hits == {name: f"{names.index(name):064x}" for name in held if name not in ("pool/new.deb", "zz")}
        assert list(state.lookup(FileTable.of([]))) == []


def test_the_last_scan_is_known_by_its_mark_until_forgotten(tmp_path: Path) -> None:
    known = KnownScan("m" * 64, "debian", 2, "2026-12-01T00:00:00+00:00", "d" * 64)
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        assert state.known_scan("m" * 64) is None
        state.remember_scan(known)
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        assert state.known_scan("m" * 64) == known
        assert state.known_scan("n" * 64) is None
        state.forget_scan()
        assert state.known_scan("m" * 64) is None


def test_the_published_files_are_kept_for_one_pointer_and_recipe(tmp_path: Path) -> None:
    rows = [("pool/b.deb", -5), ("pool/a.deb", 2**63 - 1), ("pool/é.deb", 0)]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        assert state.published_files("p" * 64, "recipe/1") is None
        state.remember_published_files("p" * 64, "recipe/1", [["https://m/"], [], []], rows)
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        kept = state.published_files("p" * 64, "recipe/1")
        assert kept is not None
        about, found = kept
        assert about == [["https://m/"], [], []] and list(found) == sorted(rows)  # in path order, as SQLite sorts
        assert state.published_files("q" * 64, "recipe/1") is None  # another publication's
        assert state.published_files("p" * 64, "recipe/2") is None  # made another way
        state.remember_published_files("q" * 64, "recipe/1", None, rows[:1])  # replaces the last one's
        assert state.published_files("p" * 64, "recipe/1") is None
        kept = state.published_files("q" * 64, "recipe/1")
        assert kept is not None and kept[0] is None and list(kept[1]) == rows[:1]


def test_the_published_files_are_updated_by_a_change_only_from_the_publication_kept(tmp_path: Path) -> None:
    rows = [("pool/a.deb", 1), ("pool/b.deb", 2), ("pool/c.deb", 3)]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.remember_published_files("p" * 64, "recipe/1", None, rows)
        assert not state.update_published_files("x" * 64, "q" * 64, "recipe/1", None, [("pool/d.deb", 4)], [])
        assert not state.update_published_files("p" * 64, "q" * 64, "recipe/2", None, [("pool/d.deb", 4)], [])
        kept = state.published_files("p" * 64, "recipe/1")  # untouched by the refused updates
        assert kept is not None and list(kept[1]) == rows
        assert state.update_published_files(
            "p" * 64, "q" * 64, "recipe/1", [["w"], [], []], [("pool/b.deb", 20), ("pool/d.deb", 4)], ["pool/a.deb"]
        )
        assert state.published_files("p" * 64, "recipe/1") is None
        kept = state.published_files("q" * 64, "recipe/1")
        assert kept is not None and kept[0] == [["w"], [], []]
        assert list(kept[1]) == [("pool/b.deb", 20), ("pool/c.deb", 3), ("pool/d.deb", 4)]


def test_file_facts_come_back_in_path_order(tmp_path: Path) -> None:
    paths = ["pool/b.deb", "pool/a.deb", "pool/é.deb", "pool/z.deb", "pool/A.deb", "pool/a-1.deb"]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry(p)) for p in paths])
        facts = list(state.file_facts())
    assert [f[0] for f in facts] == sorted(paths)  # the order of a scan: Python's, by code point
    assert facts[0] == ("pool/A.deb", 100, "a" * 64, 16384, "b" * 40)


def test_survives_reopen(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store([row(entry())])
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        assert "pool/a.deb" in lookup(state, [entry()])


@pytest.mark.parametrize("kind", ["garbage", "other-repo", "other-tables"])
def test_foreign_or_corrupt_file_is_logged_once_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    path = tmp_path / "s.sqlite"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 512)
    elif kind == "other-repo":
        with StateCache.open(path, repo="other") as state:
            state.store([row(entry())])
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE unrelated (x)")
    with caplog.at_level(logging.WARNING, logger="pipeline.state"):
        with StateCache.open(path, repo="r") as state:
            assert lookup(state, [entry()]) == {}
            state.store([row(entry())])
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()
    with StateCache.open(path, repo="r") as state:
        assert "pool/a.deb" in lookup(state, [entry()])


def test_lookup_of_many_files_returns_exactly_the_unchanged_ones(tmp_path: Path) -> None:
    stored = [entry(f"pool/{i:03}.deb", inode=i, size=i * 7) for i in range(300)]
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.store(row(e, sha=f"{i:064x}") for i, e in enumerate(stored))
        scanned = [
            *stored[:100],  # unchanged
            *(replace(e, mtime_ns=e.mtime_ns + 1) for e in stored[100:150]),  # touched
            *(replace(e, inode=e.inode + 1000) for e in stored[150:200]),  # replaced by another file
            entry("pool/new.deb"),  # never stored
        ]  # stored[200:] are rows of files no longer scanned

        hits = lookup(state, scanned)

        assert sorted(hits) == [e.path for e in stored[:100]]
        for i, e in enumerate(stored[:100]):
            cached = hits[e.path]
            assert cached == CachedFile(f"{i:064x}", 16384, "b" * 40)
            assert (cached.sha256, cached.piece_size, cached.infohash) == (f"{i:064x}", 16384, "b" * 40)
        with pytest.raises(AttributeError):
            cached.sha256 = "x"  # type: ignore[misc]


# --- a --state that cannot hold a writable file: one line, nothing rebuilt (issue 10) ---------------

_HINT = "point --state at a writable file path or fix its permissions"


def refused_state(path: Path, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, logger="pipeline.state"), pytest.raises(ConfigError) as caught:
        StateCache.open(path, repo="r")
    assert not caplog.records  # no "rebuilding it" before the error
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_a_directory_is_refused_and_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kept").write_text("not touched")

    message = refused_state(tmp_path, caplog)

    assert message == f"{tmp_path}: is a directory; point --state at a file path (such as {tmp_path}/state.sqlite)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_path_under_a_regular_file_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture, depth: int) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    path = blocker / "state.sqlite" if depth == 1 else blocker / "sub" / "state.sqlite"

    assert refused_state(path, caplog) == (
        f"{path}: {path.parent} or a directory above it is a file, not a directory; {_HINT}"
    )
    assert blocker.read_text() == "a file"


def test_a_path_where_no_file_can_be_created_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    path = Path("/proc/mirrorseed-test-state.sqlite")  # not even root can create a file in /proc

    assert refused_state(path, caplog) == (
        f"{path}: cannot open or write the state cache (unable to open database file); {_HINT}"
    )


def test_a_foreign_database_with_a_meta_table_of_other_columns_is_still_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (a, b)")
        db.execute("CREATE TABLE files (x)")
    with caplog.at_level(logging.WARNING, logger="pipeline.state"), StateCache.open(path, repo="r") as state:
        state.store([row(entry())])
    assert len(caplog.records) == 1 and "rebuilding it" in caplog.records[0].getMessage()


def test_pages_memo_and_keys_say_the_same(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "s.sqlite", repo="r") as state:
        state.remember_pages([("b.html", "i1", "s1"), ("a.html", "i2", "s2"), ("c/d.html", "i3", "s3")], keep=[])
        assert list(state.page_keys()) == []  # kept none: every page not in `keep` is dropped
        rows = [("b.html", "i1", "s1"), ("a.html", "i2", "s2"), ("c/d.html", "i3", "s3")]
        state.remember_pages(rows, keep=["a.html", "b.html", "c/d.html"])
        assert list(state.page_keys()) == ["a.html", "b.html", "c/d.html"]
        assert state.page_memo() == {"a.html": ("i2", "s2"), "b.html": ("i1", "s1"), "c/d.html": ("i3", "s3")}


def test_compiled_templates_are_kept_from_one_run_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with StateCache.open(path, repo="r") as state:
        assert state.template_code("k1") is None
        state.dump_template_code("k1", b"\x00code one")
        state.dump_template_code("k2", b"code two")
        state.dump_template_code("k1", b"code one, again")
    with StateCache.open(path, repo="r") as state:
        assert state.template_code("k1") == b"code one, again"
        assert state.template_code("k2") == b"code two"
        assert state.template_code("k3") is None


def test_compiled_templates_are_only_a_cache(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "state.sqlite", repo="r") as state:
        state.dump_template_code("k1", b"code")
        state._db.execute("DROP TABLE templates")  # as if the table could not be read or written
        state.dump_template_code("k1", b"code")  # nothing kept, nothing raised
        assert state.template_code("k1") is None


def test_a_state_that_knows_no_file_says_so(tmp_path: Path) -> None:
    with StateCache.open(tmp_path / "state.sqlite", repo="r") as state:
        assert state.knows_no_file()
        state.store([row(entry())])
        assert not state.knows_no_file()
