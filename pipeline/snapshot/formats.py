"""The format adapter seam: what a repository format provides to the scan, the listings and the recipes.

A format is one module with an adapter (detect, check the scan settings, scan -> Scanned) and a
`FormatInfo` (display labels, which client list it publishes, what its recipes do), registered in
`pipeline.snapshot._ADAPTERS`, plus its template partials under `templates/formats/<name>/` (a part a
format does not have is simply absent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pipeline.model import FileEntry
from pipeline.snapshot.seen import SeenFiles


class KeptListing(Protocol):
    """A kept parse, read as a file (`sqlite3.Blob`): never held whole (tens of MB at a million files)."""

    def read(self, length: int = -1, /) -> bytes: ...

    def seek(self, offset: int, origin: int = 0, /) -> None: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


class ListingCache(Protocol):
    """Where a scan keeps the last parse of each metadata file, by the SHA-256 of its bytes (the state
    cache): a parse is a pure function of the bytes, so a file whose bytes are unchanged is not parsed again."""

    def listing(self, name: str, digest: str) -> KeptListing | None: ...

    def remember_listing(self, name: str, digest: str, chunks: Iterable[bytes], size: int) -> None: ...

    def keep_listings(self, names: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class ScanSpec:
    """What to scan. Empty suites/components/architectures mean all found (Arch: suites are the repos)."""

    root: Path
    format: str = "auto"  # "auto" or a registered format's name
    suites: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()  # binary-all is included whenever any architecture is
    upstream_keyring: Path | None = None
    sync_lock: tuple[Path, ...] = ()  # relative paths resolve against root; glob patterns allowed
    listing_cache: ListingCache | None = field(default=None, compare=False)
    # what the run's marked walk stat'ed just before (`scan_snapshot` sets it): an adapter may take a file's stat
    # from there (`SeenFiles.cursor`, in path order) instead of its own
    seen: SeenFiles | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FormatInfo:
    """What listings and recipes know of a format."""

    name: str  # as in --format and the templates' `snapshot_format`
    label: str  # "Debian", shown on the pages
    suites_label: str = "Suites"  # what the format calls its suites (Arch: repositories)
    # the per-mirror list for the format's package manager (mirrors/…/<scope>.<kind>), if any, and
    # whether it needs the snapshot to name suites
    client_list: str | None = None
    client_list_needs_suites: bool = False
    detached_signatures: bool = False  # packages come with a `.sig` fetched over plain HTTP (Arch)
    update_script: bool = False  # an update.sh that fetches the current version of named packages


@dataclass(frozen=True)
class Scanned:
    """What an adapter found: the files to publish (sorted by path, unique) and where they come from."""

    files: Sequence[FileEntry]  # a pipeline.filetable.FileTable: sorted by path
    suites: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    timestamp: datetime | None = None  # the upstream metadata's date (mirrors' lag is measured from it)


class FormatAdapter(Protocol):
    info: FormatInfo

    def detect(self, root_real: Path) -> bool:
        """Whether `--format auto` should pick this format for `root_real` (a format never guessed: False)."""
        ...

    def check(self, spec: ScanSpec) -> None:
        """ConfigError for settings that do not apply to this format."""
        ...

    def scan(self, root_real: Path, spec: ScanSpec) -> Scanned:
        """Stat every file the format's metadata (or the tree) lists (or take its stat from `spec.seen`);
        SnapshotError for bad input."""
        ...

    def recheck(self, root_real: Path, spec: ScanSpec) -> None:
        """The checks of `scan` whose verdict depends on the time, not on the tree (a signature by a key that
        has since expired): run instead of `scan` when the tree's mark is that of an earlier scan."""
        ...
