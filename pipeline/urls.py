"""URL building: every path segment percent-encoded (S3 decodes a raw '+' as a space)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

# A path of RFC 3986 unreserved characters and '/' only: most package paths; nothing to encode.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*").fullmatch


def quote_path(path: str) -> str:
    """Percent-encode each '/'-separated segment of a relative path (RFC 3986 unreserved kept).

    One `quote` of the whole path with '/' kept is the same as quoting each segment with nothing kept
    and joining them with '/'; a path that needs no encoding is returned as it is (one regex match:
    a million paths a run pass here several times)."""
    if _PLAIN_PATH(path):
        return path
    return quote(path, safe="/")


def join_url(base: str, path: str) -> str:
    """`<base>/<percent-encoded path>`; `base` may or may not end with '/'."""
    return base.rstrip("/") + "/" + quote_path(path)


def webseed_dir_url(base: str, path: str) -> str:
    """BEP 19 directory form for a single-file torrent: `<base>/<encoded dir of path>/`.

    The client appends the percent-encoded file name itself.
    """
    directory = path.rpartition("/")[0]
    return base.rstrip("/") + "/" + (quote_path(directory) + "/" if directory else "")


def magnet_uri(
    *,
    infohash: str,
    name: str,
    size: int | None = None,
    trackers: Iterable[str] = (),
    webseeds: Iterable[str] = (),
    torrent_url: str | None = None,
) -> str:
    """`magnet:?xt=urn:btih:<hex>&dn=…&xl=…&tr=…&ws=…&xs=…`, every value percent-encoded."""
    parts = [f"xt=urn:btih:{infohash}", "dn=" + quote(name, safe="")]
    if size is not None:
        parts.append(f"xl={size}")
    parts.extend("tr=" + quote(t, safe="") for t in trackers)
    parts.extend("ws=" + quote(w, safe="") for w in webseeds)
    if torrent_url is not None:
        parts.append("xs=" + quote(torrent_url, safe=""))
    return "magnet:?" + "&".join(parts)
