"""URL building: every path segment percent-encoded (S3 decodes a raw '+' as a space)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote

_UNRESERVED = r"\-A-Za-z0-9_.~"  # RFC 3986 unreserved characters (a regex class body): what `quote` never encodes
# A path of unreserved characters and '/' only: most package paths; nothing to encode.
_PLAIN_PATH = re.compile(f"[{_UNRESERVED}/]*").fullmatch
_QUOTED_PATH = re.compile(f"[{_UNRESERVED}/%]*").fullmatch  # ... or one percent-encoded already
_UNSAFE = re.compile(f"[^{_UNRESERVED}]")  # what `quote(..., safe="")` encodes in an ASCII string
_UNSAFE_IN_PATH = re.compile(f"[^{_UNRESERVED}/]")  # ... and with safe="/"


def _escape(match: re.Match[str]) -> str:
    return f"%{ord(match.group()):02X}"


def quote_path(path: str) -> str:
    """Percent-encode each '/'-separated segment of a relative path (RFC 3986 unreserved kept).

    One `quote` of the whole path with '/' kept is the same as quoting each segment with nothing kept
    and joining them with '/'; a path that needs no encoding is returned as it is (one regex match:
    a million paths a run pass here several times)."""
    if _PLAIN_PATH(path):
        return path
    if path.isascii():  # the same bytes as quote, with a call per character to encode only
        return _UNSAFE_IN_PATH.sub(_escape, path)
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


@lru_cache(maxsize=256)
def _quote_value(value: str) -> str:
    """`quote(value, safe="")` of a value every record repeats (a tracker, a webseed, a URL's origin)."""
    return quote(value, safe="")


def quote_value(value: str) -> str:
    """`quote(value, safe="")` (a query value: '/' encoded too), the same bytes without `quote`'s call per
    character: an ASCII value is one regex substitution, and a URL's `scheme://host/` is encoded once per run
    (cached). `quote` encodes each UTF-8 byte on its own (an unsafe one as %XX), so parts encode apart."""
    if _QUOTED_PATH(value):  # what `quote_path` makes: '%' and '/' are all there is to encode
        return value.replace("%", "%25").replace("/", "%2F")
    scheme, sep, rest = value.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        return _quote_value(scheme + sep + host + slash) + quote_value(path)
    if value.isascii():  # the same bytes as quote, with a call per character to encode only
        return _UNSAFE.sub(_escape, value)
    return quote(value, safe="")


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
    parts = [f"xt=urn:btih:{infohash}", "dn=" + quote_value(name)]
    if size is not None:
        parts.append(f"xl={size}")
    parts.extend("tr=" + _quote_value(t) for t in trackers)
    parts.extend("ws=" + quote_value(w) for w in webseeds)  # a directory's URL: not cached, one per directory
    if torrent_url is not None:
        parts.append("xs=" + quote_value(torrent_url))
    return "magnet:?" + "&".join(parts)
