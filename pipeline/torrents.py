"""Build one webseeded BitTorrent v1 torrent and one Metalink v4 document per package.

Nothing here reads a package: the piece SHA-1s and the SHA-256 come from `pipeline.hashing`.

`build_torrent` is the generic builder (single- or multi-file, e.g. the index torrent) and uses torf,
the project's reference implementation: torf validates the metainfo and serialises it. Building a
torf.Torrent costs ~0.25-0.7 ms, too much for ~63,000 packages, so `build_packages` bencodes the very
same single-file structure itself (`_package_torrent`); tests/unit/test_torrents.py proves the bytes
equal `build_torrent`'s (torf's) for a range of names, trackers and webseeds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, overload
from urllib.parse import urlsplit

from pipeline import bencode
from pipeline.errors import ConfigError, SnapshotError
from pipeline.filetable import FileTable, KnownDigests, Shown
from pipeline.model import Artifact, BuiltPackages, FileDigest, FileEntry, HashedFile, PackageRecord
from pipeline.objects import make_artifact, metalink_key, torrent_key
from pipeline.urls import join_url, magnet_uri, quote_value, webseed_dir_url

if TYPE_CHECKING:  # torf's stubs name the metainfo TypedDicts; they do not exist at run time
    from torf._torrent import _FilesDict, _InfoDict

CREATED_BY = "mirrorseed"
METALINK_NS = "urn:ietf:params:xml:ns:metalink"
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

_DIGEST_SIZE = 20
_MIN_PIECE_SIZE = 16 * 1024


@dataclass(frozen=True)
class BuildSpec:
    """Where the packages and the published documents can be fetched from."""

    webseeds: tuple[str, ...]  # mirror base URLs; the mirror serves <base>/<repo path>
    trackers: tuple[str, ...]
    public_url: str  # where the destination (torrents/, metalinks/) is readable over HTTP
    # Per-file selection from the mirror health probes; None: every webseed for every file.
    webseeds_for: Callable[[str], Sequence[str]] | None = None
    # (base URL, priority, country) per file for metalinks; None: the url-list, in order.
    metalink_urls_for: Callable[[str], Sequence[tuple[str, int, str | None]]] | None = None
    # DHT bootstrap nodes (BEP 5 `nodes`): a client with an empty routing table starts from them
    nodes: tuple[tuple[str, int], ...] = ()
    # Repo paths or globs of packages never announced: no tracker, no nodes, the BEP 27 private flag
    never_announce: tuple[str, ...] = ()


# --- URL checks ---------------------------------------------------------------------------------


def _check_url(url: str, what: str) -> None:
    """Refuse what torf would refuse (no scheme/host, bad port) or silently rewrite (space -> '+')."""
    if any(ch.isspace() for ch in url):
        raise ConfigError(f"{url!r}: {what} URL contains whitespace; percent-encode it (%20)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise ConfigError(f"{url!r}: {what} URL is malformed ({err}); fix it in the settings") from err
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"{url!r}: {what} URL needs a scheme and a host, e.g. https://mirror.example/debian")


def _check_base(url: str, what: str) -> None:
    """A base URL gets repo paths appended: a query string or fragment would swallow them."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"{url!r}: {what} base URL must not have a query string or fragment")


def _unique(urls: Iterable[str]) -> list[str]:
    """First occurrence of each URL, in order (torf de-duplicates webseeds and trackers this way)."""
    seen: set[str] = set()
    out: list[str] = []
    for url in urls:
        if url not in seen:
            seen.add(url)
            out.append(url)
    return out


# --- generic builder (torf) ---------------------------------------------------------------------


def build_torrent(
    *,
    name: str,
    files: Sequence[tuple[str, int]] | None,
    length: int | None,
    piece_size: int,
    pieces: bytes,
    webseeds: Sequence[str],
    trackers: Sequence[str],
    nodes: Sequence[tuple[str, int]] = (),
) -> tuple[bytes, str]:
    """A BitTorrent v1 metainfo file and its infohash (40 hex), from precomputed piece SHA-1s.

    Single-file: `files=None, length=N`. Multi-file: `files=[("dir/file", length), ...]` with
    '/'-separated relative paths, `length=None`. Webseeds go to `url-list` and trackers to
    `announce`/`announce-list` (one tier each), as given (already percent-encoded, de-duplicated in
    order). `created by` is "mirrorseed"; no `creation date`. torf never reads a file here.
    """
    if (files is None) == (length is None):
        raise ValueError("give exactly one of files (multi-file) or length (single-file)")
    for url in webseeds:
        _check_url(url, "webseed")
    for url in trackers:
        _check_url(url, "tracker")
    info: _InfoDict = {"name": name, "piece length": piece_size, "pieces": pieces}
    if files is None:
        assert length is not None
        info["length"] = length
    else:
        entries: list[_FilesDict] = []
        for path, size in files:
            segments = path.split("/")
            if not path or any(s in ("", ".", "..") for s in segments):
                raise ValueError(f"{path!r}: not a relative '/'-separated path")
            entries.append({"length": size, "path": segments})
        info["files"] = entries
    import torf  # lazy: a no-change run never builds a torrent and should not pay for importing torf

    try:
        torrent = torf.Torrent(
            trackers=list(trackers) or None,
            webseeds=list(webseeds) or None,
            created_by=CREATED_BY,
            creation_date=None,
        )
        torrent.metainfo["info"] = info
        if nodes:
            torrent.metainfo["nodes"] = [[host, port] for host, port in nodes]  # type: ignore[typeddict-unknown-key]
        data = torrent.dump(validate=True)
        infohash = torrent.infohash
    except torf.URLError as err:
        raise ConfigError(f"{err.url!r}: invalid URL for a torrent; fix it in the settings") from err
    except torf.TorfError as err:
        raise ValueError(f"{name}: cannot build torrent: {err}") from err
    return data, infohash


# --- fast single-file builder for packages --------------------------------------------------------


def _announce_prefix(trackers: Sequence[str]) -> bytes:
    """Bencoded `announce`, `announce-list`, `created by` items: the keys sorting before `info`.

    Same rules as torf: one tracker -> `announce` only; several -> `announce` = first and
    `announce-list` = one tier per tracker.
    """
    out = b""
    unique = _unique(trackers)
    if unique:
        out += bencode.string("announce") + bencode.string(unique[0])
        if len(unique) > 1:
            out += bencode.string("announce-list") + b"l" + b"".join(bencode.string_list([t]) for t in unique) + b"e"
    return out + bencode.string("created by") + bencode.string(CREATED_BY)


def _info_bytes(*, name: str, length: int, piece_size: int, pieces: bytes, private: bool = False) -> bytes:
    return b"d6:lengthi%de4:name%s12:piece lengthi%de6:pieces%s%se" % (
        length,
        bencode.string(name),
        piece_size,
        bencode.string(pieces),
        b"7:privatei1e" if private else b"",  # BEP 27: peers only from the trackers it names (none)
    )


def never_announced(patterns: Sequence[str], path: str) -> bool:
    """Whether `path` matches one of the `never_announce` paths or globs (fnmatch: `*` crosses `/`)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def nodes_item(nodes: Sequence[tuple[str, int]]) -> bytes:
    """The bencoded `nodes` key and value (BEP 5: a list of [host, port]); b"" for none."""
    if not nodes:
        return b""
    pairs = b"".join(b"l" + bencode.string(host) + bencode.integer(port) + b"e" for host, port in nodes)
    return bencode.string("nodes") + b"l" + pairs + b"e"


def _package_torrent(
    *,
    prefix: bytes,
    name: str,
    length: int,
    piece_size: int,
    pieces: bytes,
    url_list: Sequence[str],
    nodes: bytes = b"",
    private: bool = False,
) -> tuple[bytes, str]:
    """The single-file torrent `build_torrent` (torf) would produce, bencoded directly (~100x faster)."""
    if length <= 0 or piece_size < _MIN_PIECE_SIZE or piece_size % _MIN_PIECE_SIZE:
        raise ValueError(f"{name}: invalid length {length} or piece size {piece_size}")
    if len(pieces) != _DIGEST_SIZE * math.ceil(length / piece_size):
        raise ValueError(f"{name}: {len(pieces)} bytes of piece hashes for {length} bytes / {piece_size}")
    info = _info_bytes(name=name, length=length, piece_size=piece_size, pieces=pieces, private=private)
    data = b"d" + prefix + b"4:info" + info + nodes  # keys in order: … info, nodes, url-list
    if url_list:
        data += b"8:url-list" + bencode.string_list(url_list)
    return data + b"e", hashlib.sha1(info).hexdigest()


# --- Metalink -----------------------------------------------------------------------------------


def build_metalink(
    *,
    name: str,
    size: int,
    sha256: str,
    piece_size: int | None,
    pieces: bytes,
    urls: Sequence[str | tuple[str, int, str | None]],
    torrent_url: str | None,
) -> bytes:
    """A Metalink v4 document (RFC 5854) for one file: size, sha-256, piece SHA-1s, mirrors, torrent.

    `urls` are full, percent-encoded file URLs, priority 1 = first. No `published`/`generator`:
    the bytes depend on the inputs only.
    """
    # Written as text, in exactly the form ElementTree's indent + tostring gave (tests compare the two):
    # a million metalinks a run at scale, and ElementTree costs ~70 us each.
    lines = [
        _XML_DECLARATION,
        f'<metalink xmlns="{METALINK_NS}">\n',
        f'  <file name="{_xml_attr(name)}">\n',
        f"    <size>{size}</size>\n",
        f'    <hash type="sha-256">{_xml_text(sha256)}</hash>\n',
    ]
    if pieces:
        assert piece_size is not None
        lines.append(f'    <pieces length="{piece_size}" type="sha-1">\n')
        lines.extend(
            f"      <hash>{pieces[offset : offset + _DIGEST_SIZE].hex()}</hash>\n"
            for offset in range(0, len(pieces), _DIGEST_SIZE)
        )
        lines.append("    </pieces>\n")
    for position, item in enumerate(urls, start=1):
        url, priority, location = item if isinstance(item, tuple) else (item, position, None)
        where = f' location="{_xml_attr(location.lower())}"' if location else ""
        lines.append(f'    <url priority="{priority}"{where}>{_xml_text(url)}</url>\n')
    if torrent_url is not None:
        lines.append(f'    <metaurl mediatype="torrent">{_xml_text(torrent_url)}</metaurl>\n')
    lines.append("  </file>\n</metalink>\n")
    return "".join(lines).encode("utf-8")


def _xml_text(text: str) -> str:
    """Character data escaped as ElementTree escapes it."""
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#09;"}
)


def _xml_attr(value: str) -> str:
    """An attribute value escaped as ElementTree escapes it."""
    return value.translate(_ATTR_ESCAPES)


# --- packages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Urls:
    """The per-run URL facts, checked once."""

    webseeds: tuple[str, ...]
    trackers: tuple[str, ...]
    prefix: bytes
    nodes: bytes  # the bencoded `nodes` item
    private_prefix: bytes  # `created by` alone: a never-announced package's torrent names no tracker
    never_announce: tuple[str, ...]
    public_url: str
    webseeds_for: Callable[[str], Sequence[str]] | None
    metalink_urls_for: Callable[[str], Sequence[tuple[str, int, str | None]]] | None


def _urls(spec: BuildSpec) -> _Urls:
    for url in spec.webseeds:
        _check_url(url, "webseed")
        _check_base(url, "webseed")
    for url in spec.trackers:
        _check_url(url, "tracker")
    _check_url(spec.public_url, "public")
    _check_base(spec.public_url, "public")
    trackers = tuple(_unique(spec.trackers))
    return _Urls(
        tuple(spec.webseeds),
        trackers,
        _announce_prefix(trackers),
        nodes_item(spec.nodes),
        _announce_prefix(()),
        spec.never_announce,
        spec.public_url,
        spec.webseeds_for,
        spec.metalink_urls_for,
    )


def webseed_bases(spec: BuildSpec, path: str) -> Sequence[str]:
    """The mirror base URLs that serve `path` in this build (its torrent's url-list is made of these)."""
    return spec.webseeds if spec.webseeds_for is None else spec.webseeds_for(path)


def _url_list(urls: _Urls, path: str) -> list[str]:
    # BEP 19 directory form per mirror; the full file URL is that plus the encoded name, which is
    # join_url(base, path) by construction (quoting the directory once per file, not twice).
    bases = urls.webseeds if urls.webseeds_for is None else urls.webseeds_for(path)
    return _unique(webseed_dir_url(base, path) for base in bases)


def _metalink_urls(urls: _Urls, path: str, url_list: Sequence[str]) -> list[str | tuple[str, int, str | None]]:
    name = quote_value(path.rpartition("/")[2])
    if urls.metalink_urls_for is None:
        return [url + name for url in url_list]
    return [
        (webseed_dir_url(base, path) + name, priority, country)
        for base, priority, country in urls.metalink_urls_for(path)
    ]


def infohash_for(*, name: str, length: int, piece_size: int, pieces: bytes, private: bool = False) -> str:
    """The v1 infohash of the single-file torrent `package_artifacts` writes for these facts."""
    info = _info_bytes(name=name, length=length, piece_size=piece_size, pieces=pieces, private=private)
    return hashlib.sha1(info).hexdigest()


def digest_of(item: HashedFile) -> FileDigest:
    """A hashed file reduced to what its record needs (the infohash instead of the pieces)."""
    entry = item.entry
    infohash = None
    if entry.size > 0:
        name = entry.path.rpartition("/")[2]
        infohash = infohash_for(name=name, length=entry.size, piece_size=item.piece_size, pieces=item.pieces)
    return FileDigest(entry=entry, sha256=item.sha256, piece_size=item.piece_size, infohash=infohash)


def package_records(digests: Sequence[FileDigest], spec: BuildSpec) -> tuple[PackageRecord, ...]:
    """One PackageRecord per file, in path order. Cheap: no piece hashes needed, nothing serialised."""
    return tuple(iter_package_records(sorted(digests, key=lambda d: d.entry.path), spec))


def iter_package_records(digests: Iterable[FileDigest], spec: BuildSpec) -> Iterator[PackageRecord]:
    """One PackageRecord per file of `digests` (in path order), made as they come: a caller that keeps
    only the records never holds every file's FileEntry."""
    urls = _urls(spec)
    previous: str | None = None
    for digest in digests:
        path = digest.entry.path
        if previous is not None:
            _check_order(previous, path)
        previous = path
        yield _record(urls, digest.entry, digest.sha256, digest.piece_size, digest.infohash)


def _check_order(previous: str, path: str) -> None:
    if path <= previous:
        if path == previous:
            raise SnapshotError(f"{path}: listed twice in the snapshot; fix the scan input and re-run")
        raise SnapshotError(f"{path}: after {previous} in the scan, which is sorted by path; report this bug")


def _record(urls: _Urls, entry: FileEntry, sha256: str, piece_size: int, infohash: str | None) -> PackageRecord:
    shown = (entry.path, entry.size, entry.name, entry.version, entry.arch, entry.description, entry.signature)
    return _record_of(urls, shown, sha256, piece_size, infohash)


def _record_of(urls: _Urls, shown: Shown, sha256: str, piece_size: int, infohash: str | None) -> PackageRecord:
    """The record of a file from what it shows of it (`FileTable.shown_at`) and what is known of its content."""
    path, size, name, version, arch, description, signature = shown
    facts = _object_facts(path, size, sha256, piece_size, infohash)
    magnet: str | None = None
    if facts.torrent is not None:
        assert facts.infohash is not None
        magnet = magnet_uri(
            infohash=facts.infohash,
            name=path.rpartition("/")[2],
            size=size,
            trackers=() if never_announced(urls.never_announce, path) else urls.trackers,
            webseeds=_url_list(urls, path),
            torrent_url=join_url(urls.public_url, facts.torrent),
        )
    return PackageRecord(
        path=path,
        size=size,
        sha256=sha256,
        infohash=facts.infohash,
        piece_size=facts.piece_size,
        torrent=facts.torrent,
        metalink=facts.metalink,
        magnet=magnet,
        name=name,
        version=version,
        arch=arch,
        signature=signature,
        description=description,
    )


def _object_facts(path: str, size: int, sha256: str, piece_size: int, infohash: str | None) -> ObjectFacts:
    """A package's ObjectFacts from what is known of its content: an empty file has no torrent (nothing to
    share), so no infohash or piece size either; every file has a Metalink."""
    if size > 0:
        assert infohash is not None
        return ObjectFacts(path, size, sha256, piece_size, infohash, torrent_key(path), metalink_key(path))
    return ObjectFacts(path, size, sha256, None, None, None, metalink_key(path))


class PackageObjects(Protocol):
    """What a package's `.torrent` and `.meta4` are made from: a PackageRecord has it, and so has the lighter
    `ObjectFacts` (`PackageRecords.objects_at`), which skips what only the index shows (the magnet URI)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def piece_size(self) -> int | None: ...
    @property
    def infohash(self) -> str | None: ...
    @property
    def torrent(self) -> str | None: ...
    @property
    def metalink(self) -> str: ...


class ObjectFacts(NamedTuple):
    """A package's PackageObjects without its record: what the content build reads of a million files."""

    path: str
    size: int
    sha256: str
    piece_size: int | None
    infohash: str | None
    torrent: str | None
    metalink: str


class PackageRecords(Sequence[PackageRecord]):
    """Every file's PackageRecord by row of `files` (a FileTable: sorted by path), made when read from the
    facts known of its content. Nothing per file is kept but the inputs: a million records held at once
    would take ~700 MB, and every step reads them in order, or a shard's or a directory's rows at a time."""

    def __init__(self, files: FileTable, known: KnownDigests, spec: BuildSpec) -> None:
        paths = files.paths
        for row in range(1, len(paths)):
            _check_order(paths[row - 1], paths[row])
        self.files = files
        self._known = known
        self._urls = _urls(spec)

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, row: int) -> PackageRecord: ...

    @overload
    def __getitem__(self, row: slice) -> tuple[PackageRecord, ...]: ...

    def __getitem__(self, row: int | slice) -> PackageRecord | tuple[PackageRecord, ...]:
        if isinstance(row, slice):
            return tuple(self.at(range(len(self))[row]))
        row = range(len(self))[row]  # a negative row counts from the end; IndexError past either end
        return _record_of(self._urls, self.files.shown_at(row), *self._known[row])

    def __iter__(self) -> Iterator[PackageRecord]:
        return self.at(range(len(self)))

    def at(self, rows: Iterable[int]) -> Iterator[PackageRecord]:
        """The records of `rows`, one at a time."""
        shown_at, known, urls = self.files.shown_at, self._known, self._urls
        for row in rows:
            yield _record_of(urls, shown_at(row), *known[row])

    def objects_at(self, rows: Iterable[int]) -> Iterator[ObjectFacts]:
        """What the objects of `rows` are made from, one at a time: as `at` gives, without the records' magnet
        URIs (each quotes every webseed URL: ~40 % of a record's cost) or the file's other metadata."""
        paths, size_at, known = self.files.paths, self.files.size_at, self._known
        for row in rows:
            yield _object_facts(paths[row], size_at(row), *known[row])


def package_artifacts(
    items: Iterable[tuple[PackageObjects, bytes]], spec: BuildSpec, *, metalinks_only: bool = False
) -> tuple[Artifact, ...]:
    """The `.torrent` (non-empty files) and `.meta4` of each (record, piece hashes), in the given order.

    `metalinks_only`: the records are unchanged but the mirrors' current status is not (metalinks show it).
    """
    return tuple(iter_package_artifacts(items, spec, metalinks_only=metalinks_only))


def iter_package_artifacts(
    items: Iterable[tuple[PackageObjects, bytes]], spec: BuildSpec, *, metalinks_only: bool = False
) -> Iterator[Artifact]:
    """`package_artifacts`, one object at a time (the caller spools them instead of holding them)."""
    urls = _urls(spec)
    for record, pieces in items:
        path = record.path
        name = path.rpartition("/")[2]
        url_list = _url_list(urls, path)
        torrent_url: str | None = None
        if record.torrent is not None:
            assert record.piece_size is not None
            private = never_announced(urls.never_announce, path)
            data, infohash = _package_torrent(
                prefix=urls.private_prefix if private else urls.prefix,
                name=name,
                length=record.size,
                piece_size=record.piece_size,
                pieces=pieces,
                url_list=url_list,
                nodes=b"" if private else urls.nodes,
                private=private,
            )
            if infohash != record.infohash:
                raise ValueError(f"{path}: piece hashes do not match the recorded infohash {record.infohash}")
            torrent_url = join_url(urls.public_url, record.torrent)
            if not metalinks_only:
                yield make_artifact(record.torrent, data)
        metalink = build_metalink(
            name=name,
            size=record.size,
            sha256=record.sha256,
            piece_size=record.piece_size,
            pieces=pieces if record.size > 0 else b"",
            urls=_metalink_urls(urls, path, url_list),
            torrent_url=torrent_url,
        )
        yield make_artifact(record.metalink, metalink)


def build_packages(hashed: Sequence[HashedFile], spec: BuildSpec) -> BuiltPackages:
    """One PackageRecord, `.torrent` (non-empty files only) and `.meta4` per hashed file, in path order.

    Artifacts come per package, torrent then metalink. Deterministic: same inputs, same bytes.
    """
    records = package_records([digest_of(item) for item in hashed], spec)
    pieces = {item.entry.path: item.pieces for item in hashed}
    artifacts = package_artifacts(((record, pieces[record.path]) for record in records), spec)
    return BuiltPackages(records=records, artifacts=artifacts)


def hash_pieces_of_bytes(chunks: Sequence[bytes], piece_size: int) -> bytes:
    """v1 piece SHA-1s over the concatenation of `chunks` (the files of a small multi-file torrent)."""
    if piece_size < _MIN_PIECE_SIZE or piece_size % _MIN_PIECE_SIZE:
        raise ValueError(f"invalid piece size {piece_size}")
    digests: list[bytes] = []
    piece = hashlib.sha1()
    filled = 0
    for chunk in chunks:
        view = memoryview(chunk)
        offset = 0
        while offset < len(view):
            take = min(piece_size - filled, len(view) - offset)
            piece.update(view[offset : offset + take])
            filled += take
            offset += take
            if filled == piece_size:
                digests.append(piece.digest())
                piece = hashlib.sha1()
                filled = 0
    if filled:
        digests.append(piece.digest())
    return b"".join(digests)
