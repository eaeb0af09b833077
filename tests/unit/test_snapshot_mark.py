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
    flat = snapshot_mark(ScanSpec(root=root, format="flat"))
    assert flat is not None
    assert snapshot_mark(ScanSpec(root=root, format="flat")) == flat
    assert snapshot_mark(ScanSpec(root=root, format="flat"), ["never-announced/*"]) != flat
    debian = ScanSpec(root=root, format="debian", suites=("bookworm",), upstream_keyring=keyring)
    marked = snapshot_mark(debian)
    assert marked not in (None, flat)
    assert snapshot_mark(ScanSpec(root=root, format="debian", suites=("trixie",), upstream_keyring=keyring)) != marked
    keyring.write_bytes(b"key two")
    assert snapshot_mark(debian) != marked


def test_the_snapshot_mark_checks_the_spec_and_the_sync_lock_first(tmp_path: Path) -> None:
    root = tree(tmp_path / "snap")
    with pytest.raises(ConfigError, match="upstream_keyring"):
        snapshot_mark(ScanSpec(root=root, upstream_keyring=tmp_path / "missing.gpg"))
    with pytest.raises(SnapshotError, match="does not exist"):
        snapshot_mark(ScanSpec(root=tmp_path / "absent", format="flat"))
    (root / "Archive-Update-in-Progress-host").write_bytes(b"")
    with pytest.raises(SnapshotError, match="sync is in progress"):
        snapshot_mark(ScanSpec(root=root, format="flat", sync_lock=(Path("Archive-Update-in-Progress-*"),)))
