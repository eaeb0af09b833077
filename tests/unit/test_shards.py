"""pipeline.shards: which index shards list a file (docs/sharded-index.md), for each format, from FileEntry
values and from real scans; grouping records into shards; fingerprints that see a change of membership."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import sequences
from pipeline.filetable import FileTable
from pipeline.index import package_json
from pipeline.model import FileEntry, PackageRecord
from pipeline.records import build_records
from pipeline.shards import (
    TOP,
    Fingerprints,
    PublishedFingerprints,
    debian_shard,
    fingerprint,
    record_hash,
    shards_of,
)
from pipeline.snapshot import ScanSpec, scan_snapshot
from tests.unit import test_snapshot_arch as arch_fixture
from tests.unit.test_snapshot_debian import Pkg, stanza


def rhash(rec: PackageRecord) -> int:
    """A record's hash as the build and read_index make it."""
    return record_hash(package_json(rec))


def entry(path: str, *shards: str) -> FileEntry:
    return FileEntry(path=path, source=Path("/snapshot") / path, size=1000, mtime_ns=0, shards=shards)


def record(path: str, sha256: str = "a" * 64) -> PackageRecord:
    return PackageRecord(
        path=path, size=1000, sha256=sha256, infohash="1" * 40, piece_size=16384, torrent=f"torrents/{path}.torrent",
        metalink=f"metalinks/{path}.meta4", magnet="magnet:?xt=urn:btih:" + "1" * 40,
    )  # fmt: skip


# -- names per format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("README", "."),
        ("SHA256SUMS.asc", "."),
        ("iso/debian-12.iso", "iso"),
        ("iso/amd64/deep/er/debian-12.iso", "iso"),
        ("日本/ü.txt", "日本"),
        ("a.b/c", "a.b"),
    ],
)
def test_flat_shard_is_the_top_directory_or_dot(path: str, expected: str) -> None:
    assert shards_of(entry(path), "flat") == (expected,)
    assert TOP == "."


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst", "core/x86_64"),
        ("core/os/x86_64/hello-2.12-1-x86_64.pkg.tar.zst.sig", "core/x86_64"),
        ("extra/os/aarch64/py.thing-0.5-1-any.pkg.tar.zst", "extra/aarch64"),
        ("core-testing/os/x86_64/sub/x.pkg.tar.zst", "core-testing/x86_64"),
    ],
)
def test_arch_shard_is_repo_slash_arch(path: str, expected: str) -> None:
    assert shards_of(entry(path), "arch") == (expected,)


def test_the_repository_metadata_decides_when_it_names_shards() -> None:
    """Debian: the scan records every shard listing the file (`FileEntry.shards`); the path does not matter."""
    names = ("bookworm/main/all", "trixie/main/all")
    assert shards_of(entry("pool/main/h/hello-doc/hello-doc_2.10-3_all.deb", *names), "debian") == names
    assert shards_of(entry("core/os/x86_64/x.pkg.tar.zst", "other/name"), "arch") == ("other/name",)


@pytest.mark.parametrize(
    ("index_arch", "package_arch", "expected"),
    [
        ("amd64", "amd64", "bookworm/main/amd64"),
        ("arm64", "arm64", "bookworm/main/arm64"),
        ("amd64", "all", "bookworm/main/all"),
        ("arm64", "all", "bookworm/main/all"),
        ("all", "all", "bookworm/main/all"),
        ("amd64", None, "bookworm/main/amd64"),  # no Architecture field: the Packages file's
        ("i386", "allx", "bookworm/main/i386"),
    ],
)
def test_debian_shard(index_arch: str, package_arch: str | None, expected: str) -> None:
    assert debian_shard("bookworm", "main", index_arch, package_arch) == expected


def test_debian_shard_keeps_suite_and_component() -> None:
    assert (
        debian_shard("trixie-security", "non-free-firmware", "amd64", "all") == "trixie-security/non-free-firmware/all"
    )


# -- from real scans -----------------------------------------------------------------------------


def write_debian(root: Path, suite: str, listings: dict[tuple[str, str], list[Pkg]]) -> None:
    """dists/<suite>/<component>/binary-<arch>/Packages as given (an `Architecture: all` package may be in
    several, as on real mirrors), the pool files and a Release listing the Packages files."""
    lines = []
    for (component, arch), packages in listings.items():
        text = "\n".join(stanza(p) for p in packages).encode()
        directory = root / "dists" / suite / component / f"binary-{arch}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "Packages").write_bytes(text)
        lines.append(f" {hashlib.sha256(text).hexdigest()} {len(text):>8} {component}/binary-{arch}/Packages")
        for pkg in packages:
            (root / pkg.path).parent.mkdir(parents=True, exist_ok=True)
            (root / pkg.path).write_bytes(pkg.content)
    components = sorted({component for component, _ in listings})
    architectures = sorted({arch for _, arch in listings})
    (root / "dists" / suite / "Release").write_text(
        f"Origin: Test\nSuite: {suite}\nCodename: {suite}\nArchitectures: {' '.join(architectures)}\n"
        f"Components: {' '.join(components)}\nSHA256:\n" + "\n".join(lines) + "\n"
    )


HELLO = Pkg("hello", "2.10-3", "amd64")
HELLO_ARM = Pkg("hello", "2.10-3", "arm64")
DOC = Pkg("hello-doc", "2.10-3", "all")
FW = Pkg("fw", "1", "all", component="non-free")


@pytest.mark.parametrize("run", [1, 32768])
def test_debian_scan_records_each_files_shards(tmp_path: Path, run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with every stanza a run of its own in the scratch file (`sequences.sorted_spilled`)."""
    monkeypatch.setattr(sequences, "SPILL_RUN", run)
    write_debian(
        tmp_path,
        "bookworm",
        {
            ("main", "amd64"): [HELLO, DOC],
            ("main", "arm64"): [HELLO_ARM, DOC],
            ("main", "all"): [DOC],
            ("non-free", "amd64"): [FW],
        },
    )
    write_debian(tmp_path, "trixie", {("main", "amd64"): [HELLO, DOC]})
    snapshot = scan_snapshot(ScanSpec(root=tmp_path))
    assert snapshot.format == "debian"
    got = {e.path: shards_of(e, snapshot.format) for e in snapshot.files}
    assert got == {
        # in two suites: in both; Architecture: all, in three Packages of bookworm: once, in .../all
        DOC.path: ("bookworm/main/all", "trixie/main/all"),
        FW.path: ("bookworm/non-free/all",),
        HELLO.path: ("bookworm/main/amd64", "trixie/main/amd64"),
        HELLO_ARM.path: ("bookworm/main/arm64",),
    }
    assert all(entry.shards == got[entry.path] for entry in snapshot.files)


def test_arch_scan_shards(tmp_path: Path) -> None:
    hello, anything = arch_fixture.HELLO, arch_fixture.ANY
    arch_fixture.write_repo(tmp_path, "core", "x86_64", [hello, anything])
    arch_fixture.write_repo(tmp_path, "extra", "aarch64", [anything])
    snapshot = scan_snapshot(ScanSpec(root=tmp_path))
    assert snapshot.format == "arch"
    assert {e.path: shards_of(e, snapshot.format) for e in snapshot.files} == {
        f"core/os/x86_64/{hello.file}": ("core/x86_64",),
        f"core/os/x86_64/{anything.file}": ("core/x86_64",),  # an `any` package: in each arch it is listed in
        f"extra/os/aarch64/{anything.file}": ("extra/aarch64",),
    }


def test_flat_scan_shards(tmp_path: Path) -> None:
    for path in ("README", "iso/a.iso", "iso/deep/b.iso", "tools/t.tar.gz"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(path.encode())
    snapshot = scan_snapshot(ScanSpec(root=tmp_path, format="flat"))
    assert {e.path: shards_of(e, "flat") for e in snapshot.files} == {
        "README": (".",),
        "iso/a.iso": ("iso",),
        "iso/deep/b.iso": ("iso",),
        "tools/t.tar.gz": ("tools",),
    }


# -- group ---------------------------------------------------------------------------------------


FILES = (
    entry("pool/main/a/a_1_amd64.deb", "bookworm/main/amd64"),
    entry("pool/main/d/doc_1_all.deb", "bookworm/main/all", "trixie/main/all"),
    entry("pool/main/h/h_1_amd64.deb", "bookworm/main/amd64", "trixie/main/amd64"),
    entry("pool/main/z/z_1_arm64.deb", "bookworm/main/arm64"),
    entry("pool/main/zz/zz_1_all.deb", "trixie/main/all"),
)
RECORDS = tuple(record(f.path) for f in FILES)


def file_table(files: Sequence[FileEntry]) -> FileTable:
    return FileTable.of(replace(f, source=str(f.source)) for f in files)


def record_fingerprints(records: Sequence[PackageRecord], files: Sequence[FileEntry], fmt: str) -> Fingerprints:
    return build_records(records, file_table(files), fmt).fingerprints


def group(records: Sequence[PackageRecord], files: Sequence[FileEntry], fmt: str) -> dict[str, list[PackageRecord]]:
    """Each shard's records, as the build keeps them (their JSON) and read back."""
    shards = build_records(records, file_table(files), fmt).shards
    return {name: [PackageRecord.from_json(json.loads(text)) for text in column] for name, column in shards.items()}


def test_group_lists_a_file_in_every_shard_in_path_order() -> None:
    shards = group(RECORDS, FILES, "debian")
    assert list(shards) == [
        "bookworm/main/all", "bookworm/main/amd64", "bookworm/main/arm64", "trixie/main/all", "trixie/main/amd64",
    ]  # fmt: skip
    assert {name: [r.path for r in members] for name, members in shards.items()} == {
        "bookworm/main/all": ["pool/main/d/doc_1_all.deb"],
        "bookworm/main/amd64": ["pool/main/a/a_1_amd64.deb", "pool/main/h/h_1_amd64.deb"],
        "bookworm/main/arm64": ["pool/main/z/z_1_arm64.deb"],
        "trixie/main/all": ["pool/main/d/doc_1_all.deb", "pool/main/zz/zz_1_all.deb"],
        "trixie/main/amd64": ["pool/main/h/h_1_amd64.deb"],
    }
    for listed in shards.values():
        assert [r.path for r in listed] == sorted(r.path for r in listed)
    assert shards["bookworm/main/all"][0] == RECORDS[1] and shards["trixie/main/all"][0] == RECORDS[1]
    assert sum(map(len, shards.values())) == sum(len(f.shards) for f in FILES)


def test_group_flat_and_arch_by_path() -> None:
    flat = (entry("README"), entry("iso/a.iso"), entry("iso/b.iso"), entry("z"))
    shards = group(tuple(record(f.path) for f in flat), flat, "flat")
    assert {name: [r.path for r in members] for name, members in shards.items()} == {
        ".": ["README", "z"],
        "iso": ["iso/a.iso", "iso/b.iso"],
    }
    assert list(shards) == [".", "iso"]
    arch = (entry("core/os/aarch64/a"), entry("core/os/x86_64/a"), entry("core/os/x86_64/b"))
    shards = group(tuple(record(f.path) for f in arch), arch, "arch")
    assert {name: len(members) for name, members in shards.items()} == {"core/aarch64": 1, "core/x86_64": 2}


def test_no_files_no_shards_and_an_all_file_in_each_architecture_shard_by_row() -> None:
    assert group((), (), "debian") == {}
    assert [r.path for r in group(RECORDS, FILES, "debian")["trixie/main/all"]] == [FILES[1].path, FILES[4].path]


# -- fingerprints --------------------------------------------------------------------------------


def test_fingerprints_see_a_change_of_shard_membership() -> None:
    before = record_fingerprints(RECORDS, FILES, "debian")
    assert set(before) == {f.path for f in FILES}
    assert record_fingerprints(RECORDS, FILES, "debian") == before
    # same records, one file now also listed in another suite: its fingerprint (only its) changes
    moved = (*FILES[:2], replace(FILES[2], shards=("bookworm/main/amd64",)), *FILES[3:])
    after = record_fingerprints(RECORDS, moved, "debian")
    assert after != before
    assert [path for path in before if before[path] != after[path]] == [FILES[2].path]
    # a record's content changes, its shards do not
    changed = (*RECORDS[:3], replace(RECORDS[3], sha256="b" * 64), RECORDS[4])
    assert [p for p, v in record_fingerprints(changed, FILES, "debian").items() if v != before[p]] == [RECORDS[3].path]
    # a description is not in the index
    described = tuple(replace(r, description="new text") for r in RECORDS)
    assert record_fingerprints(described, FILES, "debian") == before


def test_fingerprints_by_path_for_flat() -> None:
    files = (entry("iso/a.iso"),)
    records = (record("iso/a.iso"),)
    assert record_fingerprints(records, files, "flat") == {"iso/a.iso": fingerprint(rhash(records[0]), ["iso"])}
    assert record_fingerprints(records, files, "flat") != record_fingerprints(
        records, (entry("iso/a.iso", "x"),), "flat"
    )


def test_fingerprint_is_order_free_over_shards_and_sees_each_one() -> None:
    h = rhash(record("p"))
    assert fingerprint(h, ["b", "a"]) == fingerprint(h, ("a", "b")) == fingerprint(h, iter(["a", "b"]))
    others = {
        fingerprint(h, ["a"]),
        fingerprint(h, ["a", "b", "c"]),
        fingerprint(h, []),
        fingerprint(h + 1, ["a", "b"]),
    }
    assert fingerprint(h, ["a", "b"]) not in others and len(others) == 4
    # built (build_records) and read back from the published shards (fingerprint) agree
    rec, file = RECORDS[1], FILES[1]
    assert record_fingerprints((rec,), (file,), "debian")[rec.path] == fingerprint(rhash(rec), reversed(file.shards))


def test_fingerprints_of_a_file_table_are_a_column_that_compares_like_the_dict() -> None:
    by_row = record_fingerprints(RECORDS, FILES, "debian")
    as_dict = {r.path: fingerprint(rhash(r), f.shards) for r, f in zip(RECORDS, FILES, strict=True)}
    assert isinstance(by_row, Fingerprints)
    assert by_row == as_dict and as_dict == by_row and dict(by_row.items()) == as_dict
    assert list(by_row) == [f.path for f in FILES] and len(by_row) == len(FILES)
    assert by_row["pool/main/h/h_1_amd64.deb"] == as_dict["pool/main/h/h_1_amd64.deb"]
    assert "pool/main/x.deb" not in by_row and by_row.get("pool/main/x.deb") is None
    changed = {**as_dict, "pool/main/z/z_1_arm64.deb": 0}
    assert by_row != changed and changed != by_row and by_row != {**as_dict, "other": 1}
    with pytest.raises(KeyError):
        by_row["pool/main/x.deb"]


def published(
    files: FileTable | None, records: Sequence[PackageRecord], entries: Sequence[FileEntry]
) -> PublishedFingerprints:
    """What read_index makes of a publication of `records` (listed as `entries` say): shard by shard, by name."""
    found = PublishedFingerprints(files)
    listed = sorted((name, rec.path, rhash(rec)) for rec, e in zip(records, entries, strict=True) for name in e.shards)
    for name, path, value in listed:
        found.add(path, value, name)
    return found


def test_published_fingerprints_read_back_equal_the_built_ones_by_row_and_by_path() -> None:
    files = file_table(FILES)
    built = build_records(RECORDS, files, "debian").fingerprints
    for table in (files, None):  # by row of the run's table; all by path (read_current, no table)
        read = published(table, RECORDS, FILES)
        assert read == built and built == read and dict(read.items()) == dict(built.items())
        assert len(read) == len(FILES) and sorted(read) == sorted(f.path for f in FILES)
        with pytest.raises(KeyError):
            read["pool/main/x.deb"]
    read = published(files, RECORDS, FILES)
    assert read.changes(built) == ((), (), (), len(FILES)) and list(read.changed_rows(built) or ()) == []


def test_published_fingerprints_tell_new_changed_and_removed_files_by_row() -> None:
    files = file_table(FILES)
    built = build_records(RECORDS, files, "debian").fingerprints
    # the publication lacks FILES[0], lists RECORDS[3] with another SHA-256, lists FILES[2] in one more
    # shard, and lists a file the run no longer has
    gone, gone_entry = record("pool/main/zz/gone.deb"), entry("pool/main/zz/gone.deb", "bookworm/main/all")
    old_records = [replace(RECORDS[3], sha256="b" * 64) if r is RECORDS[3] else r for r in RECORDS[1:]] + [gone]
    old_entries = [
        replace(FILES[2], shards=(*FILES[2].shards, "trixie/main/all")) if f is FILES[2] else f for f in FILES[1:]
    ]
    read = published(files, old_records, [*old_entries, gone_entry])
    new, changed, removed, unchanged = read.changes(built) or ((), (), (), -1)
    assert new == (FILES[0].path,)
    assert changed == tuple(sorted((FILES[2].path, FILES[3].path)))
    assert removed == (gone.path,) and unchanged == len(FILES) - 3
    assert list(read.changed_rows(built) or ()) == [0, 2, 3]
    assert read != built and gone.path in read and FILES[0].path not in read
    # the generic comparison (by path) agrees with the one by row
    assert read != dict(built.items())
    by_path = published(None, old_records, [*old_entries, gone_entry])
    assert by_path.changes(built) is None and dict(by_path.items()) == dict(read.items())


def test_remembered_fingerprints_tell_the_same_changes_as_those_read_back() -> None:
    files = file_table(FILES)
    built = build_records(RECORDS, files, "debian").fingerprints
    gone, gone_entry = record("pool/main/zz/gone.deb"), entry("pool/main/zz/gone.deb", "bookworm/main/all")
    old_records = [replace(RECORDS[3], sha256="b" * 64) if r is RECORDS[3] else r for r in RECORDS[1:]] + [gone]
    old_entries = [*FILES[1:], gone_entry]
    read = published(files, old_records, old_entries)
    # what the state keeps of that publication: its (path, fingerprint) pairs in path order
    kept = PublishedFingerprints.remembered(files, sorted(dict(read.items()).items()))
    assert kept == read and dict(kept.items()) == dict(read.items())
    assert kept.changes(built) == read.changes(built) == ((FILES[0].path,), (FILES[3].path,), (gone.path,), 3)
    assert list(kept.changed_rows(built) or ()) == [0, 3]
    assert kept[FILES[1].path] == built[FILES[1].path] and kept[gone.path] == read[gone.path]
    with pytest.raises(KeyError):
        kept[FILES[0].path]
    same = PublishedFingerprints.remembered(files, built.items())
    assert same == built and same.changes(built) == ((), (), (), len(FILES))
    with pytest.raises(TypeError):
        same.add(FILES[0].path, 1, "bookworm/main/all")


def test_remembered_fingerprints_out_of_path_order_are_refused() -> None:
    files = file_table(FILES)
    pairs = list(build_records(RECORDS, files, "debian").fingerprints.items())
    for bad in (pairs[::-1], [pairs[0], pairs[0]]):
        with pytest.raises(ValueError, match="after"):
            PublishedFingerprints.remembered(files, bad)


def test_fingerprints_are_the_same_in_every_process() -> None:
    """The state cache keeps them from one run to the next: a str's hash() or PYTHONHASHSEED may not change them."""
    import os
    import subprocess
    import sys

    code = (
        "from pipeline.shards import fingerprint, record_hash\n"
        "print(fingerprint(record_hash('{\"path\": \"p\"}'), ['trixie/main/all', 'bookworm/main/amd64']))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True,
            text=True, check=True, timeout=60, cwd=Path(__file__).parents[2],
        ).stdout.strip()
        for seed in ("1", "2", "random")
    }  # fmt: skip
    assert seen == {str(fingerprint(record_hash('{"path": "p"}'), ["bookworm/main/amd64", "trixie/main/all"]))}
