"""The tree's mark: equal for an untouched tree, different after any change a scan could see."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, SnapshotError
from pipeline.snapshot import ScanSpec, snapshot_mark
from pipeline.snapshot.mark import tree_mark


def tree(root: Path) -> Path:
    (root / "pool" / "main").mkdir(parents=True)
    (root / "pool" / "main" / "a.deb").write_bytes(b"a" * 100)
    (root / "pool" / "main" / "b.deb").write_bytes(b"b" * 200)
    (root / "top.txt").write_bytes(b"top")
    (root / "link").symlink_to("pool/main/a.deb")
    return root


def next_tick() -> None:
    """Let the kernel's coarse clock move on, so that a change gets a ctime of its own."""
    time.sleep(0.02)


def rewrite_keeping_size_and_mtime(root: Path) -> None:
    path = root / "pool" / "main" / "a.deb"
    before = path.stat()
    path.write_bytes(b"A" * 100)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


CHANGES: dict[str, Callable[[Path], object]] = {
    "a file added": lambda root: (root / "pool" / "main" / "c.deb").write_bytes(b"c"),
    "a dot file added": lambda root: (root / ".hidden").write_bytes(b""),
    "an empty directory added": lambda root: (root / "pool" / "empty").mkdir(),
    "a file removed": lambda root: (root / "top.txt").unlink(),
    "a file renamed": lambda root: (root / "top.txt").rename(root / "top2.txt"),
    "a file appended to": lambda root: (root / "top.txt").write_bytes(b"top!"),
    "a file rewritten with its size and mtime put back": rewrite_keeping_size_and_mtime,
    "a symlink pointed elsewhere": lambda root: ((root / "link").unlink(), (root / "link").symlink_to("top.txt")),
    "a mode changed": lambda root: (root / "top.txt").chmod(0o600),
    "a directory renamed": lambda root: (root / "pool" / "main").rename(root / "pool" / "contrib"),
}


def test_an_untouched_tree_keeps_its_mark(tmp_path: Path) -> None:
    root = tree(tmp_path / "snap")
    first = tree_mark(root, "ctx")
    assert first is not None and len(first) == 64
    (root / "top.txt").read_bytes()  # reading changes nothing the mark covers
    assert tree_mark(root, "ctx") == first
    assert tree_mark(root, "other") != first


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_change_a_scan_could_see_changes_the_mark(tmp_path: Path, change: str) -> None:
    root = tree(tmp_path / "snap")
    before = tree_mark(root, "")
    next_tick()
    CHANGES[change](root)
    after = tree_mark(root, "")
    assert after is not None and after != before


def test_an_unlistable_tree_has_no_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path / "snap")

    def refuse(path: object) -> object:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", refuse)
    assert tree_mark(root, "") is None


def test_the_snapshot_mark_folds_in_the_scan_settings_and_the_keyring_bytes(tmp_path: Path) -> None:
    root = tree(tmp_path / "snap")
    keyring = tmp_path / "upstream.gpg"
    keyring.write_bytes(b"key one")

    def digest(spec: ScanSpec, context: list[str] | None = None) -> str:
        marked = snapshot_mark(spec, context or [])
        assert marked is not None
        return marked.digest

    flat = digest(ScanSpec(root=root, format="flat"))
    assert digest(ScanSpec(root=root, format="flat")) == flat
    assert digest(ScanSpec(root=root, format="flat"), ["never-announced/*"]) != flat
    debian = ScanSpec(root=root, format="debian", suites=("bookworm",), upstream_keyring=keyring)
    marked = digest(debian)
    assert marked != flat
    assert digest(ScanSpec(root=root, format="debian", suites=("trixie",), upstream_keyring=keyring)) != marked
    keyring.write_bytes(b"key two")
    assert digest(debian) != marked


def test_the_snapshot_mark_checks_the_spec_and_the_sync_lock_first(tmp_path: Path) -> None:
    root = tree(tmp_path / "snap")
    with pytest.raises(ConfigError, match="upstream_keyring"):
        snapshot_mark(ScanSpec(root=root, upstream_keyring=tmp_path / "missing.gpg"))
    with pytest.raises(SnapshotError, match="does not exist"):
        snapshot_mark(ScanSpec(root=tmp_path / "absent", format="flat"))
    (root / "Archive-Update-in-Progress-host").write_bytes(b"")
    with pytest.raises(SnapshotError, match="sync is in progress"):
        snapshot_mark(ScanSpec(root=root, format="flat", sync_lock=(Path("Archive-Update-in-Progress-*"),)))


def flat_tree(root: Path) -> Path:
    """Names that sort around a directory's "/" (lib-x, lib.deb, lib/, lib0), dot entries and a FIFO (not
    published), an empty directory, and a deep one."""
    for rel in ("lib-x.deb", "lib.deb", "lib/a.deb", "lib/sub/b.deb", "lib0.deb", "z/y/x/w.deb", ".tmp/c.deb", ".d"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    (root / "empty").mkdir()
    os.mkfifo(root / "lib" / "fifo")
    return root


def test_the_marked_walk_makes_the_flat_scans_table_and_the_same_mark(tmp_path: Path) -> None:
    from pipeline.snapshot import scan_snapshot
    from pipeline.snapshot.flat import scan_flat
    from pipeline.snapshot.mark import marked_walk

    root = flat_tree(tmp_path / "snap")
    marked = marked_walk(root, "ctx", flat_files=True)
    assert marked is not None and marked.files is not None
    expected = list(scan_flat(os.fsencode(root)))
    assert [entry.path for entry in expected] == [
        "lib-x.deb", "lib.deb", "lib/a.deb", "lib/sub/b.deb", "lib0.deb", "z/y/x/w.deb",
    ]  # fmt: skip
    assert list(marked.files) == expected
    assert marked.digest == tree_mark(root, "ctx")
    spec = ScanSpec(root=root, format="flat")
    from_mark = snapshot_mark(spec)
    assert from_mark is not None and from_mark.files is not None
    assert list(scan_snapshot(spec, from_mark).files) == list(scan_snapshot(spec).files) == expected
    # only for the flat format: another format's scan is its own
    assert snapshot_mark(ScanSpec(root=root, format="debian", suites=("bookworm",))).files is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("where", "given"),
    [("lib/link", False), (".tmp/link", True), ("lib/café.deb", False), (".tmp/café.deb", True)],
)
def test_the_marked_walk_leaves_symlinks_and_other_names_to_the_scan(tmp_path: Path, where: str, given: bool) -> None:
    """A symlink (the scan follows it) or a name other than printable ASCII (the scan checks it) outside
    dot-directories: no table, the scan walks again; inside one, neither is the scan's and the table stands.
    The mark is the same either way."""
    from pipeline.snapshot.flat import scan_flat
    from pipeline.snapshot.mark import marked_walk

    root = flat_tree(tmp_path / "snap")
    if where.endswith("link"):
        (root / where).symlink_to(root / "lib.deb")
    else:
        (root / where).write_bytes(b"x")
    marked = marked_walk(root, "", flat_files=True)
    assert marked is not None and marked.digest == tree_mark(root, "")
    assert (marked.files is not None) == given
    if marked.files is not None:
        assert list(marked.files) == list(scan_flat(os.fsencode(root)))
