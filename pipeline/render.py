"""Static listings: the front page, one browse page per repository directory, the mirror listings,
the style sheet.

Pages are rendered by jinja2 with autoescape on and StrictUndefined; every href comes from a filter
defined here (relative to the page being rendered, each path segment percent-encoded), never from
string concatenation in a template. The user recipe (a bash script) is rendered from
`recipe.sh.j2` once and shown escaped on the front page, so the page and `user_recipe()` cannot
drift apart. Output is deterministic: no wall-clock time, no tool versions.

Mirror listings (issue 5, point 4; issue 6, point 3), rendered only when the run probed mirrors:
`mirrors/index.html` (the status table), `mirrors/mirrors.json` (schemas/mirrors.schema.json) and
lists a package manager can use: `mirrors/all.txt` and `mirrors/country/<CC>.txt` (one base URL a
line), plus `….sources.list` (Debian: `deb <url> <suite> <components…>`, one line per mirror and
suite; none when the snapshot names no suite) or `….mirrorlist` (Arch: pacman's
`Server = <url>/$repo/os/$arch`). Only mirrors verified to hold this snapshot go into those lists:
status `ok` first, then `partial` (a package manager falls back to the next server for a file one
lacks), each group by priority then URL. `stale`, `no-range` (its files cannot be verified by a
ranged GET) and `down` mirrors are never listed. A country gets files only when at least one of its
mirrors is listed; a mirror without a country is in the `all` lists only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import itertools
import json
import os
import re
import shlex
import stat
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, overload
from urllib.parse import quote, urlsplit

import jinja2
from jinja2.bccache import Bucket
from jinja2.runtime import Context

from pipeline.errors import ConfigError, SnapshotError
from pipeline.index import INDEX_FORMAT, POINTER_FORMAT, package_json
from pipeline.model import Artifact, MirrorStatus, PackageRecord, Pointer, ShardRef
from pipeline.objects import (
    APT_METHOD_KEY,
    CLIENT_KEYS,
    FRONT_KEY,
    GIVE_BACK_KEY,
    GIVE_BACK_SERVICE_KEY,
    GIVE_BACK_TIMER_KEY,
    MIRRORS_JSON_KEY,
    MIRRORS_KEY,
    PACMAN_XFER_KEY,
    POINTER_MAX_BYTES,
    RECIPE_KEY,
    SHARDS_PREFIX,
    SIGNING_KEY_GPG,
    STYLE_KEY,
    UPDATE_KEY,
    browse_key,
    make_artifact,
    mirror_list_key,
)
from pipeline.records import page_digest
from pipeline.scratch import FixedColumn
from pipeline.shards import TOP as SHARD_TOP
from pipeline.snapshot import format_info
from pipeline.strcolumn import SortedColumn, StringColumn
from pipeline.torrents import PackageRecords
from pipeline.urls import join_url, quote_path

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# The package-manager clients: each published under its path here (pipeline.objects.CLIENT_KEYS).
CLIENTS_ROOT = Path(__file__).resolve().parent.parent

# DESIGN section 6: a dead tracker otherwise stalls each download for about two minutes, and
# without --seed-time=0 aria2 keeps seeding after the download. A stalled HTTP server is dropped
# after --timeout, one slower than --lowest-speed-limit (HTTP only) soon after, --max-tries times.
# --stream-piece-selector=random: the pieces a user takes from the webseeds are spread at random, so
# users fetching together take different pieces from the mirrors and the rest from each other (aria2
# otherwise takes webseed pieces from the start of each file, all users the same ones): measured with
# invoke bench --swarm, 8 users' operator egress fell from 2.6 to 1.9 copies of the package set.
# --bt-tracker-interval=30: a download asks the tracker for peers every 30 s, not once per the tracker's
# interval (opentracker: 30 min): a user who finishes and gives back announces as a seed wanting no
# peers, so the users still downloading learn of it only by asking again (found by the swarm bench's
# dead-mirror scenario: late users starved with six seeds in the swarm).
ARIA2_FLAGS = (
    "--seed-time=0",
    "--bt-stop-timeout=60",
    "--bt-tracker-connect-timeout=5",
    "--bt-tracker-timeout=5",
    "--connect-timeout=10",
    "--timeout=20",
    "--max-tries=3",
    "--lowest-speed-limit=1K",
    "--stream-piece-selector=random",
    "--bt-tracker-interval=30",
)


def aria2_flags(dht_nodes: Sequence[str]) -> tuple[str, ...]:
    """The recipes' aria2c options: ARIA2_FLAGS, plus DHT from the first configured IPv4/name node
    (aria2 takes one entry point; the torrents carry every node in `nodes`). LPD is the recipes' own
    switch (MIRRORSEED_LPD in fetch.sh.j2), so a user can turn it off without editing the script."""
    entry = next((node for node in dht_nodes if not node.startswith("[")), None)
    return ARIA2_FLAGS if entry is None else (*ARIA2_FLAGS, "--enable-dht=true", f"--dht-entry-point={entry}")


# What give-back.sh's seeding aria2c drops from the recipes' flags: their stop at completion, and the
# frequent tracker requests a download needs to find new seeds (a seed is found by those who ask).
_NOT_FOR_SEEDING = ("--seed-time=", "--bt-stop-timeout=", "--bt-tracker-interval=")


def give_back_seed_flags(dht_nodes: Sequence[str]) -> tuple[str, ...]:
    """The aria2c options give-back.sh seeds with: the recipes' (`aria2_flags`: short tracker timeouts,
    DHT when configured) without `--seed-time=0`, `--bt-stop-timeout` and `--bt-tracker-interval`; the
    script adds the ratio, time and upload bounds from its environment."""
    return tuple(flag for flag in aria2_flags(dht_nodes) if not flag.startswith(_NOT_FOR_SEEDING))


# Give back (templates/give-back.sh.j2 and the systemd user unit): the defaults of its settings, shown
# on the front page. A ratio of 2.0 returns each download twice; a day, capped at 1 MiB/s, is what an
# idle desktop can spare. MAX_TORRENTS bounds aria2's open files and tracker announces
# (`-j` = the number of torrents); the script refuses more than MAX_TORRENTS_LIMIT. The unit seeds
# for 22 h so that each daily run (the timer adds up to 1 h of random delay) ends before the next.
NAMES_RUN = 65536  # directory names sorted at once by `_sorted_names`

GIVE_BACK_RATIO = "2.0"
GIVE_BACK_MINUTES = 1440
GIVE_BACK_UNIT_MINUTES = 1320
GIVE_BACK_UPLOAD_LIMIT = "1M"
GIVE_BACK_MAX_TORRENTS = 100
GIVE_BACK_MAX_TORRENTS_LIMIT = 1000
GIVE_BACK_FOLDER = "mirrorseed"  # the unit's WorkingDirectory, under the user's home: where the recipe ran
GIVE_BACK_WORK_DIR = "give-back-work"  # its own files in that folder (lists, .torrent files), made anew each run
# The package managers' caches give-back.sh also seeds from by default (when they exist and the user cannot
# write to them, as installed: root-owned). Matched by size and SHA-256, not name: apt writes an epoch `1:`
# as `1%3a` in its file names; pacman keeps the repository's names.
GIVE_BACK_SYSTEM_CACHES = ("/var/cache/apt/archives", "/var/cache/pacman/pkg")
_GIVE_BACK_CONTEXT: Mapping[str, object] = {
    "seed_ratio": GIVE_BACK_RATIO,
    "seed_minutes": GIVE_BACK_MINUTES,
    "unit_seed_minutes": GIVE_BACK_UNIT_MINUTES,
    "upload_limit": GIVE_BACK_UPLOAD_LIMIT,
    "max_torrents": GIVE_BACK_MAX_TORRENTS,
    "max_torrents_limit": GIVE_BACK_MAX_TORRENTS_LIMIT,
    "folder": GIVE_BACK_FOLDER,
    "work_dir": GIVE_BACK_WORK_DIR,
    "system_caches": GIVE_BACK_SYSTEM_CACHES,
    "service_name": GIVE_BACK_SERVICE_KEY,
    "timer_name": GIVE_BACK_TIMER_KEY,
}

# The recipes' bounds (templates/fetch.sh.j2). A signed pointer is about 311 bytes a shard
# (objects.POINTER_MAX_BYTES) and an exported key a few KiB: 256 KiB each leaves room for hundreds of
# shards and large keys while an endless body stops at once. Each aria2c run gets FETCH_TIMEOUT seconds
# plus one per MIN_RATE bytes of its size (the pointer and the key 46 s, a 100 MiB package 1 h 47 min),
# overridden by the user's
# MIRRORSEED_TIMEOUT and MIRRORSEED_MIN_RATE.
KEY_MAX_BYTES = 256 * 1024
FETCH_TIMEOUT = 30
MIN_RATE = 16 * 1024
# A torrent download's extra time for its first peer when no webseed serves (fetch.sh.j2): a tracker
# announce plus one of aria2's 30 s optimistic-unchoke rounds. Found by invoke bench --swarm's
# dead-mirror scenario, where a late user's recipe gave up on a package only the seed box held.
PEER_WAIT = 60
# What both recipes' shared fetch functions (fetch.sh.j2) read.
# The tools every published script needs, and the one line that installs them (fetch.sh.j2 checks them
# first; the front page shows the line for the snapshot's format).
INSTALL_DEBIAN = "sudo apt install aria2 gpgv jq zstd"
INSTALL_ARCH = "sudo pacman -S --needed aria2 gnupg jq zstd"
_FETCH_CONTEXT: Mapping[str, int | str] = {
    "pointer_max_bytes": POINTER_MAX_BYTES,
    "key_max_bytes": KEY_MAX_BYTES,
    "fetch_timeout": FETCH_TIMEOUT,
    "min_rate": MIN_RATE,
    "peer_wait": PEER_WAIT,
    "install_debian": INSTALL_DEBIAN,
    "install_arch": INSTALL_ARCH,
}

FRONT_TEMPLATE = "front.html.j2"
BROWSE_TEMPLATE = "browse.html.j2"
RECIPE_TEMPLATE = "recipe.sh.j2"
UPDATE_TEMPLATE = "update.sh.j2"
GIVE_BACK_TEMPLATE = "give-back.sh.j2"
GIVE_BACK_SERVICE_TEMPLATE = "give-back.service.j2"
GIVE_BACK_TIMER_TEMPLATE = "give-back.timer.j2"
MIRRORS_TEMPLATE = "mirrors.html.j2"
STYLE_TEMPLATE = "style.css"

MIRRORS_FORMAT = "mirrorseed-mirrors/1"
# Table order, and the statuses whose mirrors go into package-manager lists (in that order).
STATUS_ORDER = ("ok", "partial", "stale", "no-range", "down")
LISTED_STATUSES = ("ok", "partial")
STATUS_MEANING: Mapping[str, str] = {
    "ok": "every file sampled held this snapshot's exact bytes, and its last sync is not behind the snapshot",
    "partial": "some files are missing or differ: a webseed only for the files verified on it",
    "stale": "its last sync is older than the snapshot: a webseed only for files verified on it, never in the lists",
    "no-range": "does not answer HTTP Range requests: aria2 fails on it, so never a webseed and never in the lists",
    "down": "did not answer in this run; it leaves torrents only after staying down for several runs",
}

# Local directories the recipe downloads into (the demo checks `packages/<file name>`).
PACKAGES_DIR = "packages"


_FINGERPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_MAGNET = re.compile(r"^magnet:\?[A-Za-z0-9%&=:._~+-]+$")
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_PATH_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
# A Debian suite ("bookworm", "bookworm-security", "bookworm/updates"), component, architecture or
# Arch repository name: one word in a sources.list line.
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~/-]*$")
# What a mirror base URL's path keeps as is; everything else is percent-encoded (`$` too: pacman
# substitutes `$repo`/`$arch` in a Server line; existing %XX escapes are kept).
_URL_PATH_SAFE = "/%:@!&'()*+,;=-._~"
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$")
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class ListingInput:
    """Everything the listings show; all of it already committed (the pointer) or about to be."""

    repo: str
    snapshot_format: str
    public_url: str
    pointer: Pointer
    fingerprint: str
    records: Sequence[PackageRecord]  # a PackageRecords (sorted, each made when read) or any sequence
    webseeds: tuple[str, ...]
    templates_dir: Path | None = None
    mirrors: tuple[MirrorStatus, ...] = ()  # this run's probe results; none: no mirror listings
    # Per file, the mirrors verified to hold it (the torrent's url-list); None: every webseed for every file.
    webseeds_for: Callable[[str], Sequence[str]] | None = field(default=None, compare=False)
    # With a PackageRecords: each record's `pipeline.records.page_digest` by row, made once by the build. A
    # browse page is then told unchanged from these, and its records made only when it is rendered.
    page_digests: FixedColumn | None = field(default=None, compare=False)
    dht_nodes: tuple[str, ...] = ()  # DHT bootstrap nodes HOST:PORT (the recipes' --dht-entry-point)
    suites: tuple[str, ...] = ()  # Debian suites / Arch repositories of the snapshot
    components: tuple[str, ...] = ()  # Debian components (sources.list lines; `main` when empty)
    architectures: tuple[str, ...] = ()
    snapshot_time: str | None = None  # RFC 3339: when upstream produced the snapshot
    compiled: CompiledTemplates | None = field(default=None, compare=False)  # templates compiled by earlier runs


@dataclass(frozen=True)
class Crumb:
    """One breadcrumb: a label, the repository directory it names ("" = root) and the href of that directory's
    browse page from the page that shows the crumb (what `dir | browse_href` gives there)."""

    label: str
    dir: str
    href: str


@dataclass(frozen=True)
class Subdir:
    """An immediate subdirectory of a browse page's directory."""

    name: str
    dir: str


class _Subdirs(Sequence[Subdir]):
    """A browse page's subdirectories (full directory names, sorted), each made a Subdir as the template reads it:
    the million-file bench's pool/main/r has ~75,000, which as a list of Subdirs took ~12 MB at once."""

    __slots__ = ("_dirs",)

    def __init__(self, dirs: Sequence[str]) -> None:
        self._dirs = dirs

    def __len__(self) -> int:
        return len(self._dirs)

    @overload
    def __getitem__(self, index: int) -> Subdir: ...
    @overload
    def __getitem__(self, index: slice) -> list[Subdir]: ...
    def __getitem__(self, index: int | slice) -> Subdir | list[Subdir]:
        if isinstance(index, slice):
            return [Subdir(basename(d), d) for d in self._dirs[index]]
        directory = self._dirs[index]
        return Subdir(basename(directory), directory)

    def __iter__(self) -> Iterator[Subdir]:
        for directory in self._dirs:
            yield Subdir(basename(directory), directory)


@dataclass(frozen=True)
class MirrorLink:
    """A direct link to a file on one HTTP mirror (webseed)."""

    label: str
    url: str


@dataclass(frozen=True)
class MirrorRow:
    """One mirror as the listings show it: every field checked, normalised and formatted."""

    url: str  # normalised base URL (mirror_base), also the href
    label: str  # the name, or the host
    host: str
    country: str | None
    continent: str | None
    status: str
    status_class: str
    detail: str
    last_sync: str | None  # YYYY-MM-DDTHH:MM:SSZ
    lag: str  # human: "2 h 5 min"
    range_support: str  # yes / no / unknown
    sampled: str  # "3/4 sampled"
    verified: str  # "10/12 verified"
    bandwidth: str | None
    contact: str | None
    webseed: bool
    priority: int
    source: MirrorStatus


@dataclass(frozen=True)
class MirrorListFiles:
    """The package-manager lists of one scope ("all" or a country code) and what each is."""

    scope: str
    count: int
    files: tuple[tuple[str, str], ...]  # (label, key)


@dataclass(frozen=True)
class _Checked:
    """A ListingInput once validated: what ends up in hrefs, lists or the shell recipe."""

    public_url: str
    fingerprint: str
    webseeds: tuple[str, ...]
    mirrors: tuple[MirrorRow, ...]  # sorted by URL
    suites: tuple[str, ...]
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    snapshot_time: str | None


# --- href helpers (the only way templates get an href) ------------------------------------------


def relative_href(page_key: str, target_key: str) -> str:
    """The href from the page at `page_key` to the object at `target_key`, both relative to the
    destination root; each segment percent-encoded (`+`, space, `#`, `?`, `%` and UTF-8 safe)."""
    page_dir = page_key.split("/")[:-1]
    if page_dir and not target_key.startswith(page_dir[0] + "/"):  # another tree (a browse page's torrent links)
        return "../" * len(page_dir) + quote_path(target_key)
    target = target_key.split("/")
    common = 0
    while common < len(page_dir) and common < len(target) - 1 and page_dir[common] == target[common]:
        common += 1
    ups = "../" * (len(page_dir) - common)
    return ups + quote_path("/".join(target[common:]))


def root_href(page_key: str) -> str:
    """The href of the destination root from the page at `page_key` ("" or "../…"): a page's links to the fixed
    objects (the front page, `style.css`, `latest.asc`) are this and their key, as `relative_href` makes them."""
    return "../" * page_key.count("/")


def magnet_href(magnet: str) -> str:
    """A magnet URI as an href, refused unless it is a percent-encoded `magnet:?…` (autoescape does
    not stop other schemes)."""
    if not _MAGNET.match(magnet):
        raise ValueError(f"{magnet!r}: not a percent-encoded magnet URI")
    return magnet


def mirror_links(path: str, webseeds: Iterable[str]) -> list[MirrorLink]:
    """The file at `path` on each webseed, labelled by host."""
    return [MirrorLink(label=urlsplit(base).netloc, url=join_url(base, path)) for base in webseeds]


def mirror_base(url: str) -> str:
    """A mirror's base URL as pages and lists show it: http(s)://host[:port]/path with no query,
    fragment, credentials or trailing '/', the path percent-encoded (existing %XX kept, `$` encoded
    so a pacman `Server` line cannot grow a variable)."""
    checked = _check_http_url(url, "mirror")
    parts = urlsplit(checked)
    if "?" in checked or "#" in checked or "@" in parts.netloc:
        raise ConfigError(f"{url!r}: a mirror URL is a base URL: no query, fragment or credentials")
    if not _HOST.match(parts.netloc):
        raise ConfigError(f"{url!r}: mirror host must be an ASCII name or address (use the IDNA form)")
    if any(segment in ("", ".", "..") for segment in parts.path.split("/")[1:]):
        raise ConfigError(f"{url!r}: mirror URL path has an empty, '.' or '..' segment")
    return f"{parts.scheme}://{parts.netloc}{quote(parts.path, safe=_URL_PATH_SAFE).rstrip('/')}"


# --- text filters ---------------------------------------------------------------------------------


def filesize(size: int) -> str:
    """Human size with binary units: 512 B, 1.5 KiB, 20.0 MiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} PiB"


def exact_bytes(size: int) -> str:
    """`1,234,567 bytes` (fixed separator: no locale)."""
    return f"{size:,} bytes"


def normalize_fingerprint(fingerprint: str) -> str:
    """40 (v4) or 64 (v5) upper-case hex digits, spaces removed; anything else is refused."""
    fpr = fingerprint.replace(" ", "").upper()
    if not _FINGERPRINT.match(fpr):
        raise ConfigError(
            f"{fingerprint!r}: signing key fingerprint is not 40 or 64 hex digits; pass the full fingerprint"
        )
    return fpr


def group_fingerprint(fingerprint: str) -> str:
    """`ABCD 1234 …`: the fingerprint in groups of four, as users compare it."""
    fpr = normalize_fingerprint(fingerprint)
    return " ".join(fpr[i : i + 4] for i in range(0, len(fpr), 4))


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def words(values: Iterable[str | None]) -> str | None:
    """The values that are not None, joined by a space; None when every one is None (a page shows no
    line then). One filter where `reject("none") | join(" ")` took two (~10 µs a package)."""
    present = [value for value in values if value is not None]
    return " ".join(present) if present else None


def synopsis(description: str) -> str:
    """The first line of a package description (Debian: the synopsis)."""
    return description.strip().split("\n", 1)[0].strip()


def shell_quote(value: object) -> str:
    """One shell word (POSIX single quotes when needed)."""
    return shlex.quote(str(value))


def unit_value(value: object) -> str:
    """A value in a systemd unit file setting: one line, `%` doubled (systemd expands `%` specifiers)."""
    return one_line(str(value)).replace("%", "%%")


def one_line(text: str) -> str:
    """Free text (a mirror's name, contact, detail) on one line: control characters and runs of
    white space become one space, so a name cannot add a line to a sources.list or mirrorlist."""
    return " ".join(_LINE_BREAKING.sub(" ", text).split())


def duration(seconds: int | None) -> str:
    """A mirror's lag, human: `45 s`, `12 min`, `2 h 5 min`, `3 d 4 h`; `none` when not behind."""
    if seconds is None:
        return "unknown"
    if seconds <= 0:
        return "none"
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def rfc3339(text: str, what: str) -> str:
    """An RFC 3339 time with an offset, as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: {what} is not an RFC 3339 time") from None
    if when.tzinfo is None or when.year < 1000:
        raise ValueError(f"{text!r}: {what} is not an RFC 3339 time with a UTC offset")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- environment ---------------------------------------------------------------------------------


@jinja2.pass_context
def _href_filter(ctx: Context, key: str) -> str:
    return relative_href(str(ctx["page_key"]), key)


@jinja2.pass_context
def _browse_href_filter(ctx: Context, directory: str) -> str:
    return relative_href(str(ctx["page_key"]), browse_key(directory))


@jinja2.pass_context
def _mirror_links_filter(ctx: Context, path: str) -> list[MirrorLink]:
    selected = ctx["webseeds_for"]
    if selected is None:
        return mirror_links(path, ctx["webseeds"])
    return mirror_links(path, (_check_http_url(base, "webseed") for base in selected(path)))


@jinja2.pass_context
def _signature_links_filter(ctx: Context, path: str) -> list[MirrorLink]:
    return mirror_links(path, ctx["signature_bases"])


class CompiledTemplates(Protocol):
    """Where compiled templates are kept from one run to the next (the state cache, this user's cache directory)."""

    def template_code(self, key: str) -> bytes | None: ...

    def dump_template_code(self, key: str, code: bytes) -> None: ...


class TemplateCodeFiles:
    """Compiled templates kept as files in one of this user's directories (`user_cache_dir()/templates`), as
    Python keeps a module's bytecode beside it: a run with a new state file renders without compiling them.
    Kept code is executable, so a directory that another user owns, or may write to, is not used; and a
    cache only: what cannot be read or written is compiled again."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._usable: bool | None = None

    def template_code(self, key: str) -> bytes | None:
        if not self._ready():
            return None
        try:
            return (self._directory / f"{key}.code").read_bytes()
        except OSError:
            return None

    def dump_template_code(self, key: str, code: bytes) -> None:
        if not self._ready():
            return
        path = self._directory / f"{key}.code"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(code)
            os.replace(temporary, path)  # a reader sees the old code or the new, never a part
        except OSError:
            temporary.unlink(missing_ok=True)

    def _ready(self) -> bool:
        if self._usable is None:
            try:
                self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                held = self._directory.lstat()
                self._usable = stat.S_ISDIR(held.st_mode) and held.st_uid == os.geteuid() and not held.st_mode & 0o022
            except OSError:
                self._usable = False
        return self._usable


class KeptInEither:
    """Compiled templates kept in two places, `first` (the state cache) read first: code found only in
    `second` is copied into `first`, and new code goes to both."""

    def __init__(self, first: CompiledTemplates, second: CompiledTemplates) -> None:
        self._first, self._second = first, second

    def template_code(self, key: str) -> bytes | None:
        code = self._first.template_code(key)
        if code is None:
            code = self._second.template_code(key)
            if code is not None:  # stale code is compiled again by jinja2, and replaced in both
                self._first.dump_template_code(key, code)
        return code

    def dump_template_code(self, key: str, code: bytes) -> None:
        self._first.dump_template_code(key, code)
        self._second.dump_template_code(key, code)


class _KeptBytecode(jinja2.BytecodeCache):
    """jinja2's bytecode cache over `CompiledTemplates`: a run renders without compiling its templates (all
    of them take ~80 ms). A bucket's key names the template and its file; jinja2 discards kept code whose
    Python version or template source checksum differs, and compiles again."""

    def __init__(self, kept: CompiledTemplates) -> None:
        self._kept = kept

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._kept.template_code(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._kept.dump_template_code(bucket.key, bucket.bytecode_to_string())


def make_environment(
    templates_dir: Path | None = None, compiled: CompiledTemplates | None = None
) -> jinja2.Environment:
    """The one jinja2 environment: the operator's directory first, then the built-in templates; with
    `compiled`, templates compiled by an earlier run are taken from there and new compilations kept."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.FileSystemLoader(BUILTIN_TEMPLATES))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # select_autoescape() is False for *.html.j2: escape everything (recipe.sh.j2 opts out).
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates do not change during a run: no stat of each template for every page
        bytecode_cache=_KeptBytecode(compiled) if compiled is not None else None,
    )
    env.filters.update(
        href=_href_filter,
        browse_href=_browse_href_filter,
        magnet_href=magnet_href,
        mirror_links=_mirror_links_filter,
        signature_links=_signature_links_filter,
        filesize=filesize,
        bytes=exact_bytes,
        fingerprint=group_fingerprint,
        basename=basename,
        words=words,
        synopsis=synopsis,
        shq=shell_quote,
        unit=unit_value,
        one_line=one_line,
        duration=duration,
    )
    return env


def _render(env: jinja2.Environment, template: str, context: Mapping[str, Any], where: Path | None) -> str:
    try:
        return env.get_template(template).render(context)
    except jinja2.TemplateError as exc:
        raise _template_error(template, exc, where) from exc


def _template_error(template: str, exc: jinja2.TemplateError, where: Path | None) -> ConfigError:
    place = f"{where} or {BUILTIN_TEMPLATES}" if where is not None else str(BUILTIN_TEMPLATES)
    return ConfigError(f"{template}: {type(exc).__name__}: {exc}; fix the template (searched in {place})")


# --- checks ----------------------------------------------------------------------------------------


def _check_http_url(url: str, what: str) -> str:
    if _URL_UNSAFE.search(url):
        raise ConfigError(f"{url!r}: {what} URL contains whitespace or control characters; percent-encode them")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{url!r}: {what} URL must be http(s)://host/…; fix it in the settings")
    return url.rstrip("/")


def _check_path(path: str) -> None:
    segments = path.split("/")
    if not path or path.startswith("/") or any(s in ("", ".", "..") for s in segments) or _PATH_UNSAFE.search(path):
        raise SnapshotError(f"{path!r}: not a clean relative repository path; fix the snapshot and re-run")


def _check_shard(shard: ShardRef) -> None:
    """A shard's name goes into the front page and the scripts' messages, its paths into hrefs."""
    if not shard.name or _PATH_UNSAFE.search(shard.name):
        raise SnapshotError(f"{shard.name!r}: not a shard name (empty or a control character); fix pipeline.shards")
    for path in (shard.path, shard.torrent, *([shard.delta.path] if shard.delta else [])):
        _check_path(path)


def _words(values: Iterable[str], what: str) -> tuple[str, ...]:
    """Suites, components, architectures: one word each (they go into sources.list lines); duplicates
    dropped, order kept."""
    out: list[str] = []
    for value in values:
        if not _WORD.match(value):
            raise SnapshotError(f"{value!r}: {what} is not one word of letters, digits and ._+~/-; fix the snapshot")
        if value not in out:
            out.append(value)
    return tuple(out)


def _mirror_row(mirror: MirrorStatus) -> MirrorRow:
    url = mirror_base(mirror.url)
    if mirror.status not in STATUS_ORDER:
        raise ValueError(f"{mirror.url}: mirror status {mirror.status!r} is not one of {', '.join(STATUS_ORDER)}")
    if mirror.country is not None and not _COUNTRY.match(mirror.country):
        raise ConfigError(f"{mirror.url}: country {mirror.country!r} must be a two-letter code such as DE")
    if mirror.continent is not None and mirror.continent not in _CONTINENTS:
        raise ConfigError(
            f"{mirror.url}: continent {mirror.continent!r} must be one of {', '.join(sorted(_CONTINENTS))}"
        )
    host = urlsplit(url).netloc
    name = one_line(mirror.name) if mirror.name is not None else ""
    bandwidth = one_line(mirror.bandwidth) if mirror.bandwidth is not None else ""
    contact = one_line(mirror.contact) if mirror.contact is not None else ""
    return MirrorRow(
        url=url,
        label=name or host,
        host=host,
        country=mirror.country,
        continent=mirror.continent,
        status=mirror.status,
        status_class="status-" + mirror.status,
        detail=one_line(mirror.detail),
        last_sync=None if mirror.last_sync is None else rfc3339(mirror.last_sync, f"{mirror.url}: last sync"),
        lag=duration(mirror.lag_seconds),
        range_support={True: "yes", False: "no", None: "unknown"}[mirror.range_ok],
        sampled=f"{mirror.sampled_ok}/{mirror.sampled} sampled" if mirror.sampled else "none sampled",
        verified=f"{mirror.verified_files}/{mirror.total_files} verified",
        bandwidth=bandwidth or None,
        contact=contact or None,
        webseed=mirror.webseed,
        priority=mirror.priority,
        source=mirror,
    )


def _checked(listing: ListingInput, *, records: bool = True) -> _Checked:
    """Validate what ends up in hrefs, in the lists or in the shell recipe; without `records`, the caller
    checks each record where it makes it (`_check_record`: the browse pages make every one)."""
    format_info(listing.snapshot_format)  # a registered format, or ConfigError
    public_url = _check_http_url(listing.public_url, "public")
    webseeds = tuple(_check_http_url(w, "webseed") for w in listing.webseeds)
    fingerprint = normalize_fingerprint(listing.fingerprint)
    if records:
        for record in listing.records:
            _check_record(record)
    for shard in listing.pointer.shards:
        _check_shard(shard)
    rows = sorted((_mirror_row(m) for m in listing.mirrors), key=lambda r: r.url)
    for first, second in zip(rows, rows[1:], strict=False):
        if first.url == second.url:
            raise ConfigError(f"{first.url}: mirror listed twice; keep one entry per mirror")
    return _Checked(
        public_url=public_url,
        fingerprint=fingerprint,
        webseeds=webseeds,
        mirrors=tuple(rows),
        suites=_words(listing.suites, "suite"),
        components=_words(listing.components, "component"),
        architectures=_words(listing.architectures, "architecture"),
        snapshot_time=None if listing.snapshot_time is None else rfc3339(listing.snapshot_time, "snapshot time"),
    )


def _check_record(record: PackageRecord) -> None:
    _check_path(record.path)
    if record.magnet is not None:
        magnet_href(record.magnet)
    if record.signature is not None:
        _check_path(record.signature.path)


# --- the user recipe -------------------------------------------------------------------------------


def example_package(records: Iterable[PackageRecord]) -> PackageRecord | None:
    """The package the recipe fetches: the first non-empty one (a zero-length file has no torrent)."""
    return next((r for r in records if r.size > 0 and r.torrent is not None), None)


def preferred_mirror(checked: _Checked) -> str | None:
    """The HTTP mirror a script names (where an Arch `.sig` comes from, the apt source the front page
    shows): the first `ok` mirror by priority then URL, else the first webseed; None when there is neither."""
    ok = sorted((r for r in checked.mirrors if r.status == "ok"), key=lambda r: (r.priority, r.url))
    candidates = [r.url for r in ok] + list(checked.webseeds)
    return candidates[0].rstrip("/") if candidates else None


def _recipe(
    env: jinja2.Environment,
    listing: ListingInput,
    example: PackageRecord | None,
    checked: _Checked,
) -> str:
    package: dict[str, str] | None = None
    if example is not None:
        if example.torrent is None:
            raise ValueError(f"{example.path}: a zero-length file has no torrent; pick another example")
        _check_path(example.path)
        # by name (the current version then comes from the index), or by path when the format has no names
        package = {"want": example.name or example.path, "arch": example.arch or ""}
    context = {
        **_script_context(listing, checked, RECIPE_KEY),
        "example": package,
    }
    text = _render(env, RECIPE_TEMPLATE, context, listing.templates_dir)
    return text.rstrip("\n") + "\n"


def _start_context(listing: ListingInput, checked: _Checked, example: PackageRecord | None) -> dict[str, Any]:
    """The front page's "Get started": the tools to install, the scripts' and clients' URLs, an apt source."""
    name = listing.snapshot_format
    mirror = preferred_mirror(checked) or "https://MIRROR/debian"
    suite = checked.suites[0] if checked.suites else "SUITE"
    components = " ".join(checked.components or ("main",))
    return {
        "install_tools": INSTALL_ARCH if name == "arch" else INSTALL_DEBIAN,
        "install_tools_other": INSTALL_ARCH if name not in ("arch", "debian") else None,
        "example_want": None if example is None else example.name or example.path,
        "recipe_url": join_url(checked.public_url, RECIPE_KEY),
        "update_url": join_url(checked.public_url, UPDATE_KEY),
        "key_url": join_url(checked.public_url, SIGNING_KEY_GPG),
        "apt_method_key": APT_METHOD_KEY,
        "apt_method_url": join_url(checked.public_url, APT_METHOD_KEY),
        "pacman_xfer_key": PACMAN_XFER_KEY,
        "pacman_xfer_url": join_url(checked.public_url, PACMAN_XFER_KEY),
        "apt_source": f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] mirrorseed+{mirror} "
        f"{suite} {components}",
    }


def shards_example(listing: ListingInput, checked: _Checked) -> str | None:
    """A `MIRRORSEED_SHARDS` value the scripts and the front page show (docs/sharded-index.md): the
    snapshot's first suite and architecture (Debian: `bookworm/*/amd64 bookworm/*/all`), its first
    repository and architecture (Arch: `core/x86_64`), a top directory (flat). Only patterns that match a
    shard of the pointer (a pattern matching none stops the scripts); None when there are not two shards."""
    names = listing.pointer.shard_names
    if len(names) < 2:
        return None
    suite = checked.suites[0] if checked.suites else None
    arch = next((a for a in checked.architectures if a != "all"), None)
    parts = next((n.split("/") for n in names if n.count("/") == 2 and not n.endswith("/all")), None)
    if listing.snapshot_format == "debian" and (suite is None or arch is None) and parts is not None:
        suite, arch = parts[0], parts[2]  # no scan details given: from the first shard of an architecture
    if listing.snapshot_format == "debian" and suite and arch:
        patterns = [f"{suite}/*/{arch}", f"{suite}/*/all"]
    elif listing.snapshot_format == "arch" and suite and arch:
        patterns = [f"{suite}/{arch}"]
    else:
        patterns = [next((n for n in names if n != SHARD_TOP), names[0])]
    kept = [p for p in patterns if _WORD.match(p.replace("*", "x")) and any(fnmatch.fnmatchcase(n, p) for n in names)]
    return " ".join(kept) or None


def _script_context(listing: ListingInput, checked: _Checked, script_key: str) -> dict[str, Any]:
    """What every published script (recipe, update, give-back) reads: where, whose key, aria2's flags, the
    HTTP mirror detached signatures (.sig) come from when the format has them, the index formats it reads,
    and its own key (a pointer of another format sends the user to a current copy)."""
    return {
        **_FETCH_CONTEXT,
        "script_key": script_key,
        "pointer_format": POINTER_FORMAT,
        "index_format": INDEX_FORMAT,
        "shards_dir": SHARDS_PREFIX.rstrip("/"),
        "shards_example": shards_example(listing, checked),
        "repo": listing.repo,
        "pointer_repo": listing.pointer.repo,
        "public_url": checked.public_url,
        "fingerprint": checked.fingerprint,
        "flags": aria2_flags(listing.dht_nodes),
        "packages_dir": PACKAGES_DIR,
        "snapshot_format": listing.snapshot_format,
        "mirror": preferred_mirror(checked) if format_info(listing.snapshot_format).detached_signatures else None,
    }


# update.sh's example of how to name every installed package this mirror has, per format.
_ALL_INSTALLED: Mapping[str, str] = {
    "debian": "Everything installed that\n# this mirror has: bash update.sh $(dpkg-query -W -f='${Package}\\n')",
    "arch": "Everything installed that\n# this mirror has: bash update.sh $(pacman -Qq)",
}


def _update_recipe(env: jinja2.Environment, listing: ListingInput, checked: _Checked) -> str | None:
    if not format_info(listing.snapshot_format).update_script:
        return None  # before the search: a format without names (flat) would make every record for nothing
    example = next((r for r in _by_path(listing.records) if r.torrent is not None and r.size > 0 and r.name), None)
    if example is None:
        return None
    context = {
        **_script_context(listing, checked, UPDATE_KEY),
        "want": example.name,
        "all_installed": _ALL_INSTALLED.get(listing.snapshot_format, ""),
    }
    return _render(env, UPDATE_TEMPLATE, context, listing.templates_dir).rstrip("\n") + "\n"


def user_recipe(listing: ListingInput, example: PackageRecord | None) -> str:
    """The bash script the front page shows: fetch and verify the key, the pointer, the index and
    `example` with aria2c, gpgv, zstd, sha256sum and jq (Arch: also its `.sig` over plain HTTP).
    Runnable from an empty directory; installing is a printed instruction, never run."""
    checked = _checked(listing)
    return _recipe(make_environment(listing.templates_dir), listing, example, checked)


def update_recipe(listing: ListingInput) -> str | None:
    """Arch only (None otherwise, or when no package has a name): the bash script that fetches the
    packages named in `WANT` (the first named package, as an example) in one `aria2c -i list.txt`
    run (their `.torrent` URLs and `.sig` URLs, built with jq from the index `user_recipe`
    verified), then checks each SHA-256 and prints the `pacman -U` command."""
    checked = _checked(listing)
    return _update_recipe(make_environment(listing.templates_dir), listing, checked)


# --- give back (opt-in user seeding) --------------------------------------------------------------


def _give_back(env: jinja2.Environment, listing: ListingInput, checked: _Checked) -> tuple[Artifact, ...]:
    """give-back.sh and its systemd user unit and timer."""
    script = {
        **_script_context(listing, checked, GIVE_BACK_KEY),
        **_GIVE_BACK_CONTEXT,
        "seed_flags": give_back_seed_flags(listing.dht_nodes),
    }
    unit = {
        **_GIVE_BACK_CONTEXT,
        "repo": listing.repo,
        "public_url": checked.public_url,
        "front_url": join_url(checked.public_url, FRONT_KEY),
    }
    return tuple(
        make_artifact(key, _page(env, template, {**context, "page_key": key}, listing.templates_dir))
        for key, template, context in (
            (GIVE_BACK_KEY, GIVE_BACK_TEMPLATE, script),
            (GIVE_BACK_SERVICE_KEY, GIVE_BACK_SERVICE_TEMPLATE, unit),
            (GIVE_BACK_TIMER_KEY, GIVE_BACK_TIMER_TEMPLATE, unit),
        )
    )


def give_back_files(listing: ListingInput) -> dict[str, str]:
    """What a publication offers users who opt in to seeding, by key: `give-back.sh` (run with bash in the
    recipe's folder: verifies the current pointer and index as the recipe does, then one aria2c seeds the
    files of its seed folders (`packages/` and, by default, the apt and pacman caches the user cannot
    write to) whose size and SHA-256 are a package of that index, through links in its own work folder,
    bounded by ratio, time and upload rate), and the systemd user unit and timer that run it daily."""
    env = make_environment(listing.templates_dir)
    return {a.key: a.data.decode("utf-8") for a in _give_back(env, listing, _checked(listing))}


# --- mirror lists ----------------------------------------------------------------------------------


def listed_mirrors(rows: Iterable[MirrorRow]) -> list[MirrorRow]:
    """The mirrors package-manager lists name: status ok, then partial; each by priority, then URL."""
    rank = {status: i for i, status in enumerate(LISTED_STATUSES)}
    return sorted((r for r in rows if r.status in rank), key=lambda r: (rank[r.status], r.priority, r.url))


def _list_header(repo: str, scope: str) -> list[str]:
    where = "" if scope == "all" else f" in {scope}"
    return [
        f"# {one_line(repo)}: HTTP mirrors{where} verified by mirrorseed to hold this snapshot",
        "# (status ok first, then partial; stale, no-range and down mirrors are left out).",
    ]


def url_list_text(rows: Sequence[MirrorRow]) -> str:
    """One base URL a line, nothing else."""
    return "".join(f"{r.url}\n" for r in rows)


def sources_list_text(
    repo: str, scope: str, rows: Sequence[MirrorRow], suites: Sequence[str], components: Sequence[str]
) -> str:
    """Debian: `deb <url> <suite> <components…>`, one line per mirror and suite."""
    words = " ".join(components or ("main",))
    lines = _list_header(repo, scope)
    for row in rows:
        lines.append(f"# {row.label}" + (f" ({row.country})" if row.country else ""))
        lines.extend(f"deb {row.url} {suite} {words}" for suite in suites)
    return "\n".join(lines) + "\n"


def mirrorlist_text(repo: str, scope: str, rows: Sequence[MirrorRow]) -> str:
    """Arch: pacman's mirrorlist, `## <name> (<CC>)` then `Server = <url>/$repo/os/$arch`."""
    lines = _list_header(repo, scope)
    for row in rows:
        lines.append("")
        lines.append(f"## {row.label}" + (f" ({row.country})" if row.country else ""))
        lines.append(f"Server = {row.url}/$repo/os/$arch")
    return "\n".join(lines) + "\n"


def _mirror_lists(listing: ListingInput, checked: _Checked) -> tuple[list[MirrorListFiles], list[Artifact]]:
    """The `all` lists (always, when there are mirrors) and one set per country with a listed mirror."""
    listed = listed_mirrors(checked.mirrors)
    scopes: list[tuple[str, list[MirrorRow]]] = [("all", listed)]
    for country in sorted({r.country for r in listed if r.country is not None}):
        scopes.append((country, [r for r in listed if r.country == country]))
    info = format_info(listing.snapshot_format)
    kind = info.client_list if checked.suites or not info.client_list_needs_suites else None
    files: list[MirrorListFiles] = []
    artifacts: list[Artifact] = []
    for scope, rows in scopes:
        texts = {"txt": url_list_text(rows)}
        if kind == "sources.list":
            texts[kind] = sources_list_text(listing.repo, scope, rows, checked.suites, checked.components)
        elif kind == "mirrorlist":
            texts[kind] = mirrorlist_text(listing.repo, scope, rows)
        for suffix, text in texts.items():
            artifacts.append(make_artifact(mirror_list_key(scope, suffix), text.encode("utf-8")))
        keys = tuple(("URLs" if suffix == "txt" else suffix, mirror_list_key(scope, suffix)) for suffix in texts)
        files.append(MirrorListFiles(scope=scope, count=len(rows), files=keys))
    return files, artifacts


def mirrors_document(listing: ListingInput, rows: Iterable[MirrorRow], snapshot_time: str | None) -> dict[str, Any]:
    """`mirrors/mirrors.json` (schemas/mirrors.schema.json): the table's data, mirrors by URL."""
    return {
        "format": MIRRORS_FORMAT,
        "repo": listing.repo,
        "sequence": listing.pointer.sequence,
        "snapshot_time": snapshot_time,
        "mirrors": [
            {
                "url": r.url,
                "name": None if r.source.name is None else (one_line(r.source.name) or None),
                "country": r.country,
                "continent": r.continent,
                "contact": r.contact,
                "bandwidth": r.bandwidth,
                "priority": r.priority,
                "status": r.status,
                "detail": r.detail,
                "last_sync": r.last_sync,
                "lag_seconds": r.source.lag_seconds,
                "range_ok": r.source.range_ok,
                "sampled": r.source.sampled,
                "sampled_ok": r.source.sampled_ok,
                "verified_files": r.source.verified_files,
                "total_files": r.source.total_files,
                "webseed": r.webseed,
            }
            for r in sorted(rows, key=lambda r: r.url)
        ],
    }


# --- the listings ----------------------------------------------------------------------------------


def _by_path(records: Sequence[PackageRecord]) -> Sequence[PackageRecord]:
    """`records` sorted by path: as they are when PackageRecords (sorted by construction, not made twice)."""
    if isinstance(records, PackageRecords):
        return records
    return tuple(sorted(records, key=lambda r: r.path))


class _Tree:
    """Every directory holding a package (of `paths`, by row), every ancestor of one, and the root, sorted;
    for each its subdirectories (sorted) and its packages' rows. In arrays: ~110 bytes a directory and 8 a
    file, where a dict of sets and arrays cost ~550 bytes a directory (a million-file pool has ~540,000)."""

    __slots__ = ("_child_starts", "_children", "_row_starts", "_rows", "dirs")

    def __init__(self, paths: Iterable[str]) -> None:
        distinct = StringColumn()  # each file's directory, a run of files in one directory named once
        slot_of_file = array("l")
        last: str | None = None
        for path in paths:
            parent = path.rpartition("/")[0]
            if parent != last:
                distinct.append(parent)
                last = parent
            slot_of_file.append(len(distinct) - 1)
        self.dirs = _sorted_names(distinct)
        dirs = self.dirs
        dir_of_slot = array("l", (dirs.bisect_left(name) for name in distinct))
        del distinct
        self._row_starts, self._rows = _grouped((dir_of_slot[slot] for slot in slot_of_file), len(dirs))
        del slot_of_file, dir_of_slot
        parents = (dirs.bisect_left(name.rpartition("/")[0]) for name in itertools.islice(dirs, 1, None))
        self._child_starts, self._children = _grouped(parents, len(dirs), first=1)  # "" sorts first: no parent

    def subdirs(self, number: int) -> list[str]:
        """The subdirectories of directory `number` (of `dirs`), sorted."""
        children = self._children[self._child_starts[number] : self._child_starts[number + 1]]
        return [self.dirs[child] for child in children]

    def rows(self, number: int) -> array[int]:
        """The rows of the packages directly in directory `number`, ascending."""
        return self._rows[self._row_starts[number] : self._row_starts[number + 1]]


def _sorted_names(directories: Iterable[str]) -> SortedColumn:
    """The root (""), `directories` and every ancestor of one, each once, sorted. Named a run of `NAMES_RUN`
    at a time (a set per run), each run sorted into a column set aside on disk, then the runs merged: no
    set or list of every directory (~100 MB at a million-file pool's ~540,000)."""
    runs: list[SortedColumn] = []
    names: set[str] = {""}
    for directory in directories:
        name = directory
        while name not in names:  # its ancestors, up to one this run named already
            names.add(name)
            name = name.rpartition("/")[0]
        if len(names) >= NAMES_RUN:
            runs.append(SortedColumn(sorted(names)))
            names = set()
    runs.append(SortedColumn(sorted(names)))
    del names
    merged = SortedColumn()
    for name in heapq.merge(*runs):
        if name != merged.last:
            merged.append(name)
    return merged


def _grouped(groups: Iterable[int], count: int, first: int = 0) -> tuple[array[int], array[int]]:
    """Items numbered from `first`, grouped by their group (of `count`), ascending within each: (where each
    group starts, with an end after the last; the items). A counting sort: two arrays, nothing a item."""
    of = array("l", groups)
    starts = array("l", bytes(array("l").itemsize * (count + 1)))
    for group in of:
        starts[group + 1] += 1
    for group in range(count):
        starts[group + 1] += starts[group]
    filled = array("l", starts)
    items = array("l", bytes(array("l").itemsize * len(of)))
    for item, group in enumerate(of, first):
        items[filled[group]] = item
        filled[group] += 1
    return starts, items


def _crumbs(repo: str, directory: str) -> list[Crumb]:
    """The root, then each directory down to `directory`; each an ancestor's page, so its href only goes up
    (`relative_href` from this page gives the same: no segment to encode). Pages come directory by directory
    in sorted order, so siblings follow one another: the crumbs before the last are their parent's, made once."""
    if not directory:
        return [Crumb(repo, "", "index.html")]
    parent, _, name = directory.rpartition("/")
    return [*_crumbs_below(repo, parent), Crumb(name, directory, "index.html")]


@lru_cache(maxsize=64)
def _crumbs_below(repo: str, parent: str) -> tuple[Crumb, ...]:
    """The crumbs that a page of a subdirectory of `parent` shows before its own."""
    parts = parent.split("/") if parent else []
    depth = len(parts) + 1  # the subdirectory's
    ancestors = (
        Crumb(part, "/".join(parts[: i + 1]), "../" * (depth - i - 1) + "index.html") for i, part in enumerate(parts)
    )
    return (Crumb(repo, "", "../" * depth + "index.html"), *ancestors)


def _table_order(row: MirrorRow) -> tuple[bool, str, int, int, str]:
    return (row.country is None, row.country or "", STATUS_ORDER.index(row.status), row.priority, row.url)


def render_listings(listing: ListingInput) -> tuple[Artifact, ...]:
    """`index.html`, `browse/…/index.html` for every directory, `style.css`, and when mirrors were
    probed `mirrors/index.html`, `mirrors/mirrors.json` and the lists; sorted by key."""
    return tuple(sorted(iter_listings(listing), key=lambda a: a.key))


def iter_listings(listing: ListingInput) -> Iterator[Artifact]:
    """The pages of `render_listings`, one at a time as they are rendered (the caller spools them)."""
    for page in iter_pages(listing):
        assert page.artifact is not None
        yield page.artifact


@dataclass(frozen=True)
class Page:
    """One listing object: rendered, or (`artifact` None) left as published because `unchanged(key,
    inputs)` said the copy rendered from the same inputs is current. `inputs` is the digest of
    everything a browse page shows (None for the other objects, which are always rendered)."""

    key: str
    inputs: str | None
    artifact: Artifact | None


# Browse pages see only these of the common context: nothing that changes with every publication
# (the pointer, the package count), so a page's bytes follow its directory's inputs alone.
BROWSE_CONTEXT = (
    "repo", "snapshot_format", "format_label", "public_url", "fingerprint", "webseeds", "webseeds_for",
    "has_mirrors", "signature_bases",
)  # fmt: skip
RENDER_RECIPE = "2"  # bump when the browse context, its filters or `_BrowseInputs` change


def templates_digest(templates_dir: Path | None) -> str:
    """A digest of every template file the environment can load (the operator's, then the built-in)."""
    digest = hashlib.sha256(f"{RENDER_RECIPE}\0{jinja2.__version__}".encode())
    for directory in (templates_dir, BUILTIN_TEMPLATES):
        if directory is None or not directory.is_dir():
            continue
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            digest.update(f"\0{directory}\0{path.relative_to(directory)}\0".encode("utf-8", "surrogateescape"))
            digest.update(path.read_bytes())
    return digest.hexdigest()


class _BrowseInputs:
    """The digest of what a browse page shows: the templates' digest and the browse context (the same for every
    page: hashed once a run), then the page's directory and subdirectories (JSON), then each package's
    `page_digest` (a fixed size) and, when mirrors are chosen a file at a time, its webseeds (JSON)."""

    def __init__(self, templates: str, context: Mapping[str, Any]) -> None:
        self._webseeds_for = context["webseeds_for"]
        fixed = {key: context[key] for key in BROWSE_CONTEXT if key != "webseeds_for"}
        self._prefix = hashlib.sha256(_json_bytes([templates, fixed]))

    def __call__(self, directory: str, subdirs: Sequence[str], packages: Iterable[tuple[str, bytes]]) -> str:
        """`packages`: (path, `page_digest`) of each."""
        digest = self._prefix.copy()
        digest.update(_json_bytes([directory, list(subdirs)]))
        webseeds_for = self._webseeds_for
        for path, shown in packages:
            digest.update(shown)
            if webseeds_for is not None:
                digest.update(_webseeds_json(tuple(webseeds_for(path))))  # tuple(): the same tuple when it is one
        return digest.hexdigest()


@lru_cache(maxsize=4096)
def _webseeds_json(bases: tuple[str, ...]) -> bytes:
    """`_json_bytes(list(bases))` of a set of webseeds: a few sets, a million files."""
    return _json_bytes(list(bases))


_JSON = json.JSONEncoder(ensure_ascii=False, default=list)  # one encoder: json.dumps with options makes one a call


def _json_bytes(document: object) -> bytes:
    return _JSON.encode(document).encode("utf-8")


def _page_packages(
    records: Sequence[PackageRecord], rows: Sequence[int], page_digests: FixedColumn | None
) -> Iterator[tuple[str, bytes]]:
    """(path, `page_digest`) of the records at `rows`: read, not made, when the build kept them."""
    if page_digests is not None and isinstance(records, PackageRecords):
        paths = records.files.paths
        for row in rows:
            yield paths[row], page_digests[row]
        return
    for row in rows:
        record = records[row]
        yield record.path, page_digest(package_json(record), record.description)


def iter_pages(listing: ListingInput, unchanged: Callable[[str, str], bool] | None = None) -> Iterator[Page]:
    """Every listing object as a Page; with `unchanged`, a browse page it vouches for is not rendered. A
    page's records are made (and checked) when it is rendered, once."""
    checked = _checked(listing, records=False)
    env = make_environment(listing.templates_dir, listing.compiled)
    where = listing.templates_dir
    records = _by_path(listing.records)
    example = example_package(records)
    has_mirrors = bool(checked.mirrors)
    common: dict[str, Any] = {
        "repo": listing.repo,
        "snapshot_format": listing.snapshot_format,
        "format_label": format_info(listing.snapshot_format).label,
        "suites_label": format_info(listing.snapshot_format).suites_label,
        "detached_signatures": format_info(listing.snapshot_format).detached_signatures,
        "public_url": checked.public_url,
        "pointer": listing.pointer,
        "fingerprint": checked.fingerprint,
        "webseeds": checked.webseeds,
        "webseeds_for": listing.webseeds_for,
        "package_count": len(records),
        "total_size": records.files.total_size()
        if isinstance(records, PackageRecords)
        else sum(r.size for r in records),
        "has_mirrors": has_mirrors,
        # Where browse pages link an Arch `.sig` (plain HTTP, no torrent): every webseed, or else the
        # mirror the recipe fetches it from.
        "signature_bases": checked.webseeds or tuple(b for b in (preferred_mirror(checked),) if b is not None),
    }
    front = {
        **common,
        **_FETCH_CONTEXT,
        "page_key": FRONT_KEY,
        "root": root_href(FRONT_KEY),
        "recipe": _recipe(env, listing, example, checked),
        "update_recipe": _update_recipe(env, listing, checked),
        "example": example,
        "flags": " ".join(aria2_flags(listing.dht_nodes)),
        "shards_example": shards_example(listing, checked),
        "mirrors": [MirrorLink(label=base, url=base + "/") for base in checked.webseeds],
        "mirror_count": len(checked.mirrors),
        "listed_count": len(listed_mirrors(checked.mirrors)),
        **_start_context(listing, checked, example),
        **_GIVE_BACK_CONTEXT,
        "give_back_key": GIVE_BACK_KEY,
        "give_back_url": join_url(checked.public_url, GIVE_BACK_KEY),
        "give_back_unit_urls": [join_url(checked.public_url, k) for k in (GIVE_BACK_SERVICE_KEY, GIVE_BACK_TIMER_KEY)],
    }
    yield _whole(make_artifact(FRONT_KEY, _page(env, FRONT_TEMPLATE, front, where)))
    yield _whole(make_artifact(RECIPE_KEY, front["recipe"].encode("utf-8")))
    if front["update_recipe"] is not None:
        yield _whole(make_artifact(UPDATE_KEY, front["update_recipe"].encode("utf-8")))
    yield from map(_whole, _give_back(env, listing, checked))

    browse_common = {key: common[key] for key in BROWSE_CONTEXT}
    inputs_of = _BrowseInputs(templates_digest(listing.templates_dir), browse_common) if unchanged is not None else None
    tree = _Tree(records.files.paths if isinstance(records, PackageRecords) else (r.path for r in records))
    for number, directory in enumerate(tree.dirs):
        key = browse_key(directory)
        subdirs = tree.subdirs(number)
        rows = tree.rows(number)
        inputs = None
        if unchanged is not None and inputs_of is not None:
            inputs = inputs_of(directory, subdirs, _page_packages(records, rows, listing.page_digests))
            if unchanged(key, inputs):
                yield Page(key, inputs, None)
                continue
        packages = list(records.at(rows)) if isinstance(records, PackageRecords) else [records[row] for row in rows]
        for record in packages:
            _check_record(record)
        page = {
            **browse_common,
            "page_key": key,
            "root": root_href(key),
            "dir": directory,
            "crumbs": _crumbs(listing.repo, directory),
            "subdirs": _Subdirs(subdirs),
            "packages": packages,
        }
        yield Page(key, inputs, make_artifact(key, _page(env, BROWSE_TEMPLATE, page, where)))

    if has_mirrors:
        lists, list_artifacts = _mirror_lists(listing, checked)
        yield from map(_whole, list_artifacts)
        document = mirrors_document(listing, checked.mirrors, checked.snapshot_time)
        yield _whole(
            make_artifact(MIRRORS_JSON_KEY, (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8"))
        )
        counts = {s: sum(1 for r in checked.mirrors if r.status == s) for s in STATUS_ORDER}
        page = {
            **common,
            "page_key": MIRRORS_KEY,
            "root": root_href(MIRRORS_KEY),
            "rows": sorted(checked.mirrors, key=_table_order),
            "lists": lists,
            "statuses": [(s, counts[s], STATUS_MEANING[s]) for s in STATUS_ORDER],
            "webseed_count": sum(1 for r in checked.mirrors if r.webseed),
            "snapshot_time": checked.snapshot_time,
            "suites": checked.suites,
            "components": checked.components or ("main",),
            "architectures": checked.architectures,
            "json_key": MIRRORS_JSON_KEY,
        }
        yield _whole(make_artifact(MIRRORS_KEY, _page(env, MIRRORS_TEMPLATE, page, where)))

    yield _whole(make_artifact(STYLE_KEY, _style(env, where)))


def client_artifacts(public_url: str, fingerprint: str) -> tuple[Artifact, ...]:
    """The apt method and the pacman XferCommand helper (`clients/`), with this publication's URL and
    key fingerprint written into their `PUBLICATION = ""` and `FINGERPRINT = ""` lines."""
    artifacts = []
    for key in CLIENT_KEYS:
        text = (CLIENTS_ROOT / key).read_text(encoding="utf-8")
        for name, value in (("PUBLICATION", public_url), ("FINGERPRINT", fingerprint)):
            line = f'\n{name} = ""  #'
            if text.count(line) != 1:
                raise ConfigError(f'{CLIENTS_ROOT / key}: no single line starting {name} = ""')
            text = text.replace(line, f"\n{name} = {json.dumps(value)}  #")
        artifacts.append(make_artifact(key, text.encode("utf-8")))
    return tuple(artifacts)


def _whole(artifact: Artifact) -> Page:
    return Page(artifact.key, None, artifact)


# A page is joined and encoded this many template pieces at a time. The million-file bench's pool/main/r lists
# ~75,000 subdirectories: ~5.6 MB of HTML from ~370,000 pieces, which joined at once (the pieces, the text, its
# copies) took ~27 MB beside the run, the peak of its memory.
_PAGE_PIECES = 4096


def _page(env: jinja2.Environment, template: str, context: dict[str, Any], where: Path | None) -> bytes:
    """The page's UTF-8 bytes, ending in exactly one newline (as `_render(...).rstrip("\\n") + "\\n"`)."""
    try:
        return _page_bytes(env.get_template(template), context)
    except jinja2.TemplateError as exc:
        raise _template_error(template, exc, where) from exc


def _page_bytes(template: jinja2.Template, context: dict[str, Any]) -> bytes:
    try:
        # what Template.render does, but for joining every piece at once (its `generate` adds ~2 µs a page); the
        # context is a page's own new dict, which `new_context` copies into its own: no copy of it here first
        pieces = template.root_render_func(template.new_context(context))
        batch = list(itertools.islice(pieces, _PAGE_PIECES))
        if len(batch) < _PAGE_PIECES:  # nearly every page: all its pieces at once
            return ("".join(batch).rstrip("\n") + "\n").encode("utf-8")
        page = bytearray()
        while batch:
            page += "".join(batch).encode("utf-8")
            batch = list(itertools.islice(pieces, _PAGE_PIECES))
    except Exception:
        template.environment.handle_exception()  # raises it again, its traceback in template lines, as render does
    while page.endswith(b"\n"):
        del page[-1]
    page += b"\n"
    return bytes(page)


def _style(env: jinja2.Environment, where: Path | None) -> bytes:
    """The style sheet, copied as is (not a template), the operator's first."""
    assert env.loader is not None
    try:
        source, _, _ = env.loader.get_source(env, STYLE_TEMPLATE)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"{STYLE_TEMPLATE}: not found in {where} or {BUILTIN_TEMPLATES}") from exc
    return source.encode("utf-8")
