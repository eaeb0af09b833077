"""Flat snapshots: which files are published, symlink containment, and the name rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTableBuilder
from pipeline.model import FileEntry
from pipeline.snapshot import ScanSpec, flat, scan_snapshot

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def scan_flat(root: Path) -> dict[str, Path]:
    snapshot = scan_snapshot(ScanSpec(root=root, format="flat"))
    assert snapshot.format == "flat"
    assert all(isinstance(entry.source, str) for entry in snapshot.files)
    return {entry.path: Path(entry.source) for entry in snapshot.files}


def flat_error(root: Path) -> str:
    with pytest.raises(SnapshotError) as caught:
        scan_snapshot(ScanSpec(root=root, format="flat"))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_lists_regular_files_recursively_with_stat_values(tmp_path: Path) -> None:
    write(tmp_path / "b.deb", b"12345")
    write(tmp_path / "pool" / "main" / "a.deb", b"abc")
    os.utime(tmp_path / "b.deb", ns=(1_000_000_123, 2_000_000_456))

    snapshot = scan_snapshot(ScanSpec(root=tmp_path, format="flat"))

    assert [entry.path for entry in snapshot.files] == ["b.deb", "pool/main/a.deb"]
    b_entry = snapshot.files[0]
    assert (b_entry.size, b_entry.mtime_ns) == (5, 2_000_000_456)
    assert b_entry.source == str(tmp_path.resolve() / "b.deb")
    assert b_entry.expected_sha256 is None and b_entry.name is None
    assert snapshot.root == tmp_path.resolve()


def test_skips_dotfiles_rsync_temporaries_fifos_and_sockets(tmp_path: Path) -> None:
    write(tmp_path / "keep.deb")
    write(tmp_path / ".hidden")
    write(tmp_path / "pool" / ".keep.deb.Ab12Cd")  # rsync temporary
    write(tmp_path / ".~tmp~" / "partial.deb")
    write(tmp_path / ".git" / "config")
    os.mkfifo(tmp_path / "pool" / "fifo.deb")  # opening it would block the scan
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(tmp_path / "s"))
        assert list(scan_flat(tmp_path)) == ["keep.deb"]


def test_symlink_to_file_inside_is_listed_under_its_own_path(tmp_path: Path) -> None:
    target = write(tmp_path / "pool" / "real.deb", b"data")
    (tmp_path / "current.deb").symlink_to("pool/real.deb")

    files = scan_flat(tmp_path)

    assert files == {"current.deb": target.resolve(), "pool/real.deb": target.resolve()}


def test_symlink_to_directory_inside_is_walked_under_the_link_path(tmp_path: Path) -> None:
    write(tmp_path / "dists" / "bookworm" / "Release")
    (tmp_path / "dists" / "stable").symlink_to("bookworm")

    files = scan_flat(tmp_path)

    assert sorted(files) == ["dists/bookworm/Release", "dists/stable/Release"]
    assert files["dists/stable/Release"] == (tmp_path / "dists" / "bookworm" / "Release").resolve()


def test_symlink_to_a_dot_file_inside_is_followed(tmp_path: Path) -> None:
    write(tmp_path / ".store" / "blob")
    (tmp_path / "visible.deb").symlink_to(".store/blob")

    assert list(scan_flat(tmp_path)) == ["visible.deb"]


@pytest.mark.parametrize("absolute", [True, False])
def test_symlink_leaving_the_root_fails_naming_the_link(tmp_path: Path, absolute: bool) -> None:
    outside = write(tmp_path / "outside.deb")
    root = tmp_path / "root"
    write(root / "ok.deb")
    (root / "pool").mkdir()
    (root / "pool" / "evil.deb").symlink_to(outside if absolute else "../../outside.deb")

    message = flat_error(root)

    assert message.startswith("pool/evil.deb: symlink points outside the snapshot")


def test_symlink_to_the_roots_sibling_with_common_prefix_fails(tmp_path: Path) -> None:
    write(tmp_path / "root-other" / "x.deb")
    write(tmp_path / "root" / "ok.deb")
    (tmp_path / "root" / "x.deb").symlink_to(tmp_path / "root-other" / "x.deb")

    assert flat_error(tmp_path / "root").startswith("x.deb: symlink points outside")


def test_dangling_symlink_fails_naming_the_link(tmp_path: Path) -> None:
    (tmp_path / "gone.deb").symlink_to("nowhere.deb")

    message = flat_error(tmp_path)

    assert message.startswith("gone.deb: dangling symlink")


def test_symlink_cycle_fails_naming_a_link(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")

    message = flat_error(tmp_path)

    assert message.startswith(("a: symlink cannot be resolved", "b: symlink cannot be resolved"))


def test_directory_symlink_to_an_ancestor_fails_instead_of_recursing(tmp_path: Path) -> None:
    write(tmp_path / "dists" / "bookworm" / "Release")
    (tmp_path / "dists" / "bookworm" / "updates").symlink_to(".")

    message = flat_error(tmp_path)

    assert message.startswith("dists/bookworm/updates: symlink loop")


def test_name_that_is_not_utf8_fails_with_the_escaped_name(tmp_path: Path) -> None:
    write(tmp_path / "pool" / "ok.deb")
    with open(os.path.join(os.fsencode(tmp_path), b"pool", b"bad\xff.deb"), "wb"):
        pass

    message = flat_error(tmp_path)

    assert message.startswith("pool/b'bad\\xff.deb': name is not valid UTF-8")
    assert "rename" in message


def test_directory_name_that_is_not_utf8_fails(tmp_path: Path) -> None:
    bad_dir = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")
    os.mkdir(bad_dir)
    write(Path(os.fsdecode(bad_dir)) / "f.deb")

    assert "not valid UTF-8" in flat_error(tmp_path)


def test_name_not_in_nfc_fails_and_is_not_normalised(tmp_path: Path) -> None:
    write(tmp_path / "cafe\u0301.deb")

    message = flat_error(tmp_path)

    assert "not in Unicode NFC form" in message
    assert "cafe\\u0301.deb" in message


@pytest.mark.parametrize("name", ["new\nline.deb", "tab\t.deb", "back\\slash.deb", "c1\x85.deb", "ls\u2028.deb"])
def test_control_characters_and_backslashes_in_names_fail(tmp_path: Path, name: str) -> None:
    write(tmp_path / name)

    message = flat_error(tmp_path)

    assert "control character or backslash" in message


def test_hostile_but_valid_name_is_accepted_verbatim(tmp_path: Path) -> None:
    name = "<img src=x onerror=alert(1)>&\"'.deb"
    write(tmp_path / "pool" / name)
    write(tmp_path / "pool" / "caf\u00e9 \u2603 +%20.deb")

    assert sorted(scan_flat(tmp_path)) == sorted([f"pool/{name}", "pool/caf\u00e9 \u2603 +%20.deb"])


def test_root_given_through_a_symlink_is_resolved(tmp_path: Path) -> None:
    write(tmp_path / "real" / "a.deb")
    (tmp_path / "link").symlink_to("real")

    snapshot = scan_snapshot(ScanSpec(root=tmp_path / "link", format="flat"))

    assert snapshot.files[0].source == str((tmp_path / "real" / "a.deb").resolve())


def test_missing_root_fails(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=r"snapshot directory does not exist; pass --snapshot DIR$"):
        scan_snapshot(ScanSpec(root=tmp_path / "nope", format="flat"))
    write(tmp_path / "file")
    with pytest.raises(SnapshotError, match="does not exist"):
        scan_snapshot(ScanSpec(root=tmp_path / "file", format="flat"))


def test_auto_never_falls_back_to_flat(tmp_path: Path) -> None:
    write(tmp_path / "pool" / "a.deb")

    with pytest.raises(SnapshotError, match="pass --format flat"):
        scan_snapshot(ScanSpec(root=tmp_path))


def test_arch_layout_is_detected_and_a_bad_db_refused(tmp_path: Path) -> None:
    write(tmp_path / "core" / "os" / "x86_64" / "core.db")  # not a tar: auto-detection must still pick arch

    with pytest.raises(SnapshotError, match="core.db: not a repository database"):
        scan_snapshot(ScanSpec(root=tmp_path))
    with pytest.raises(SnapshotError, match="core.db: not a repository database"):
        scan_snapshot(ScanSpec(root=tmp_path, format="arch"))


def test_sync_lock_relative_to_root_refuses(tmp_path: Path) -> None:
    write(tmp_path / "a.deb")
    lock = Path("Archive-Update-in-Progress-mirror1")
    spec = ScanSpec(root=tmp_path, format="flat", sync_lock=(lock,))
    assert scan_snapshot(spec).files  # no lock yet

    write(tmp_path / lock)

    with pytest.raises(SnapshotError) as caught:
        scan_snapshot(spec)
    assert str(caught.value) == (
        f"{tmp_path.resolve() / lock}: a sync is in progress (lock file exists); run again after the sync finishes"
    )


def test_bad_spec_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format"):
        scan_snapshot(ScanSpec(root=tmp_path, format="rpm"))
    with pytest.raises(ConfigError, match="Debian snapshots only"):
        scan_snapshot(ScanSpec(root=tmp_path, format="flat", suites=("bookworm",)))
    with pytest.raises(ConfigError, match="not a plain name"):
        scan_snapshot(ScanSpec(root=tmp_path, format="debian", suites=("../etc",)))
    with pytest.raises(ConfigError, match="architecture"):
        scan_snapshot(ScanSpec(root=tmp_path, format="debian", architectures=("amd64 arm64",)))


# --- the fast walk gives what the plain one gave ------------------------------------------------


def test_every_entry_field_matches_lstat_and_its_source_is_an_ordinary_path(tmp_path: Path) -> None:
    write(tmp_path / "top.deb", b"1")
    write(tmp_path / "pool" / "main" / "b" / "bash_5.2_amd64.deb", b"22")
    write(tmp_path / "pool" / "caf\u00e9" / "\u2603.deb", b"333")  # non-ASCII directory and file names
    (tmp_path / "pool" / "link.deb").symlink_to("main/b/bash_5.2_amd64.deb")
    root = tmp_path.resolve()

    snapshot = scan_snapshot(ScanSpec(root=tmp_path, format="flat"))

    assert [entry.path for entry in snapshot.files] == [
        "pool/caf\u00e9/\u2603.deb",
        "pool/link.deb",
        "pool/main/b/bash_5.2_amd64.deb",
        "top.deb",
    ]
    for entry in snapshot.files:
        real = root / entry.path if entry.path != "pool/link.deb" else root / "pool/main/b/bash_5.2_amd64.deb"
        status = os.stat(real)
        assert (entry.size, entry.mtime_ns, entry.dev, entry.inode) == (
            status.st_size,
            status.st_mtime_ns,
            status.st_dev,
            status.st_ino,
        ), entry.path
        assert type(entry.source) is str and entry.source == str(real) and os.path.isabs(entry.source)


def test_directory_symlink_loop_through_two_directories_fails(tmp_path: Path) -> None:
    write(tmp_path / "a" / "x.deb")
    write(tmp_path / "b" / "y.deb")
    (tmp_path / "a" / "to-b").symlink_to("../b")
    (tmp_path / "b" / "to-a").symlink_to("../a")

    message = flat_error(tmp_path)

    assert message.startswith(("a/to-b/to-a: symlink loop", "b/to-a/to-b: symlink loop"))


def test_symlinked_directory_is_walked_once_per_link_without_a_loop(tmp_path: Path) -> None:
    write(tmp_path / "store" / "deep" / "x.deb")
    (tmp_path / "one").symlink_to("store")
    (tmp_path / "store" / "deep" / "up").symlink_to("../../other")
    write(tmp_path / "other" / "z.deb")

    assert sorted(scan_flat(tmp_path)) == [
        "one/deep/up/z.deb",
        "one/deep/x.deb",
        "other/z.deb",
        "store/deep/up/z.deb",
        "store/deep/x.deb",
    ]


@pytest.mark.parametrize("name", ["new\nline", "tab\t", "back\\slash", "del\x7f", "c1\x85"])
def test_bad_directory_names_fail_like_bad_file_names(tmp_path: Path, name: str) -> None:
    write(tmp_path / "pool" / name / "a.deb")

    message = flat_error(tmp_path)

    assert message.startswith("pool/") and "control character or backslash" in message


def test_bad_name_of_a_fifo_is_never_looked_at(tmp_path: Path) -> None:
    write(tmp_path / "a.deb")
    os.mkfifo(tmp_path / "bad\nfifo")

    assert list(scan_flat(tmp_path)) == ["a.deb"]


@pytest.mark.parametrize(
    ("char", "problem"),
    [
        ("\ufffe", "code point U+FFFE not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\U0010ffff", "code point U+10FFFF not allowed in XML 1.0 (or a noncharacter) in name"),
        ("\u202e", "invisible or bidi formatting character U+202E in name"),
        ("\u200d", "invisible or bidi formatting character U+200D in name"),
    ],
    ids=ascii,
)
@pytest.mark.parametrize("kind", ["file", "directory"])
def test_names_that_break_xml_or_listings_fail_like_control_characters(
    tmp_path: Path, char: str, problem: str, kind: str
) -> None:
    write(tmp_path / "pool" / "ok.deb")
    name = f"evil{char}.deb"
    write(tmp_path / "pool" / name / "a.deb" if kind == "directory" else tmp_path / "pool" / name)

    assert flat_error(tmp_path) == (
        f"pool/{ascii(name)}: {problem}; rename it (valid UTF-8, NFC, no control, invisible or bidi formatting "
        "characters, noncharacters or backslashes) and run again"
    )


def test_the_walk_comes_in_path_order_so_the_table_needs_no_sort(tmp_path: Path) -> None:
    """Names that sort before "/" ("a-c", "a.b"), a directory "a" between them, non-ASCII names, and links to a
    directory and a file: the walk gives every path in order, and the table kept them compressed as they came."""
    for path in ["a-c", "a.b", "a/b/z", "a/b-y", "a/z", "a0", "b\u00e9/x", "b/x", "z/a/b/c", "z/a-b", "Z", "\u00e9"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(path.encode())
    os.symlink("z/a", tmp_path / "l")  # a directory: walked as "l/"
    os.symlink("a.b", tmp_path / "l-file")
    builder = flat._walk(os.fsencode(tmp_path.resolve()))
    assert builder._column is not None, "a path came out of order: the builder fell back to a list and a sort"
    paths = list(builder.build().paths)
    assert paths == sorted(paths)
    assert paths[:7] == ["Z", "a-c", "a.b", "a/b-y", "a/b/z", "a/z", "a0"]
    assert "l/b/c" in paths and "l-file" in paths and paths.index("l-file") < paths.index("l/b/c")


def test_a_builder_given_paths_out_of_order_sorts_them_as_before() -> None:
    builder = FileTableBuilder()
    for path in ["b", "c", "a", "c", "d"]:
        builder.add(FileEntry(path, "/src/" + path, len(path), 0, 1, 2))
    assert builder._column is None and len(builder) == 5
    assert list(builder.build().paths) == ["a", "b", "c", "c", "d"]


def test_a_flat_scan_loads_neither_the_debian_nor_the_arch_parser(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.deb").write_bytes(b"a")
    script = (
        "import sys; from pathlib import Path; from pipeline.snapshot import ScanSpec, scan_snapshot, format_info\n"
        f"found = scan_snapshot(ScanSpec(root=Path({str(tmp_path)!r}), format='flat'))\n"
        "loaded = lambda: sorted(m for m in ('pipeline.snapshot.debian', 'pipeline.snapshot.arch', 'debian') "
        "if m in sys.modules)\n"
        "print(found.files.paths[0], loaded())\n"
        "print(format_info('debian').name, loaded())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT
    )
    assert done.stdout.splitlines() == [
        "pool/a.deb []",
        "debian ['debian', 'pipeline.snapshot.debian']",  # loaded when asked for
    ]
