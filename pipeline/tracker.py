"""The operator's tracker (Debian's opentracker, whitelist mode): which infohashes it may track.

opentracker tracks only the infohashes listed in its `access.whitelist` file (one 40-hex infohash a
line) and re-reads that file on SIGHUP. A release writes the whitelist of the publication it makes
current (its index torrent and every package torrent: stale versions are not announced) before it
publishes, atomically, and signals the tracker when the list changed. A tracker that is down or a
PID file that is stale costs one warning, never the release: downloads do not depend on the tracker.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

_INFOHASH = re.compile(r"[0-9a-f]{40}")


def whitelist_text(infohashes: Iterable[str]) -> bytes:
    """One infohash a line, sorted, unique: the same publication gives the same bytes."""
    unique = sorted(set(infohashes))
    bad = [h for h in unique if not _INFOHASH.fullmatch(h)]
    if bad:
        raise ValueError(f"{bad[0]!r}: not a lowercase hex v1 infohash")
    return "".join(h + "\n" for h in unique).encode("ascii")


def update_whitelist(path: Path, infohashes: Iterable[str], *, pid_file: Path | None = None) -> bool:
    """Write the whitelist at `path` if its content changes (atomically, world-readable: opentracker
    reads it as user nobody), then SIGHUP the tracker named by `pid_file`. Returns whether it changed."""
    text = whitelist_text(infohashes)
    try:
        if path.is_file() and path.read_bytes() == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_bytes(text)
        temp.chmod(0o644)
        os.replace(temp, path)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot write the tracker whitelist ({exc.strerror or exc}); "
            "fix tracker_whitelist or its directory's permissions"
        ) from None
    log.info("%s: %d infohashes", path, text.count(b"\n"))
    if pid_file is not None:
        _reload(pid_file)
    return True


def _reload(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
        if pid <= 1:  # 0 and -1 would signal a whole process group, 1 is init
            raise ValueError(f"PID {pid} is not a tracker's")
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        log.warning(
            "%s: could not tell the tracker to re-read its whitelist (%s); reload it yourself "
            "(systemctl reload opentracker)",
            pid_file,
            getattr(exc, "strerror", None) or exc,
        )
