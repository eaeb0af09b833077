"""Every object of a publication: its key and its HTTP headers (DESIGN section 4), the one place that
spells them. Writers and readers (run, publish, render, verify, the recipes' context) take keys from here.
"""

from __future__ import annotations

import re

from pipeline.model import Artifact

# --- keys -----------------------------------------------------------------------------------------

POINTER_KEY = "latest.asc"  # the signed pointer (an opaque gpg message, not clearsigned)
# The largest latest.asc every client reads (the recipes, the apt/pacman client, `invoke verify`) and the
# publisher writes. Measured: a pointer of 440 shards (10 suites x 4 components x 11 architectures, every
# shard with a delta) signs to 137 KB, 311 bytes a shard, so this takes about 840; and a recipe fetching
# it at the minimum rate still gives up within 60 s (render.FETCH_TIMEOUT + size / MIN_RATE).
POINTER_MAX_BYTES = 256 * 1024
SIGNING_KEY_ASC = "signing-key.asc"  # the operator's public key, armored ...
SIGNING_KEY_GPG = "signing-key.gpg"  # ... and binary (gpgv reads binary keyrings only)
SIGNING_KEYS = (SIGNING_KEY_ASC, SIGNING_KEY_GPG)
FRONT_KEY = "index.html"
STYLE_KEY = "style.css"
MIRRORS_KEY = "mirrors/index.html"
MIRRORS_JSON_KEY = "mirrors/mirrors.json"
# The user scripts, published as files to download and run with bash (the front page shows them too):
# fetch one package (recipe.sh [NAME]) or many (update.sh NAME...; formats with package names).
RECIPE_KEY = "recipe.sh"
UPDATE_KEY = "update.sh"
# Give back (opt-in user seeding): the script a user runs in the recipe's folder, and a systemd user
# unit and timer that run it daily. The unit and timer keys are also their file names on the user's machine.
GIVE_BACK_KEY = "give-back.sh"
GIVE_BACK_SERVICE_KEY = "mirrorseed-give-back.service"
GIVE_BACK_TIMER_KEY = "mirrorseed-give-back.timer"
# The package-manager clients (issue 13), published with the publication's URL and key written in;
# each key is also the client's path in this repository.
APT_METHOD_KEY = "clients/apt/mirrorseed"  # apt acquire method: mirrorseed+http(s):// sources
PACMAN_XFER_KEY = "clients/pacman/mirrorseed-xfer"  # pacman XferCommand helper (the same program)
CLIENT_KEYS = (APT_METHOD_KEY, PACMAN_XFER_KEY)
# This tool's own bookkeeping in the destination: never listed, never served to users as content.
PRIVATE_PREFIX = ".mirrorseed/"
MANIFEST_KEY = PRIVATE_PREFIX + "manifest.jsonl.zst"
OLD_MANIFEST_KEYS = (PRIVATE_PREFIX + "manifest.json",)  # written by earlier versions: deleted once replaced
COMPLETE_KEY = PRIVATE_PREFIX + "complete"  # the SHA-256 of the latest.asc whose publication is complete
BROWSE_PREFIX = "browse/"  # a page per directory of the snapshot
# Key prefixes this tool owns in the destination; retention never deletes anything else.
OWNED_PREFIXES = ("torrents/", "metalinks/", "index/", BROWSE_PREFIX, "mirrors/")
# Listings: rewritten in place by every publication and reached by no pointer, so one the current
# publication no longer has (a dropped mirror's country list, a vanished directory's browse page) is
# deleted with that publication instead of being served, unlinked, for the retention period.
LISTING_PREFIXES = (BROWSE_PREFIX, "mirrors/")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _h16(sha256: str) -> str:
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"{sha256!r}: not a lowercase hex SHA-256")
    return sha256[:16]


# The index shards (docs/sharded-index.md): content-addressed by the SHA-256 of the compressed shard, so a
# shard that did not change keeps its key from one publication to the next.
SHARDS_PREFIX = "index/shards/"


def shard_key(sha256: str) -> str:
    """A compressed shard of the index: `index/shards/<h16>.json.zst`."""
    return f"{SHARDS_PREFIX}{_h16(sha256)}.json.zst"


def shard_torrent_key(torrent_sha256: str) -> str:
    """A shard's single-file torrent, by the SHA-256 of the torrent's own bytes (they also hold the public
    URL, which the shard does not): `index/shards/<h16>.torrent`."""
    return f"{SHARDS_PREFIX}{_h16(torrent_sha256)}.torrent"


def delta_key(sha256: str, from_sha256: str) -> str:
    """The delta from the shard of SHA-256 `from_sha256` to the shard of SHA-256 `sha256` (both of the
    compressed shards): `index/shards/<h16>.from-<old h16>.zst`."""
    return f"{SHARDS_PREFIX}{_h16(sha256)}.from-{_h16(from_sha256)}.zst"


def torrent_key(path: str) -> str:
    """A package's torrent, by its repo path."""
    return f"torrents/{path}.torrent"


def metalink_key(path: str) -> str:
    """A package's Metalink, by its repo path."""
    return f"metalinks/{path}.meta4"


def package_of(key: str) -> tuple[str, bool] | None:
    """The repo path whose torrent (True) or Metalink (False) `key` is; None for any other key."""
    if key.startswith("torrents/") and key.endswith(".torrent"):
        return key[len("torrents/") : -len(".torrent")], True
    if key.startswith("metalinks/") and key.endswith(".meta4"):
        return key[len("metalinks/") : -len(".meta4")], False
    return None


def browse_key(directory: str) -> str:
    """The browse page of a repository directory ("" = the root); always `…/index.html`."""
    return f"{BROWSE_PREFIX}index.html" if directory == "" else f"{BROWSE_PREFIX}{directory}/index.html"


def browse_directory(key: str) -> str | None:
    """The directory whose browse page `key` is (`browse_key`'s inverse); None for any other key."""
    if key == f"{BROWSE_PREFIX}index.html":
        return ""
    if key.startswith(BROWSE_PREFIX) and key.endswith("/index.html") and len(key) > len(BROWSE_PREFIX) + 11:
        return key[len(BROWSE_PREFIX) : -len("/index.html")]
    return None


def mirror_list_key(scope: str, kind: str) -> str:
    """`mirrors/all.<kind>` or `mirrors/country/<CC>.<kind>` (kind: txt, sources.list, mirrorlist)."""
    return f"mirrors/{scope}.{kind}" if scope == "all" else f"mirrors/country/{scope}.{kind}"


# --- headers --------------------------------------------------------------------------------------

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
    (".sh", "text/plain; charset=utf-8"),  # give-back.sh: shown in the browser, saved and run with bash
    (".service", "text/plain; charset=utf-8"),  # systemd units, likewise
    (".timer", "text/plain; charset=utf-8"),
    (".css", "text/css"),
    (".svg", "image/svg+xml"),
    (".deb", "application/vnd.debian.binary-package"),
    (".gz", "application/gzip"),
    (".xz", "application/x-xz"),
)


def content_type_for(key: str) -> str:
    if key == POINTER_KEY:
        return "text/plain; charset=us-ascii"
    if key in SIGNING_KEYS:
        return "application/pgp-keys"
    if key in CLIENT_KEYS:
        return "text/plain; charset=utf-8"  # a script: shown, not run, by a browser
    for suffix, content_type in _BY_SUFFIX:
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


def cache_control_for(key: str) -> str:
    if key == POINTER_KEY:
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
