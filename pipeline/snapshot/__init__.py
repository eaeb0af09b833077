"""The scan stage: a snapshot directory -> `Snapshot` (the files to publish, sorted by path, unique).

`scan_snapshot(ScanSpec(root=...))` picks the format adapter (`_ADAPTERS`: debian, arch, flat; the seam
is `pipeline.snapshot.formats`), refuses to run while a configured sync lock exists, and only stats
files: hashing is a later stage.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable
from pipeline.model import FileEntry, Snapshot
from pipeline.snapshot.flat import FLAT
from pipeline.snapshot.formats import FormatAdapter, FormatInfo, Scanned, ScanSpec
from pipeline.snapshot.mark import TreeMark, marked_walk

__all__ = [
    "FORMAT_NAMES",
    "adapters",
    "ScanSpec",
    "TreeMark",
    "format_info",
    "recheck_snapshot",
    "scan_snapshot",
    "snapshot_mark",
]

log = logging.getLogger(__name__)

# Every format, in the order `--format auto` tries them (a new format: its module, and a line here): name ->
# (module, adapter). A module is imported when a run first needs its format: a flat run does not load the
# Debian and Arch parsers (~25 ms of its start).
_ADAPTERS = {
    "debian": ("pipeline.snapshot.debian", "DEBIAN"),
    "arch": ("pipeline.snapshot.arch", "ARCH"),
    "flat": ("pipeline.snapshot.flat", "FLAT"),
}
FORMAT_NAMES = ("auto", *_ADAPTERS)


def adapters() -> tuple[FormatAdapter, ...]:
    """Every registered format's adapter, in the order `--format auto` tries them (each module imported)."""
    return tuple(_adapter(name) for name in _ADAPTERS)


def _adapter(name: str) -> FormatAdapter:
    module, attribute = _ADAPTERS[name]
    adapter: FormatAdapter = getattr(importlib.import_module(module), attribute)
    assert adapter.info.name == name, f"{module}.{attribute} is the adapter of {adapter.info.name!r}"
    return adapter


_ARCHITECTURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_SETTING_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_GLOB_CHARS = re.compile(r"[*?\[]")


def format_info(name: str) -> FormatInfo:
    """The labels and client lists of a registered format; ConfigError for an unknown one."""
    if name not in _ADAPTERS:
        raise ConfigError(f"{name!r}: unknown snapshot format; use {', '.join(_ADAPTERS)}")
    return _adapter(name).info


def scan_snapshot(spec: ScanSpec, marked: TreeMark | None = None) -> Snapshot:
    """Scan the snapshot `spec` describes; SnapshotError for bad input, ConfigError for a bad spec. `marked`:
    the tree's mark as `snapshot_mark(spec)` made it; the flat table of that walk, when it made one, is taken
    as the scan's (the tree is not walked again)."""
    root_real = _checked_root(spec)
    adapter = _resolve_format(root_real, spec.format)
    if marked is not None and marked.files is not None and adapter is FLAT:
        found = Scanned(marked.files)
    else:
        seen = marked.seen if marked is not None else None
        found = adapter.scan(root_real, replace(spec, seen=seen) if seen is not None else spec)
    return _snapshot(
        root_real,
        adapter.info.name,
        found.files,
        suites=found.suites,
        components=found.components,
        architectures=found.architectures,
        timestamp=found.timestamp,
    )


def snapshot_mark(spec: ScanSpec, context: Sequence[str] = (), *, seen: bool = False) -> TreeMark | None:
    """The mark of the tree `spec` describes (`pipeline.snapshot.mark`), with the scan's settings, the upstream
    keyring's bytes and `context` (what else the caller derives from the scan) folded in: equal marks, equal
    scans. The spec and the sync lock are checked first, as `scan_snapshot` does. None: no mark (an unreadable
    directory or keyring), so the scan runs and says what is wrong. For `--format flat` the walk also makes the
    scan's table when it can (`mark.marked_walk`), for `scan_snapshot` to take; for another format, with `seen`
    (the caller knows no earlier scan the mark could match), the files it stat'ed, for the scan to look up."""
    root_real = _checked_root(spec)
    keyring = None
    if spec.upstream_keyring is not None:
        try:
            keyring = hashlib.sha256(spec.upstream_keyring.read_bytes()).hexdigest()
        except OSError:
            return None
    settings = [str(root_real), spec.format, spec.suites, spec.components, spec.architectures, keyring, *context]
    flat = spec.format == FLAT.info.name
    return marked_walk(root_real, json.dumps(settings), flat_files=flat, seen_files=seen and not flat)


def recheck_snapshot(spec: ScanSpec, snapshot_format: str) -> None:
    """The time-dependent checks of a scan of `snapshot_format` (`FormatAdapter.recheck`), for a tree whose
    mark is that of an earlier scan; SnapshotError as the scan would raise it."""
    _adapter(snapshot_format).recheck(_real_root(spec.root), spec)


def _snapshot(
    root_real: Path,
    snapshot_format: str,
    files: Sequence[FileEntry],
    *,
    suites: tuple[str, ...] = (),
    components: tuple[str, ...] = (),
    architectures: tuple[str, ...] = (),
    timestamp: datetime | None = None,
) -> Snapshot:
    table = files if isinstance(files, FileTable) else FileTable.of(files)
    paths = table.paths
    # The adapters give sorted paths; unique is theirs to guarantee: if a bug broke that, refuse rather than publish.
    if any(earlier >= later for earlier, later in itertools.pairwise(paths)):
        raise SnapshotError(f"{root_real}: scan produced unsorted or duplicate paths; report this bug")
    log.info("scanned %s (%s): %d files", root_real, snapshot_format, len(files))
    return Snapshot(
        root=root_real,
        format=snapshot_format,
        files=table,
        suites=suites,
        components=components,
        architectures=architectures,
        timestamp=timestamp,
    )


# --- the spec ------------------------------------------------------------------------------------


def _check_spec(spec: ScanSpec) -> None:
    if spec.format not in FORMAT_NAMES:
        raise ConfigError(f"format: {spec.format!r} is not one of {', '.join(FORMAT_NAMES)}")
    for setting, values in (("suites", spec.suites), ("components", spec.components)):
        for value in values:
            _check_relative_setting(setting, value)
    for arch in spec.architectures:
        if not _ARCHITECTURE.fullmatch(arch):
            raise ConfigError(f"architectures: {arch!r} is not an architecture name such as amd64")
    if spec.format in _ADAPTERS:
        _adapter(spec.format).check(spec)
    if spec.upstream_keyring is not None and not spec.upstream_keyring.is_file():
        raise ConfigError(
            f"{spec.upstream_keyring}: upstream_keyring file does not exist; pass an existing keyring file"
        )


def _check_relative_setting(setting: str, value: str) -> None:
    parts = value.split("/")
    if _UNSAFE_SETTING_CHARS.search(value) or any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"{setting}: {value!r} is not a plain name such as main or bookworm")


# --- root, sync lock, format ---------------------------------------------------------------------


def _checked_root(spec: ScanSpec) -> Path:
    """The snapshot's real root, once the spec is checked and no sync lock is found (before any scan or mark)."""
    _check_spec(spec)
    root_real = _real_root(spec.root)
    _refuse_during_sync(root_real, spec.sync_lock)
    return root_real


def _real_root(root: Path) -> Path:
    real = Path(os.path.realpath(root))
    if not real.is_dir():
        raise SnapshotError(f"{root}: snapshot directory does not exist; pass --snapshot DIR")
    return real


def _refuse_during_sync(root_real: Path, locks: tuple[Path, ...]) -> None:
    for lock in locks:
        present = _existing(lock if lock.is_absolute() else root_real / lock)
        if present:
            raise SnapshotError(
                f"{present[0]}: a sync is in progress (lock file exists); run again after the sync finishes"
            )


def _existing(path: Path) -> list[str]:
    """The paths that exist for `path`; its last component may be a glob (Archive-Update-in-Progress-*)."""
    if _GLOB_CHARS.search(path.name):
        return sorted(glob.glob(os.path.join(glob.escape(str(path.parent)), path.name)))
    return [str(path)] if os.path.lexists(path) else []


def _resolve_format(root_real: Path, requested: str) -> FormatAdapter:
    if requested != "auto":
        return _adapter(requested)
    for name in _ADAPTERS:
        adapter = _adapter(name)
        if adapter.detect(root_real):
            return adapter
    raise SnapshotError(
        f"{root_real}: no Debian (dists/*/…/binary-*/Packages) or Arch (*/os/*/*.db) metadata found; "
        "pass --format flat to publish every file as it is"
    )
