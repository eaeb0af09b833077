"""HTTP headers of every published object, by key (DESIGN section 4's table)."""

from __future__ import annotations

from pipeline.model import Artifact

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
KEYS = "public, max-age=3600"
NO_CACHE = "no-cache"

_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    (".torrent", "application/x-bittorrent"),
    (".meta4", "application/metalink4+xml"),
    (".zst", "application/zstd"),
    (".sig", "application/pgp-signature"),
    (".html", "text/html; charset=utf-8"),
    (".json", "application/json"),
    (".txt", "text/plain; charset=utf-8"),
    (".mirrorlist", "text/plain; charset=utf-8"),
    (".list", "text/plain; charset=utf-8"),  # mirrors/…/<CC>.sources.list
    (".css", "text/css"),
    (".svg", "image/svg+xml"),
    (".deb", "application/vnd.debian.binary-package"),
    (".gz", "application/gzip"),
    (".xz", "application/x-xz"),
)


def content_type_for(key: str) -> str:
    if key == "latest.asc":
        return "text/plain; charset=us-ascii"
    if key in ("signing-key.asc", "signing-key.gpg"):
        return "application/pgp-keys"
    for suffix, content_type in _BY_SUFFIX:
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


def cache_control_for(key: str) -> str:
    if key == "latest.asc":
        return NO_CACHE
    if key.startswith("index/"):
        return IMMUTABLE
    if key.startswith(("torrents/", "metalinks/")):
        return SHORT
    if key.startswith("signing-key."):
        return KEYS
    return NO_CACHE


def make_artifact(key: str, data: bytes) -> Artifact:
    """An Artifact with the headers DESIGN section 4 prescribes for `key`."""
    return Artifact(key=key, data=data, content_type=content_type_for(key), cache_control=cache_control_for(key))
