"""The scan stage: a snapshot directory -> `Snapshot` (the files to publish, sorted by path, unique).

`scan_snapshot(ScanSpec(root=...))` picks the format adapter (`debian`, `arch`, `flat`), refuses
to run while a configured sync lock exists, and only stats files: hashing is a later stage.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.config import FORMATS
from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import FileEntry, Snapshot, SnapshotFormat
from pipeline.snapshot.arch import ArchSelection, scan_arch
from pipeline.snapshot.debian import PACKAGES_NAMES, DebianSelection, scan_debian
from pipeline.snapshot.flat import scan_flat

__all__ = ["ScanSpec", "scan_snapshot"]

log = logging.getLogger(__name__)

_ARCHITECTURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_SETTING_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_GLOB_CHARS = re.compile(r"[*?\[]")
_DEBIAN_SKIPPED_DIRS = frozenset({"by-hash", "i18n", "dep11", "source"})


@dataclass(frozen=True)
class ScanSpec:
    """What to scan. Empty suites/components/architectures mean all found (Arch: suites are the repos)."""

    root: Path
    format: str = "auto"  # "auto" | "debian" | "arch" | "flat"
    suites: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()  # binary-all is included whenever any architecture is
    upstream_keyring: Path | None = None
    sync_lock: tuple[Path, ...] = ()  # relative paths resolve against root; glob patterns allowed


def scan_snapshot(spec: ScanSpec) -> Snapshot:
    """Scan the snapshot `spec` describes; SnapshotError for bad input, ConfigError for a bad spec."""
    _check_spec(spec)
    root_real = _real_root(spec.root)
    _refuse_during_sync(root_real, spec.sync_lock)
    snapshot_format = _resolve_format(root_real, spec.format)
    root_bytes = os.fsencode(root_real)
    if snapshot_format == "flat":
        return _snapshot(root_real, "flat", scan_flat(root_bytes))
    if snapshot_format == "arch":
        if spec.components or spec.upstream_keyring:
            raise ConfigError(
                f"{root_real}: an Arch snapshot; components and upstream_keyring apply to Debian snapshots only, "
                "remove them (select Arch repos with suites)"
            )
        arch = scan_arch(root_bytes, ArchSelection(repos=spec.suites, architectures=spec.architectures))
        return _snapshot(
            root_real,
            "arch",
            arch.files,
            suites=arch.repos,
            architectures=arch.architectures,
            timestamp=arch.timestamp,
        )
    selection = DebianSelection(
        suites=spec.suites,
        components=spec.components,
        architectures=spec.architectures,
        upstream_keyring=spec.upstream_keyring,
    )
    debian = scan_debian(root_bytes, selection)
    return _snapshot(
        root_real,
        "debian",
        debian.files,
        suites=debian.suites,
        components=debian.components,
        architectures=debian.architectures,
        timestamp=debian.timestamp,
    )


def _snapshot(
    root_real: Path,
    snapshot_format: SnapshotFormat,
    files: tuple[FileEntry, ...],
    *,
    suites: tuple[str, ...] = (),
    components: tuple[str, ...] = (),
    architectures: tuple[str, ...] = (),
    timestamp: datetime | None = None,
) -> Snapshot:
    paths = [entry.path for entry in files]
    # The adapters guarantee sorted, unique paths; if a bug broke that, refuse rather than publish.
    if any(earlier >= later for earlier, later in itertools.pairwise(paths)):
        raise SnapshotError(f"{root_real}: scan produced unsorted or duplicate paths; report this bug")
    log.info("scanned %s (%s): %d files", root_real, snapshot_format, len(files))
    return Snapshot(
        root=root_real,
        format=snapshot_format,
        files=files,
        suites=suites,
        components=components,
        architectures=architectures,
        timestamp=timestamp,
    )


# --- the spec ------------------------------------------------------------------------------------


def _check_spec(spec: ScanSpec) -> None:
    if spec.format not in FORMATS:
        raise ConfigError(f"format: {spec.format!r} is not one of {', '.join(FORMATS)}")
    for setting, values in (("suites", spec.suites), ("components", spec.components)):
        for value in values:
            _check_relative_setting(setting, value)
    for arch in spec.architectures:
        if not _ARCHITECTURE.fullmatch(arch):
            raise ConfigError(f"architectures: {arch!r} is not an architecture name such as amd64")
    if spec.format == "flat" and (spec.suites or spec.components or spec.architectures or spec.upstream_keyring):
        raise ConfigError(
            "format flat: suites, components, architectures and upstream_keyring apply to Debian "
            "snapshots only; remove them or use --format debian"
        )
    if spec.upstream_keyring is not None and not spec.upstream_keyring.is_file():
        raise ConfigError(
            f"{spec.upstream_keyring}: upstream_keyring file does not exist; pass an existing keyring file"
        )


def _check_relative_setting(setting: str, value: str) -> None:
    parts = value.split("/")
    if _UNSAFE_SETTING_CHARS.search(value) or any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"{setting}: {value!r} is not a plain name such as main or bookworm")


# --- root, sync lock, format ---------------------------------------------------------------------


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


def _resolve_format(root_real: Path, requested: str) -> SnapshotFormat:
    if requested == "auto":
        if _looks_debian(root_real):
            requested = "debian"
        elif glob.glob("*/os/*/*.db", root_dir=root_real):
            requested = "arch"
        else:
            raise SnapshotError(
                f"{root_real}: no Debian (dists/*/…/binary-*/Packages) or Arch (*/os/*/*.db) metadata found; "
                "pass --format flat to publish every file as it is"
            )
    if requested == "arch":
        return "arch"
    return "debian" if requested == "debian" else "flat"


def _looks_debian(root_real: Path) -> bool:
    """True if some `dists/<suite>/**/binary-<arch>/` holds a Packages, Packages.gz or Packages.xz."""
    dists = root_real / "dists"
    if not dists.is_dir():
        return False
    for suite in sorted(name for name in os.listdir(dists) if not name.startswith(".")):
        for directory, subdirs, names in os.walk(dists / suite):
            subdirs[:] = [d for d in subdirs if d not in _DEBIAN_SKIPPED_DIRS and not d.startswith(".")]
            if os.path.basename(directory).startswith("binary-") and any(n in PACKAGES_NAMES for n in names):
                return True
    return False
