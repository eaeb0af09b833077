"""`invoke verify`: audit a publication strictly as an end user sees it, over HTTP only.

Nothing here reads the destination directly or trusts the operator's machine: the audit GETs
`latest.asc` from the public URL, checks it with gpgv against a pinned key, and follows only what the
signed documents name (DESIGN sections 4-5, the client rules of notes/security-and-reliability.md):

1. the pointer (`mirrorseed-pointer/3`, docs/sharded-index.md): pinned VALIDSIG fingerprint, not expired,
   sequence not lower than the highest one seen (a small JSON state file, updated only when the whole
   audit passed), shards sorted by name and part, each part once, layout of the keys it gives; a
   `mirrorseed-pointer/1` or `/2` (an older publisher's, which current clients refuse) is a problem: the
   next release upgrades it (a `/2` is checked all the same);
2. every shard (each part of it): size and SHA-256 equal the pointer's, decompression capped at its `uncompressed_size`,
   the JSON's SHA-256, `format`/`repo`/`shard`, every record well-formed, sorted and unique; its
   torrent (infohash, one file `<h16>.json.zst`, pieces, url-list `<public>/index/shards/`) and that
   webseed's answer; its delta (size, SHA-256, and, when the shard it was made from is still in the
   destination, applied to that shard's JSON it gives this one; otherwise a note, not a problem);
3. every package of every shard, once (by path), `.torrent` (infohash, name, length, piece size,
   `created by`, directory url-list) and `.meta4` (size, sha-256, pieces, mirror URLs, torrent
   metaurl), against its shard's header, fetched by a small thread pool;
4. a deterministic sample of webseed URLs: HEAD (200, Content-Length) and one ranged piece whose
   SHA-1 must equal the torrent's.

Every read is bounded (pipeline.http): never more than the size a signed document announces plus one
byte, a fixed cap for documents nothing announces (pointer, torrents, metalinks), `timeout` per
network read, and a total deadline per request: connect, status line and headers within 3 x timeout,
the whole response within 3 x timeout plus its byte cap at MIN_RATE (a server trickling its headers
or body is cut off there, "too slow: ...").
Problems are collected, one line each naming the URL, never raised; only a bad *setting* (missing
keyring, malformed fingerprint, unreadable state file) raises ConfigError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import zstandard

from pipeline import bencode
from pipeline.config import Settings, user_cache_dir
from pipeline.errors import ConfigError, SigningError, StorageError
from pipeline.hashing import piece_size_for
from pipeline.http import Client, HttpError, Response
from pipeline.index import (
    DELTA_MAX_BYTES,
    INDEX_FORMAT,
    LEGACY_POINTER_FORMAT,
    MAX_SEQUENCE,
    POINTER_FORMAT,
    UNPARTED_POINTER_FORMAT,
    apply_delta,
    decode_pointer,
    decompress_index,
    parse_rfc3339,
)
from pipeline.jsondoc import loads_strict
from pipeline.model import PackageRecord, Pointer, ShardRef
from pipeline.objects import POINTER_KEY, POINTER_MAX_BYTES, SHARDS_PREFIX, SIGNING_KEY_GPG, shard_key
from pipeline.signing import verify_signed_message
from pipeline.urls import join_url, quote_path, webseed_dir_url

CREATED_BY = "mirrorseed"
METALINK_NS = "urn:ietf:params:xml:ns:metalink"

MAX_POINTER_BYTES = POINTER_MAX_BYTES  # latest.asc
MAX_SIGNATURE_BYTES = 1024 * 1024  # a detached signature: ~100-600 bytes
MAX_KEY_BYTES = 1024 * 1024  # signing-key.gpg
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # any torrent or metalink, whatever its record says
# The previous shard a delta was made from: no signed document gives its size any more, but the publisher
# makes deltas only from shards whose JSON is at most DELTA_MAX_BYTES, which compresses to less.
MAX_OLD_SHARD_BYTES = DELTA_MAX_BYTES
WORKERS = 8
# The slowest transfer rate a request may average before its deadline (slow-retrieval attacks): each
# request gets 3 x timeout for connect, status line and headers, and in all 3 x timeout plus its byte
# cap at this rate; every single read also has `timeout`.
MIN_RATE = 256 * 1024
MAX_REDIRECTS = 10  # as many as urllib follows, which users' scripts and browsers match or exceed
USER_AGENT = "mirrorseed-verify"

_DIGEST = 20
_FPR_RE = re.compile(r"[0-9A-F]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_INFOHASH_RE = re.compile(r"[0-9a-f]{40}")
_TORRENT_NAME_RE = re.compile(r"[0-9a-f]{16}\.torrent")
_DELTA_NAME_RE = re.compile(r"([0-9a-f]{16})\.from-([0-9a-f]{16})\.zst")
_SHARD_DOC_KEYS = frozenset({"format", "repo", "shard", "webseeds", "trackers", "dht_nodes", "packages"})


# --- public API -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifySpec:
    """What to audit, with which pinned key, and where the highest sequence seen is kept."""

    public_url: str  # the destination's HTTP(S) base, as users are given it
    keyring: Path  # binary public keyring (gpgv), e.g. the user's saved signing-key.gpg
    fingerprint: str | None = None  # pinned primary fingerprint; None: the keyring's only primary key
    state_file: Path | None = None  # default: default_state_file(public_url)
    sample: int = 20  # packages whose webseed URLs are probed (evenly spaced in path order)
    timeout: float = 10.0  # seconds per network read; 3x: a request's headers; plus size/MIN_RATE: all of it
    # release's rule: every package torrent names a webseed (url-list) unless published with --allow-peer-only
    allow_peer_only: bool = False
    now: datetime | None = None  # aware; default: the current time


@dataclass(frozen=True)
class VerifyReport:
    """The audit's outcome: every problem found (one line each), what was checked, the sequence seen."""

    problems: tuple[str, ...]
    checked: dict[str, int]
    sequence: int | None
    notes: tuple[str, ...] = ()  # what could not be checked and is no failure (a delta whose base aged out)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """`OK: sequence N, S shards, D deltas applied, P packages, T torrents, M metalinks, W webseed probes`,
        or the problem count."""
        counts = (
            f"{self.checked.get('shards', 0)} shards, {self.checked.get('deltas', 0)} deltas applied, "
            f"{self.checked.get('packages', 0)} packages, {self.checked.get('torrents', 0)} torrents, "
            f"{self.checked.get('metalinks', 0)} metalinks, {self.checked.get('webseed_probes', 0)} webseed probes"
        )
        if self.ok:
            return f"OK: sequence {self.sequence}, {counts}"
        count = len(self.problems)
        seen = "" if self.sequence is None else f"sequence {self.sequence}, "
        return f"FAILED: {count} problem{'s' if count != 1 else ''} ({seen}{counts})"

    def lines(self) -> list[str]:
        """What the CLI prints on stdout: the OK line, or one line per problem; then the notes."""
        return [self.summary(), *self.notes] if self.ok else [*self.problems, *self.notes]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sequence": self.sequence,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "checked": dict(self.checked),
        }


def default_state_file(public_url: str) -> Path:
    """`$XDG_CACHE_HOME/mirrorseed/verify-<host>.json` (`<host>_<port>` when the URL has a port)."""
    parts = urlsplit(public_url)
    host = (parts.hostname or "unknown").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    label = host if port is None else f"{host}_{port}"
    label = re.sub(r"[^A-Za-z0-9._-]", "_", label)
    return user_cache_dir() / f"verify-{label}.json"


def verify_spec(settings: Settings) -> VerifySpec:
    """What `invoke verify` audits, from the same settings (file < environment < flags) release reads."""
    if not settings.public_url or settings.verify_keyring is None:
        raise ConfigError("verify needs --public-url URL and --keyring FILE (the publication's signing-key.gpg)")
    return VerifySpec(
        public_url=settings.public_url,
        keyring=settings.verify_keyring,
        fingerprint=settings.verify_fingerprint,
        state_file=settings.verify_state,
        sample=settings.verify_sample,
        timeout=settings.verify_timeout,
        allow_peer_only=settings.allow_peer_only,
    )


def verify_publication(spec: VerifySpec) -> VerifyReport:
    """Audit the publication at `spec.public_url` as a user would; see the module docstring.

    Raises ConfigError only for bad settings; everything wrong with the publication is a problem line.
    The state file is written (highest sequence) only when no problem was found.
    """
    return _Audit(spec).run()


# --- HTTP -----------------------------------------------------------------------------------------


class _Http:
    """Bounded GETs and HEADs as the audit needs them (pipeline.http): exact bodies, one expected status."""

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ConfigError(f"timeout {timeout!r}: must be a positive number of seconds")
        self.timeout = timeout
        # Redirects are followed as users' clients do (CDNs use them), keeping Range and HEAD.
        self.client = Client(user_agent=USER_AGENT, max_redirects=MAX_REDIRECTS)

    def request(
        self,
        url: str,
        *,
        limit: int,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        expect: int | None = 200,
    ) -> Response:
        """The response to `method url`; any status but `expect` (None: any status is returned), a transport
        error, more than `limit` body bytes, a body shorter than announced, or missing a deadline raise
        HttpError."""
        return self.client.request(
            method,
            url,
            max_body=limit,
            timeout=3 * self.timeout + limit / MIN_RATE,
            headers_timeout=3 * self.timeout,
            idle=self.timeout,
            headers=headers,
            exact=True,
            expect=expect,
        )


# --- torrents -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Torrent:
    meta: dict[bytes, object]
    info: dict[bytes, object]
    infohash: str


def _parse_torrent(data: bytes) -> _Torrent:
    decoded = bencode.decode_dict(data)
    info = decoded.value.get(b"info")
    if not isinstance(info, dict) or decoded.info is None:
        raise ValueError("no info dictionary")
    return _Torrent(decoded.value, info, hashlib.sha1(decoded.info).hexdigest())


def _text(value: object) -> str | None:
    if not isinstance(value, bytes):
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _url_list(meta: dict[bytes, object]) -> list[str | None]:
    raw = meta.get(b"url-list")
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [_text(item) for item in items]


def _announced(meta: dict[bytes, object]) -> list[str | None]:
    urls: list[str | None] = []
    if b"announce" in meta:
        urls.append(_text(meta[b"announce"]))
    tiers = meta.get(b"announce-list")
    if tiers is not None:
        if not isinstance(tiers, list):
            return [*urls, None]
        for tier in tiers:
            urls.extend(_text(u) for u in tier) if isinstance(tier, list) else urls.append(None)
    return urls


def _common_torrent_problems(
    torrent: _Torrent, trackers: Sequence[str] | None, nodes: Sequence[str] | None = None
) -> list[str]:
    """`created by`, no `creation date`, announce URLs among `trackers` and DHT nodes among `nodes` (the
    index's; None: not checked), pieces shape."""
    problems = []
    created_by = torrent.meta.get(b"created by")
    if created_by != CREATED_BY.encode():
        problems.append(f"'created by' is {_shown(created_by)}, expected {CREATED_BY!r}")
    if b"creation date" in torrent.meta:
        problems.append("has a 'creation date' (mirrorseed torrents have none: same input, same bytes)")
    foreign = [u for u in _announced(torrent.meta) if trackers is not None and u not in trackers]
    if foreign:
        problems.append(f"announces {_shown(foreign[0])}, which is not one of the index's trackers")
    stray = [node for node in _nodes(torrent.meta) if nodes is not None and node not in nodes]
    if stray:
        problems.append(f"names the DHT node {stray[0]!r}, which is not one of the index's dht_nodes")
    piece_length = _int(torrent.info.get(b"piece length"))
    pieces = torrent.info.get(b"pieces")
    if piece_length is None or piece_length <= 0:
        problems.append("'piece length' is missing or not a positive integer")
    if not isinstance(pieces, bytes) or len(pieces) % _DIGEST:
        problems.append("'pieces' is not a string of 20-byte SHA-1 digests")
    return problems


def _nodes(meta: dict[bytes, object]) -> list[str]:
    """The torrent's BEP 5 `nodes` as HOST:PORT ([IPv6]:PORT); an entry of another shape as its repr."""
    found = meta.get(b"nodes")
    entries = found if isinstance(found, list) else [] if found is None else [found]
    shown = []
    for entry in entries:
        pair = entry if isinstance(entry, list) and len(entry) == 2 else None
        host = _text(pair[0]) if pair is not None and isinstance(pair[0], bytes) else None
        port = _int(pair[1]) if pair is not None and host is not None else None
        if host is None or port is None:
            shown.append(repr(entry))
        else:
            shown.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return shown


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        text = _text(value)
        return repr(text) if text is not None else repr(value[:60])
    return "missing" if value is None else repr(value)


def _piece_hashes(data: bytes, piece_size: int) -> bytes:
    return b"".join(hashlib.sha1(data[o : o + piece_size]).digest() for o in range(0, len(data), piece_size))


# --- gpg key listing ------------------------------------------------------------------------------


def _primary_fingerprints(keyring: Path) -> list[str]:
    """The primary-key fingerprints in a keyring file (`gpg --show-keys`, a throwaway GNUPGHOME)."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise SigningError("gpg: not found on PATH: install GnuPG 2.2 or later (apt-get install gnupg gpgv)")
    with tempfile.TemporaryDirectory(prefix="msk") as home:
        cmd = [gpg, "--homedir", home, "--batch", "--no-tty", "--no-autostart", "--with-colons", "--show-keys"]
        try:
            proc = subprocess.run([*cmd, str(keyring)], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SigningError(f"gpg could not run: {err}") from err
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        raise SigningError(f"{keyring}: not an OpenPGP keyring ({lines[-1] if lines else 'gpg failed'})")
    found: list[str] = []
    after_pub = False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            found.append(fields[9].upper())
            after_pub = False
        elif fields[0] in ("sub", "ssb", "sec"):
            after_pub = fields[0] == "sec"
    return list(dict.fromkeys(found))


def _normalize_fingerprint(text: str) -> str:
    fpr = text.replace(" ", "").upper().removeprefix("0X")
    if not _FPR_RE.fullmatch(fpr):
        raise ConfigError(f"--fingerprint {text!r}: not a 40-hex OpenPGP fingerprint (gpg --fingerprint shows it)")
    return fpr


# --- state ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    sequence: int
    repo: str | None


def _read_state(path: Path, public_url: str) -> _Seen | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the verify state file: {err.strerror}") from err
    try:
        doc = loads_strict(raw, what=str(path))
    except (UnicodeDecodeError, ValueError):
        doc = None
    sequence = doc.get("sequence") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or isinstance(sequence, bool)
        or not isinstance(sequence, int)
        or not 1 <= sequence <= MAX_SEQUENCE
        or not isinstance(doc.get("public_url"), str)
        or not isinstance(doc.get("repo", ""), str)
    ):
        raise ConfigError(
            f'{path}: not a verify state file ({{"public_url", "sequence"}}): '
            "restore it, or delete it to start over (rollback protection restarts from the next pointer)"
        )
    if doc["public_url"].rstrip("/") != public_url:
        raise ConfigError(
            f"{path}: holds the state of {doc['public_url']}, not of {public_url}: "
            "pass --state-file with a file of its own for this publication"
        )
    return _Seen(sequence, doc.get("repo"))


def _write_state(path: Path, public_url: str, pointer: Pointer, seen: _Seen | None) -> None:
    sequence = max(pointer.sequence, seen.sequence if seen else 0)
    doc = {"public_url": public_url, "repo": pointer.repo, "sequence": sequence}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            json.dump(doc, handle, sort_keys=True)
            handle.write("\n")
        except BaseException:
            os.unlink(handle.name)
            raise
    try:
        os.replace(handle.name, path)
    except OSError:
        os.unlink(handle.name)
        raise


# --- the audit ------------------------------------------------------------------------------------


@dataclass
class _PackageResult:
    problems: list[str] = field(default_factory=list)
    pieces: bytes | None = None  # the torrent's piece SHA-1s, when its infohash matched the index
    published_bases: list[str] = field(default_factory=list)  # public URLs the documents point users to
    url_list: tuple[str, ...] | None = None  # the torrent's webseed directory URLs, when it was read


@dataclass(frozen=True)
class _Index:
    """One usable shard: its URL, records and header."""

    url: str
    records: tuple[PackageRecord, ...]
    webseeds: tuple[str, ...]
    trackers: tuple[str, ...]
    dht_nodes: tuple[str, ...] = ()


class _Audit:
    def __init__(self, spec: VerifySpec) -> None:
        self.spec = spec
        self.base = _check_base(spec.public_url)
        now = spec.now or datetime.now(UTC)
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("VerifySpec.now must be an aware datetime")
        self.now = now
        self.http = _Http(spec.timeout)
        if spec.sample < 0:
            raise ConfigError(f"--sample {spec.sample}: must be 0 or more")
        if not spec.keyring.is_file():
            raise ConfigError(
                f"{spec.keyring}: keyring not found: save the publication's signing-key.gpg (binary) "
                "from a source you trust and pass it with --keyring"
            )
        self.fingerprint = self._pinned()
        self.state_path = spec.state_file or default_state_file(self.base)
        self.seen = _read_state(self.state_path, self.base)
        self.problems: list[str] = []
        self.checked: dict[str, int] = {
            "pointer": 0,
            "shards": 0,
            "shard_torrents": 0,
            "shard_webseed_probes": 0,
            "deltas": 0,  # applied to the shard they were made from and found to give the shard
            "deltas_not_checkable": 0,  # that shard is no longer in the destination
            "packages": 0,
            "torrents": 0,
            "metalinks": 0,
            "webseed_probes": 0,
        }
        self.notes: list[str] = []
        self.published_bases: list[str] = []
        self.url_lists: dict[str, tuple[str, ...]] = {}  # path -> the webseed directory URLs its torrent names

    def _pinned(self) -> str:
        if self.spec.fingerprint is not None:
            return _normalize_fingerprint(self.spec.fingerprint)
        try:
            primaries = _primary_fingerprints(self.spec.keyring)
        except SigningError as err:
            raise ConfigError(str(err)) from err
        if len(primaries) != 1:
            raise ConfigError(
                f"{self.spec.keyring}: holds {len(primaries)} primary keys ({', '.join(primaries) or 'none'}): "
                "pass the one to pin with --fingerprint"
            )
        return primaries[0]

    def url(self, key: str) -> str:
        return join_url(self.base, key)

    def report(self, sequence: int | None) -> VerifyReport:
        problems = tuple(_one_line(problem) for problem in self.problems)
        notes = tuple(_one_line(note) for note in self.notes)
        return VerifyReport(problems=problems, checked=dict(self.checked), sequence=sequence, notes=notes)

    # -- steps ------------------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        try:
            return self._run()
        finally:
            self.http.client.close()

    def _run(self) -> VerifyReport:
        pointer = self.check_pointer()
        if pointer is None:
            return self.report(None)
        shards = self.check_shards(pointer)
        self.check_signing_key()
        packages = self.packages_of(shards)
        pieces = self.check_packages(packages)
        self.check_published_bases()
        self.probe_webseeds(packages, pieces)
        if not self.problems:
            try:
                _write_state(self.state_path, self.base, pointer, self.seen)
            except OSError as err:
                self.problems.append(f"{self.state_path}: cannot write the verify state file: {err.strerror or err}")
        return self.report(pointer.sequence)

    def check_pointer(self) -> Pointer | None:
        url = self.url(POINTER_KEY)
        self.checked["pointer"] = 1
        try:
            signed = self.http.request(url, limit=MAX_POINTER_BYTES).body
        except HttpError as err:
            self.problems.append(f"{url}: {err}")
            return None
        try:
            payload = verify_signed_message(signed, keyring=self.spec.keyring, fingerprint=self.fingerprint)
        except SigningError as err:
            self.problems.append(f"{url}: {err}; nothing else was checked")
            return None
        try:
            pointer = decode_pointer(payload)
        except StorageError as err:
            self.problems.append(f"{url}: {str(err).removeprefix(POINTER_KEY + ': ')}")
            return None
        if pointer.legacy_keys:
            self.problems.append(
                f"{url}: {LEGACY_POINTER_FORMAT}: published by an older version of mirrorseed (one whole "
                "index, not shards), which this verify does not check; the next `invoke release` upgrades it"
            )
            return None
        if pointer.outdated:
            self.problems.append(
                f"{url}: {UNPARTED_POINTER_FORMAT}: published by an older version of mirrorseed, which the current "
                f"clients refuse (they read {POINTER_FORMAT}); the next `invoke release` upgrades it"
            )
        expires = parse_rfc3339(pointer.expires)
        if self.now >= expires:
            self.problems.append(
                f"{url}: expired at {pointer.expires} (now {self.now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}): "
                "users refuse it; the publisher must re-sign the pointer (run release on schedule)"
            )
        if parse_rfc3339(pointer.generated) > expires:
            self.problems.append(f"{url}: generated {pointer.generated} is after expires {pointer.expires}")
        if self.seen is not None and pointer.sequence < self.seen.sequence:
            self.problems.append(
                f"{url}: sequence {pointer.sequence} is lower than {self.seen.sequence}, already seen "
                f"({self.state_path}): rollback or a stale cached copy; users refuse it"
            )
        if self.seen is not None and self.seen.repo and pointer.repo != self.seen.repo:
            self.problems.append(
                f"{url}: repo {pointer.repo!r}, but this URL published repo {self.seen.repo!r} before "
                f"({self.state_path}): a pointer of another repository?"
            )
        for shard in pointer.shards:
            self.problems += [f"{url}: shards[{shard.label!r}]: {p}" for p in _layout_problems(shard)]
        return pointer

    # -- the shards ---------------------------------------------------------------------------------

    def check_shards(self, pointer: Pointer) -> list[_Index]:
        """Every shard the pointer names (object, JSON, records, torrent, delta); the usable ones."""
        self.checked["shards"] = len(pointer.shards)
        usable = []
        for shard in pointer.shards:
            index = self.check_shard(pointer, shard)
            if index is not None:
                usable.append(index)
        return usable

    def check_shard(self, pointer: Pointer, shard: ShardRef) -> _Index | None:
        url = self.url(shard.path)
        data: bytes | None = None
        try:
            fetched = self.http.request(url, limit=shard.size).body
        except HttpError as err:
            self.problems.append(f"{url}: {err}")
        else:
            if len(fetched) != shard.size:
                self.problems.append(f"{url}: {len(fetched)} bytes, the signed pointer says {shard.size}")
            elif (digest := hashlib.sha256(fetched).hexdigest()) != shard.sha256:
                self.problems.append(
                    f"{url}: SHA-256 {digest}, the signed pointer says {shard.sha256}: the shard was altered"
                )
            else:
                data = fetched
        index: _Index | None = None
        if data is not None:
            index = self.shard_records(url, data, pointer, shard)
        self.check_shard_torrent(shard, data, index)
        if shard.delta is not None:
            self.check_delta(shard)
        if index is None:
            self.problems.append(f"{url}: not usable, so no package of shard {shard.label!r} was checked")
        return index

    def shard_records(self, url: str, data: bytes, pointer: Pointer, shard: ShardRef) -> _Index | None:
        """The shard's JSON (size and SHA-256 against the pointer) parsed and checked; None if unusable."""
        try:
            raw = decompress_index(data, uncompressed_size=shard.uncompressed_size)
        except StorageError as err:
            self.problems.append(f"{url}: {err}")
            return None
        if (digest := hashlib.sha256(raw).hexdigest()) != shard.uncompressed_sha256:
            self.problems.append(
                f"{url}: its JSON has SHA-256 {digest}, the signed pointer says {shard.uncompressed_sha256}"
            )
            return None
        try:
            doc = loads_strict(raw, what="index")
        except ValueError as err:
            self.problems.append(f"{url}: {err}")
            return None
        if not isinstance(doc, dict):
            self.problems.append(f"{url}: index: not a JSON object")
            return None
        return self.index_records(url, doc, pointer, shard)

    def check_shard_torrent(self, shard: ShardRef, data: bytes | None, index: _Index | None) -> None:
        """The shard's torrent against the signed pointer (infohash), the shard (one file, its name, length and
        pieces) and the shard's header (trackers, nodes; when the shard could be read); its webseed answers."""
        url = self.url(shard.torrent)
        try:
            raw = self.http.request(url, limit=MAX_DOCUMENT_BYTES).body
            torrent = _parse_torrent(raw)
        except HttpError as err:
            self.problems.append(f"{url}: {err}")
            return
        except ValueError as err:
            self.problems.append(f"{url}: not a valid torrent ({err})")
            return
        self.checked["shard_torrents"] += 1
        if torrent.infohash != shard.infohash:
            self.problems.append(f"{url}: infohash {torrent.infohash}, the signed pointer says {shard.infohash}")
            return
        problems = _common_torrent_problems(
            torrent, None if index is None else index.trackers, None if index is None else index.dht_nodes
        )
        if hashlib.sha256(raw).hexdigest()[:16] != PurePosixPath(shard.torrent).name.removesuffix(".torrent"):
            problems.append("its SHA-256 does not begin with the digest in its name (altered after publishing?)")
        name = PurePosixPath(shard.path).name
        info = torrent.info
        if _text(info.get(b"name")) != name:
            problems.append(f"name is {_shown(info.get(b'name'))}, expected {name!r}")
        if b"files" in info or _int(info.get(b"length")) != shard.size:
            problems.append(f"not a single-file torrent of {shard.size} bytes (length {_shown(info.get(b'length'))})")
        else:
            piece_length = _int(info.get(b"piece length")) or 0
            if data is not None and piece_length > 0 and _piece_hashes(data, piece_length) != info.get(b"pieces"):
                problems.append("its piece hashes do not match the shard")
        wanted = self.url(SHARDS_PREFIX)
        seeds = _url_list(torrent.meta)
        if not seeds:
            problems.append("no url-list: without peers nobody can fetch the shard through it")
        for seed in seeds:
            if seed is None or not seed.endswith("/" + SHARDS_PREFIX):
                problems.append(f"url-list entry {_shown(seed)} is not <public url>/{SHARDS_PREFIX}")
                continue
            if seed != wanted:
                self.published_bases.append(seed.removesuffix("/" + SHARDS_PREFIX))
            probe = seed + quote(name, safe="")
            self.checked["shard_webseed_probes"] += 1
            try:
                head = self.http.request(probe, limit=0, method="HEAD")
            except HttpError as err:
                problems.append(f"its webseed {probe}: {err}")
                continue
            if head.headers.get("content-length") != str(shard.size):
                problems.append(
                    f"its webseed {probe}: Content-Length {head.headers.get('content-length')}, expected {shard.size}"
                )
        self.problems.extend(f"{url}: {p}" for p in problems)

    def check_delta(self, shard: ShardRef) -> None:
        """The delta against the pointer (size, SHA-256) and, when the previous shard it was made from is still
        in the destination, applied to that shard's JSON: it must give this shard's JSON."""
        delta = shard.delta
        assert delta is not None
        url = self.url(delta.path)
        try:
            data = self.http.request(url, limit=delta.size).body
        except HttpError as err:
            self.problems.append(f"{url}: {err}")
            return
        if len(data) != delta.size or hashlib.sha256(data).hexdigest() != delta.sha256:
            self.problems.append(
                f"{url}: size or SHA-256 differs from the signed pointer's delta of shard {shard.label!r}: "
                "the delta was altered"
            )
            return
        match = _DELTA_NAME_RE.fullmatch(PurePosixPath(delta.path).name)
        if match is None:
            return  # named in check_pointer
        old_url = self.url(f"{SHARDS_PREFIX}{match.group(2)}.json.zst")
        try:
            old = self.http.request(old_url, limit=MAX_OLD_SHARD_BYTES, expect=None)
        except HttpError as err:
            self.problems.append(f"{old_url} (the shard the delta {url} was made from): {err}")
            return
        if old.status in (404, 410):
            self.notes.append(
                f"{url}: not checkable: the shard it was made from ({old_url}) is no longer in the destination"
            )
            self.checked["deltas_not_checkable"] += 1
            return
        if old.status != 200:
            self.problems.append(f"{old_url} (the shard the delta {url} was made from): HTTP {old.status}")
            return
        problem = _delta_problem(old.body, data, shard, match.group(2))
        if problem is not None:
            self.problems.append(f"{url}: {problem}")
        else:
            self.checked["deltas"] += 1

    def index_records(self, url: str, doc: dict[str, Any], pointer: Pointer, shard: ShardRef) -> _Index | None:
        problems: list[str] = []
        if doc.get("format") != INDEX_FORMAT:
            problems.append(f"format is {doc.get('format')!r}, expected {INDEX_FORMAT!r}")
        if doc.get("repo") != pointer.repo:
            problems.append(f"repo is {doc.get('repo')!r}, the signed pointer says {pointer.repo!r}")
        if doc.get("shard") != shard.name:
            problems.append(f"shard is {doc.get('shard')!r}, the signed pointer names it {shard.name!r}")
        unknown = sorted(set(doc) - _SHARD_DOC_KEYS)
        if unknown:
            problems.append(f"unexpected keys {unknown}")
        webseeds, trackers, packages = doc.get("webseeds"), doc.get("trackers"), doc.get("packages")
        nodes = doc.get("dht_nodes", [])
        for key, value in (("webseeds", webseeds), ("trackers", trackers), ("dht_nodes", nodes)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"'{key}' is not a list of strings")
        if isinstance(webseeds, list):
            problems += [f"webseed {w!r} is not an http(s) URL" for w in webseeds if not _is_http(w)]
        if not isinstance(packages, list):
            problems.append("'packages' is not a list")
        elif len(packages) != shard.packages:
            problems.append(f"{len(packages)} packages, the signed pointer says {shard.packages}")
        if problems or not isinstance(packages, list):
            self.problems.extend(f"{url}: {p}" for p in problems)
            return None
        records: list[PackageRecord] = []
        previous: str | None = None
        for number, item in enumerate(packages):
            record_problems = _record_problems(item)
            where = f"package {number}" + (f" ({item['path']!r})" if isinstance(item, dict) and "path" in item else "")
            if record_problems:
                problems.extend(f"{where}: {p}" for p in record_problems)
                continue
            record = PackageRecord.from_json(item)
            if previous is not None and record.path <= previous:
                problems.append(f"{where}: not sorted by path, or listed twice")
            previous = record.path
            records.append(record)
        self.problems.extend(f"{url}: {p}" for p in problems)
        return _Index(url, tuple(records), tuple(webseeds or ()), tuple(trackers or ()), tuple(nodes or ()))

    def packages_of(self, shards: Sequence[_Index]) -> list[tuple[PackageRecord, _Index]]:
        """Every package once (by path, from the first shard listing it, sorted by path); a path two shards
        list with different records is a problem."""
        first: dict[str, tuple[PackageRecord, _Index]] = {}
        for index in shards:
            for record in index.records:
                seen = first.setdefault(record.path, (record, index))
                if seen[0] != record:
                    self.problems.append(
                        f"{index.url}: {record.path}: its record differs from the one in {seen[1].url}"
                    )
        return [first[path] for path in sorted(first)]

    def check_signing_key(self) -> None:
        url = self.url(SIGNING_KEY_GPG)
        try:
            data = self.http.request(url, limit=MAX_KEY_BYTES).body
        except HttpError as err:
            self.problems.append(f"{url}: {err}")
            return
        with tempfile.TemporaryDirectory(prefix="msk") as tmp:
            path = Path(tmp) / "key.gpg"
            path.write_bytes(data)
            try:
                primaries = _primary_fingerprints(path)
            except SigningError as err:
                self.problems.append(f"{url}: {str(err).removeprefix(str(path) + ': ')}")
                return
        if self.fingerprint not in primaries:
            self.problems.append(
                f"{url}: holds {', '.join(primaries) or 'no key'}, not the pinned key {self.fingerprint}: "
                "users who download it cannot verify the publication"
            )

    def check_packages(self, packages: Sequence[tuple[PackageRecord, _Index]]) -> dict[str, bytes]:
        """Every record's torrent and metalink (against the header of the shard it came from); returns the
        verified piece hashes by path."""
        records = [record for record, _ in packages]
        self.checked["packages"] = len(records)
        self.checked["torrents"] = sum(1 for r in records if r.torrent is not None)
        self.checked["metalinks"] = len(records)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="verify") as pool:
            results = list(pool.map(lambda job: self.check_package(*job), packages))
        pieces: dict[str, bytes] = {}
        for record, result in zip(records, results, strict=True):
            self.problems.extend(result.problems)
            self.published_bases.extend(result.published_bases)
            if result.pieces is not None:
                pieces[record.path] = result.pieces
            if result.url_list is not None:
                self.url_lists[record.path] = result.url_list
        return pieces

    def check_package(self, record: PackageRecord, index: _Index) -> _PackageResult:
        result = _PackageResult()
        cap = _document_cap(record)
        if record.torrent is not None:
            url = self.url(record.torrent)
            try:
                torrent = _parse_torrent(self.http.request(url, limit=cap).body)
            except HttpError as err:
                result.problems.append(f"{url}: {err}")
            except ValueError as err:
                result.problems.append(f"{url}: not a valid torrent ({err})")
            else:
                problems, result.pieces = _package_torrent_problems(
                    torrent, record, index, allow_peer_only=self.spec.allow_peer_only
                )
                result.problems.extend(f"{url}: {p}" for p in problems)
                result.url_list = tuple(seed for seed in _url_list(torrent.meta) if seed is not None)
        url = self.url(record.metalink)
        try:
            data = self.http.request(url, limit=cap).body
        except HttpError as err:
            result.problems.append(f"{url}: {err}")
            return result
        problems, base = _metalink_problems(
            data, record, index, result.pieces, allow_peer_only=self.spec.allow_peer_only
        )
        result.problems.extend(f"{url}: {p}" for p in problems)
        if base is not None and base != self.base:
            result.published_bases.append(base)
        return result

    def check_published_bases(self) -> None:
        counts: dict[str, int] = {}
        for base in self.published_bases:
            counts[base] = counts.get(base, 0) + 1
        for base, count in counts.items():
            self.problems.append(
                f"{self.base}/: {count} published document(s) send users to {base}/ instead (metalink torrent "
                "URLs, shard webseeds): audit the URL users are given, or fix the publisher's public_url"
            )

    def probe_webseeds(self, packages: Sequence[tuple[PackageRecord, _Index]], pieces: dict[str, bytes]) -> None:
        shard_of = {record.path: index for record, index in packages}
        candidates = [record for record, _ in packages if record.size > 0]
        chosen = _evenly_spaced(candidates, self.spec.sample)
        # each sampled package on the webseeds its torrent names (what users' clients use; a mirror the
        # publisher found not to hold a file is not in that file's url-list)
        jobs = [
            (record, seed)
            for record in chosen
            for seed in shard_of[record.path].webseeds
            if record.path not in self.url_lists or webseed_dir_url(seed, record.path) in self.url_lists[record.path]
        ]
        self.checked["webseed_probes"] = len(jobs)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="verify") as pool:
            results = list(pool.map(lambda job: self.probe(job[0], job[1], pieces.get(job[0].path)), jobs))
        for problems in results:
            self.problems.extend(problems)

    def probe(self, record: PackageRecord, seed: str, pieces: bytes | None) -> list[str]:
        url = join_url(seed, record.path)
        problems: list[str] = []
        try:
            head = self.http.request(url, limit=0, method="HEAD")
        except HttpError as err:
            return [f"{url}: HEAD: {err}"]
        length = head.headers.get("content-length")
        if length != str(record.size):
            problems.append(f"{url}: HEAD: Content-Length {length}, the index says {record.size}")
        if pieces is not None and record.piece_size:
            count = len(pieces) // _DIGEST
            number = int(record.sha256[:8], 16) % count  # deterministic, spread over the file
            first = number * record.piece_size
            last = min(record.size, first + record.piece_size) - 1
            try:
                part = self.http.request(
                    url, limit=last - first + 1, headers={"Range": f"bytes={first}-{last}"}, expect=206
                )
            except HttpError as err:
                hint = " (webseeds must honour Range requests)" if "expected 206" in str(err) else ""
                problems.append(f"{url}: Range bytes={first}-{last}: {err}{hint}")
            else:
                expected = pieces[number * _DIGEST : (number + 1) * _DIGEST]
                problems += _piece_problems(url, part, (first, last, number), record.size, expected)
        if record.signature is not None:
            sig = record.signature
            sig_url = join_url(seed, sig.path)
            try:
                body = self.http.request(sig_url, limit=sig.size).body
            except HttpError as err:
                problems.append(f"{sig_url}: {err}")
            else:
                if len(body) != sig.size or hashlib.sha256(body).hexdigest() != sig.sha256:
                    problems.append(f"{sig_url}: size or SHA-256 differs from the index's signature record")
        return problems


def _layout_problems(shard: ShardRef) -> list[str]:
    """Where the pointer says a shard's objects are, against the names docs/sharded-index.md gives them."""
    problems = []
    if shard.path != shard_key(shard.sha256):
        problems.append(f"path {shard.path}, expected {shard_key(shard.sha256)} for SHA-256 {shard.sha256}")
    torrent = PurePosixPath(shard.torrent)
    if not shard.torrent.startswith(SHARDS_PREFIX) or not _TORRENT_NAME_RE.fullmatch(torrent.name):
        problems.append(f"torrent {shard.torrent} is not {SHARDS_PREFIX}<16 hex digits>.torrent")
    if shard.delta is not None:
        match = _DELTA_NAME_RE.fullmatch(PurePosixPath(shard.delta.path).name)
        if not shard.delta.path.startswith(SHARDS_PREFIX) or match is None or match.group(1) != shard.sha256[:16]:
            problems.append(
                f"delta {shard.delta.path} is not {SHARDS_PREFIX}{shard.sha256[:16]}.from-<16 hex digits>.zst"
            )
    return problems


def _delta_problem(old: bytes, delta: bytes, shard: ShardRef, old16: str) -> str | None:
    """Why `delta` applied to the JSON of the compressed shard `old` (named by `old16`) does not give the
    JSON of `shard`, or None when it does."""
    assert shard.delta is not None
    if hashlib.sha256(old).hexdigest()[:16] != old16:
        return f"the shard it was made from, {SHARDS_PREFIX}{old16}.json.zst, does not hash to its name (altered?)"
    try:
        declared = zstandard.frame_content_size(old)
    except zstandard.ZstdError as err:
        return f"the shard it was made from is not a zstd frame ({err})"
    if not 0 <= declared <= DELTA_MAX_BYTES:
        return f"the shard it was made from declares {declared} bytes of JSON (at most {DELTA_MAX_BYTES} have deltas)"
    try:
        base = decompress_index(old, uncompressed_size=declared)
    except StorageError as err:
        return f"the shard it was made from: {err}"
    if hashlib.sha256(base).hexdigest() != shard.delta.from_sha256:
        return f"the JSON of the shard it was made from is not {shard.delta.from_sha256} that the pointer names"
    try:
        made = apply_delta(base, delta, uncompressed_size=shard.uncompressed_size)
    except StorageError as err:
        return f"applied to the previous shard: {str(err).removeprefix('index delta: ')}"
    if hashlib.sha256(made).hexdigest() != shard.uncompressed_sha256:
        return (
            f"applied to the previous shard it does not give the JSON of shard {shard.label!r} "
            f"({shard.uncompressed_sha256})"
        )
    return None


def _piece_problems(url: str, part: Response, piece: tuple[int, int, int], size: int, expected: bytes) -> list[str]:
    first, last, number = piece
    where = f"{url}: Range bytes={first}-{last}"
    content_range = part.headers.get("content-range")
    if content_range != f"bytes {first}-{last}/{size}":
        return [f"{where}: Content-Range {content_range!r}, expected 'bytes {first}-{last}/{size}'"]
    if len(part.body) != last - first + 1:
        return [f"{where}: {len(part.body)} bytes, expected {last - first + 1}"]
    got = hashlib.sha1(part.body).digest()
    if got != expected:
        return [
            f"{where}: SHA-1 {got.hex()}, the torrent's piece {number} says "
            f"{expected.hex()}: the mirror serves different bytes"
        ]
    return []


def _one_line(text: str) -> str:
    """Served text ends up in problem lines: escape control characters so each problem stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check_base(public_url: str) -> str:
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"--public-url {public_url!r}: give the http(s) URL the destination is readable at, "
            "without a query string, e.g. https://mirror.example/pub"
        )
    return public_url.rstrip("/")


def _is_http(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _evenly_spaced(items: Sequence[PackageRecord], count: int) -> list[PackageRecord]:
    """`count` items spread evenly over `items` (first and last included); all of them if fewer."""
    if count >= len(items):
        return list(items)
    if count <= 0:
        return []
    if count == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _document_cap(record: PackageRecord) -> int:
    """A torrent or metalink of this record holds ~60 bytes per piece plus URLs: cap generously."""
    if record.piece_size:
        pieces = math.ceil(record.size / record.piece_size)
        return min(MAX_DOCUMENT_BYTES, 1024 * 1024 + 100 * pieces)
    return 1024 * 1024


# --- record validation ----------------------------------------------------------------------------


def _relative_path(value: object) -> bool:
    if not isinstance(value, str) or not value or "\\" in value:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or unicodedata.normalize("NFC", value) != value:
        return False
    return all(part not in ("", ".", "..") for part in value.split("/"))


def _record_problems(item: object) -> list[str]:
    """Why an index entry is not a well-formed package record (DESIGN 5), or [] if it is."""
    if not isinstance(item, dict):
        return ["not an object"]
    missing = [
        k
        for k in ("path", "size", "sha256", "infohash", "piece_size", "torrent", "metalink", "magnet")
        if k not in item
    ]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems = []
    path, size = item["path"], item["size"]
    if not _relative_path(path):
        problems.append(f"path {path!r} is not a relative, '/'-separated NFC path")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return [*problems, f"size {size!r} is not a non-negative integer"]
    if not isinstance(item["sha256"], str) or not _SHA256_RE.fullmatch(item["sha256"]):
        problems.append("sha256 is not 64 lowercase hex digits")
    if not _relative_path(item["metalink"]):
        problems.append(f"metalink {item['metalink']!r} is not a relative path")
    nullable = ("infohash", "piece_size", "torrent", "magnet")
    if size == 0:
        problems += [
            f"{k} must be null for a zero-length file (no torrent can describe it)"
            for k in nullable
            if item[k] is not None
        ]
    else:
        infohash = item["infohash"]
        if not isinstance(infohash, str) or not _INFOHASH_RE.fullmatch(infohash):
            problems.append("infohash is not 40 lowercase hex digits")
        if item["piece_size"] != piece_size_for(size) or isinstance(item["piece_size"], bool):
            problems.append(
                f"piece_size {item['piece_size']!r}, DESIGN 5 gives {piece_size_for(size)} for {size} bytes"
            )
        if not _relative_path(item["torrent"]):
            problems.append(f"torrent {item['torrent']!r} is not a relative path")
        magnet = item["magnet"]
        if not isinstance(magnet, str) or not magnet.startswith("magnet:?") or f"xt=urn:btih:{infohash}" not in magnet:
            problems.append("magnet is not a magnet URI carrying its infohash")
    for key in ("name", "version", "arch"):
        if item.get(key) is not None and not isinstance(item[key], str):
            problems.append(f"{key} is not a string")
    signature = item.get("signature")
    if signature is not None and not (
        isinstance(signature, dict)
        and _relative_path(signature.get("path"))
        and isinstance(signature.get("size"), int)
        and not isinstance(signature.get("size"), bool)
        and signature["size"] >= 0
        and isinstance(signature.get("sha256"), str)
        and _SHA256_RE.fullmatch(signature["sha256"])
    ):
        problems.append("signature is not null or {path, size, sha256}")
    return problems


# --- package documents ----------------------------------------------------------------------------


def _package_torrent_problems(
    torrent: _Torrent, record: PackageRecord, index: _Index, *, allow_peer_only: bool = False
) -> tuple[list[str], bytes | None]:
    """Problems of one package's torrent, and its piece hashes when its infohash is the index's."""
    if torrent.infohash != record.infohash:
        return [
            f"infohash {torrent.infohash}, the index says {record.infohash} for {record.path} "
            "(a torrent of another file or an older version?)"
        ], None
    problems = _common_torrent_problems(torrent, index.trackers, index.dht_nodes)
    if torrent.info.get(b"private") == 1 and (_announced(torrent.meta) or b"nodes" in torrent.meta):
        problems.append("private (never announced), yet it names a tracker or DHT nodes")
    name = record.path.rpartition("/")[2]
    info = torrent.info
    if _text(info.get(b"name")) != name:
        problems.append(f"name is {_shown(info.get(b'name'))}, expected {name!r}")
    if b"files" in info or _int(info.get(b"length")) != record.size:
        problems.append(f"not a single-file torrent of {record.size} bytes (length {_shown(info.get(b'length'))})")
    if _int(info.get(b"piece length")) != record.piece_size:
        problems.append(f"piece length {_shown(info.get(b'piece length'))}, the index says {record.piece_size}")
    pieces = info.get(b"pieces")
    wanted = _DIGEST * math.ceil(record.size / record.piece_size) if record.piece_size else -1
    if not isinstance(pieces, bytes) or len(pieces) != wanted:
        problems.append(
            f"{len(pieces) if isinstance(pieces, bytes) else 'no'} bytes of piece hashes, expected {wanted}"
        )
        pieces = None
    allowed = {webseed_dir_url(seed, record.path) for seed in index.webseeds}
    seeds = _url_list(torrent.meta)
    if not seeds and not allow_peer_only:
        problems.append(
            "no url-list: no webseed serves it, so a download depends on peers (release refuses this unless "
            "--allow-peer-only; pass --allow-peer-only here too if a seed box serves it)"
        )
    for seed in seeds:
        if seed not in allowed:
            problems.append(
                f"url-list entry {_shown(seed)} is not the directory URL (<webseed>/<dir>/) of an index webseed"
            )
    return problems, pieces


def _metalink_problems(
    data: bytes, record: PackageRecord, index: _Index, pieces: bytes | None, *, allow_peer_only: bool = False
) -> tuple[list[str], str | None]:
    """Problems of one package's metalink, and the public URL its torrent metaurl is under."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return ["has a DTD or entity declarations: refused"], None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        return [f"not valid XML ({err})"], None
    ns = f"{{{METALINK_NS}}}"
    if root.tag != f"{ns}metalink":
        return [f"root element is {root.tag!r}, expected a Metalink 4 <metalink>"], None
    files = root.findall(f"{ns}file")
    if len(files) != 1:
        return [f"{len(files)} <file> elements, expected 1"], None
    file = files[0]
    problems: list[str] = []
    name = record.path.rpartition("/")[2]
    if file.get("name") != name:
        problems.append(f"file name is {file.get('name')!r}, expected {name!r}")
    size = (file.findtext(f"{ns}size") or "").strip()
    if size != str(record.size):
        problems.append(f"size {size or 'missing'!r}, the index says {record.size}")
    sha256 = [(h.text or "").strip().lower() for h in file.findall(f"{ns}hash") if h.get("type") == "sha-256"]
    if sha256 != [record.sha256]:
        problems.append(f"sha-256 {', '.join(map(repr, sha256)) or 'missing'}, the index says {record.sha256}")
    problems += _metalink_pieces_problems(file.find(f"{ns}pieces"), ns, record, pieces)
    allowed = {join_url(seed, record.path) for seed in index.webseeds}
    urls = [(u.text or "").strip() for u in file.findall(f"{ns}url")]
    if not urls and not allow_peer_only:
        problems.append("no <url>: no webseed serves it (pass --allow-peer-only if a seed box does)")
    problems += [f"url {u!r} is not <webseed>/<path> of an index webseed" for u in urls if u not in allowed]
    metaurls = [(m.text or "").strip() for m in file.findall(f"{ns}metaurl") if m.get("mediatype") == "torrent"]
    base: str | None = None
    if record.torrent is None:
        if metaurls:
            problems.append("has a torrent metaurl, but the index has no torrent for a zero-length file")
    elif len(metaurls) != 1:
        problems.append(f"{len(metaurls)} torrent metaurls, expected one naming {record.torrent}")
    else:
        suffix = "/" + quote_path(record.torrent)
        if not metaurls[0].endswith(suffix) or not _is_http(metaurls[0]):
            problems.append(f"torrent metaurl {metaurls[0]!r} is not <public url>{suffix}")
        else:
            base = metaurls[0].removesuffix(suffix)
    return problems, base


def _metalink_pieces_problems(
    element: ET.Element | None, ns: str, record: PackageRecord, pieces: bytes | None
) -> list[str]:
    if record.size == 0:
        return [] if element is None else ["has <pieces> for a zero-length file"]
    if element is None:
        return []  # optional in RFC 5854; mirrorseed writes them, but a client does not need them
    if element.get("type") != "sha-1" or element.get("length") != str(record.piece_size):
        found = f"type {element.get('type')!r} length {element.get('length')!r}"
        return [f"<pieces> {found}, expected type 'sha-1' length {record.piece_size}"]
    try:
        listed = b"".join(bytes.fromhex((h.text or "").strip()) for h in element.findall(f"{ns}hash"))
    except ValueError:
        return ["<pieces> holds a hash that is not hex"]
    if pieces is not None and listed != pieces:
        return ["<pieces> differ from the torrent's piece hashes"]
    return []
