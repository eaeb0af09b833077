"""pipeline.filetable: the scan's files in columns give back exactly the entries put in, sorted by path."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from pipeline.filetable import FileTable, FileTableBuilder, KnownDigests
from pipeline.model import FileEntry, SignatureRef
from pipeline.state import CachedFile

SHA = "0123456789abcdef" * 4


def _entries() -> list[FileEntry]:
    return [
        FileEntry("pool/b/b_1_amd64.deb", "/srv/snap/pool/b/b_1_amd64.deb", 10, -5, 2**63 + 1, 2**64 - 1),
        # reached through a symlink: the source does not end with the path
        FileEntry("pool/a/link.deb", "/srv/snap/real/target.deb", 0, 7, 1, 2),
        FileEntry(
            "pool/c/c_2_all.deb",
            "/srv/snap/pool/c/c_2_all.deb",
            3,
            4,
            1,
            3,
            SHA,
            "c",
            "2",
            "all",
            "C pkg",
            None,
            ("bookworm/main/all", "trixie/main/all"),
        ),  # fmt: skip
        # a digest kept as given when it is not lowercase hex
        FileEntry("pool/d/d.deb", "/srv/snap/pool/d/d.deb", 3, 4, 1, 4, SHA.upper(), "d", "1", "amd64"),
        FileEntry(
            "core/os/x86_64/e-1-1-x86_64.pkg.tar.zst",
            "/srv/snap/core/os/x86_64/e-1-1-x86_64.pkg.tar.zst",
            5,
            6,
            1,
            5,
            SHA,
            signature=SignatureRef("core/os/x86_64/e-1-1-x86_64.pkg.tar.zst.sig", 119, SHA),
        ),  # fmt: skip
        FileEntry("pool/a/a.deb", "/srv/snap/pool/a/a.deb", 1, 1, 1, 6, "short"),
    ]


def test_the_table_gives_back_every_entry_sorted_by_path() -> None:
    entries = _entries()
    table = FileTable.of(entries)
    expected = sorted(entries, key=lambda entry: entry.path)
    assert list(table) == expected
    assert [table[index] for index in range(len(table))] == expected
    assert table[-1] == expected[-1]
    assert table[1:3] == expected[1:3]
    assert list(table.paths) == [entry.path for entry in expected]
    assert table == tuple(expected)
    assert table != tuple(expected[:-1])
    with pytest.raises(IndexError):
        table[len(expected)]


def test_a_digest_before_the_first_hex_one_stays_absent_or_as_given() -> None:
    entries = [
        FileEntry("a", "/r/a", 1, 1, 1, 1),
        FileEntry("b", "/r/b", 1, 1, 1, 2, "ODD"),
        FileEntry("c", "/r/c", 1, 1, 1, 3, SHA),
        FileEntry("d", "/r/d", 1, 1, 1, 4),
    ]
    assert list(FileTable.of(entries)) == entries


def test_take_makes_the_chosen_entries_only() -> None:
    entries = sorted(_entries(), key=lambda entry: entry.path)
    taken = FileTable.of(entries).take([0, 2, 5])
    assert len(taken) == 3
    assert list(taken) == [entries[0], entries[2], entries[5]]
    assert taken[1] == entries[2]
    assert taken[1:] == [entries[2], entries[5]]


def test_an_empty_table() -> None:
    table = FileTableBuilder().build()
    assert len(table) == 0
    assert list(table) == []
    assert table == ()


def test_a_table_keeps_about_fifty_bytes_a_file() -> None:
    """The point of the table: a Debian-like file costs ~50 bytes of columns, not ~2 KB; its path, name,
    version, description and expected SHA-256 are on disk (`pipeline.scratch`), from the time it is added."""
    count = 20_000
    gc.collect()
    tracemalloc.start()
    try:
        builder = FileTableBuilder()
        for index in range(count):
            path = f"pool/main/p/pkg{index:06d}/pkg{index:06d}_1.0-{index % 7}_amd64.deb"
            builder.add(
                FileEntry(
                    path,
                    "/srv/mirror/debian/" + path,
                    index,
                    1_700_000_000_000_000_000,
                    64768,
                    10_000_000 + index,
                    f"{index:064x}",
                    f"pkg{index:06d}",
                    f"1.0-{index % 7}",
                    "amd64",
                    f"package number {index}",
                    None,
                    ("bookworm/main/amd64",),
                )  # fmt: skip
            )
        table = builder.build()
        del builder
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == count
    # four numbers 32, a prefix number 4, two shared values' numbers 8, three None flags: ~50
    assert held / count < 64, f"{held / count:.0f} bytes a file"
    # nor while it is built: the texts go to the scratch file as they come, not kept until build (~300)
    assert peak / count < 100, f"peak {peak / count:.0f} bytes a file"
    entry = table[count - 1]
    assert (entry.name, entry.version, entry.description) == ("pkg019999", "1.0-0", "package number 19999")


def test_known_digests_give_back_what_was_set_by_row() -> None:
    known = KnownDigests(5)
    assert list(known.unknown()) == [0, 1, 2, 3, 4]
    known[0] = CachedFile(SHA, 16384, "ab" * 20)
    known[2] = CachedFile(SHA, 0, None)  # a zero-length file has no torrent
    known[3] = CachedFile(SHA.upper(), 32768, "odd")  # kept as given
    known[4] = CachedFile(SHA, 1, "cd" * 20)
    del known[4]
    assert known[0] == CachedFile(SHA, 16384, "ab" * 20)
    assert known[2] == CachedFile(SHA, 0, None)
    assert known[3] == CachedFile(SHA.upper(), 32768, "odd")
    assert 1 not in known and 4 not in known and 0 in known
    assert list(known.unknown()) == [1, 4]
    with pytest.raises(KeyError):
        known[1]
    known[3] = CachedFile(SHA, 7, "ef" * 20)  # an odd value replaced by a plain one
    assert known[3] == CachedFile(SHA, 7, "ef" * 20)


def test_size_at_and_row_of_read_the_columns() -> None:
    entries = _entries()
    table = FileTable.of(entries)
    by_path = {e.path: e for e in entries}
    for row, path in enumerate(table.paths):
        assert table.row_of(path) == row
        assert table.size_at(row) == by_path[path].size
    assert table.row_of("pool/a") is None and table.row_of("zzz") is None and table.row_of("") is None


def test_a_directory_is_held_when_a_file_is_in_it_or_below() -> None:
    table = FileTable.of([FileEntry(path, f"/r/{path}", 1, 1) for path in ("a-b", "a/x", "a.c/q", "c/d/e/f", "top")])
    for directory in ("", "a", "a.c", "c", "c/d", "c/d/e"):
        assert table.holds_directory(directory), directory
    for directory in ("a-b", "a/x", "b", "c/d/e/f", "c/", "c/d/", "top", "a.", "c/d/e/f/g"):
        assert not table.holds_directory(directory), directory
    assert FileTable.of([]).holds_directory("") and not FileTable.of([]).holds_directory("a")


def test_column_accessors_answer_like_the_entries() -> None:
    """stat_at, expected_sha256_at, shards_at, shown_at, sizes and total_size read the columns; each agrees with the
    entry the table makes for the row (the digest as given, odd or absent; the shards, none by default)."""
    table = FileTable.of(_entries())
    for row, entry in enumerate(table):
        assert table.stat_at(row) == (entry.dev, entry.inode, entry.size, entry.mtime_ns)
        shown = (entry.path, entry.size, entry.name, entry.version, entry.arch, entry.description, entry.signature)
        assert table.shown_at(row) == shown
        assert table.expected_sha256_at(row) == entry.expected_sha256
        assert table.shards_at(row) == entry.shards
    assert table.total_size() == sum(e.size for e in _entries()) == 22
    assert list(table.sizes()) == [entry.size for entry in table]
    assert table.shards_at(table.paths.index("pool/c/c_2_all.deb")) == ("bookworm/main/all", "trixie/main/all")
    assert table.expected_sha256_at(table.paths.index("pool/d/d.deb")) == SHA.upper()
    assert table.expected_sha256_at(table.paths.index("pool/b/b_1_amd64.deb")) is None
    signed = table.shown_at(table.paths.index("core/os/x86_64/e-1-1-x86_64.pkg.tar.zst"))
    assert signed[-1] == SignatureRef("core/os/x86_64/e-1-1-x86_64.pkg.tar.zst.sig", 119, SHA)
    assert table.shown_at(table.paths.index("pool/c/c_2_all.deb"))[2:6] == ("c", "2", "all", "C pkg")
    assert FileTable.of([]).total_size() == 0


def _stat_row(entry: FileEntry) -> tuple[str, str, int, int, int, int]:
    return (entry.path, entry.source, entry.size, entry.mtime_ns, entry.dev, entry.inode)


@pytest.mark.parametrize("first", [0, 1, 3, 6])
def test_stat_rows_make_the_table_add_makes(first: int) -> None:
    """Files added as stat rows (the flat walk's) and as FileEntry values, mixed in any order, before and after
    files with digests, package texts, shards and signatures: the same table as `add` of each, sorted."""
    plain = [FileEntry(f"pool/z/{i:03d}.deb", f"/srv/snap/pool/z/{i:03d}.deb", i, i + 1, 1, 100 + i) for i in range(70)]
    plain.append(FileEntry("pool/y/link.deb", "/srv/snap/real/target.deb", 5, 6, 7, 8))  # through a symlink
    facts = _entries()
    by_add, by_rows = FileTableBuilder(), FileTableBuilder()
    for entry in [*facts[:first], *plain, *facts[first:]]:
        by_add.add(entry)
    for entry in facts[:first]:
        by_rows.add(entry)
    by_rows.add_stat_rows([_stat_row(entry) for entry in plain[:40]])
    by_rows.add_stat_rows([])
    by_rows.add_stat_rows([_stat_row(entry) for entry in plain[40:]])
    for entry in facts[first:]:
        by_rows.add(entry)
    expected = sorted([*facts, *plain], key=lambda entry: entry.path)
    assert list(by_rows.build()) == list(by_add.build()) == expected


def test_stat_rows_out_of_order_are_sorted_by_build() -> None:
    entries = [FileEntry(f"p/{name}", f"/r/p/{name}", 1, 2, 3, 4) for name in ("b", "c", "a", "d")]
    builder = FileTableBuilder()
    builder.add_stat_rows([_stat_row(entry) for entry in entries[:2]])
    builder.add_stat_rows([_stat_row(entry) for entry in entries[2:]])
    assert list(builder.build()) == sorted(entries, key=lambda entry: entry.path)
