"""The index document and the pointer payload (DESIGN section 5): build, encode, decode.

Pure functions: no gpg, no storage. Decoding treats its input as hostile (it comes back from the
destination or a mirror): sizes are checked before anything is decompressed, and every error is a
one-line StorageError.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _json_string  # what json.dumps(ensure_ascii=False) uses
from typing import Any

import zstandard

from pipeline.errors import SnapshotError, StorageError
from pipeline.jsondoc import STRICT_DECODER, StrictJSONError, check_strings, loads_strict, may_hold_surrogates
from pipeline.model import DeltaRef, PackageRecord, Pointer, ShardRef

INDEX_FORMAT = "mirrorseed-index/2"  # a shard of the index (docs/sharded-index.md)
POINTER_FORMAT = "mirrorseed-pointer/3"  # 3: a shard may come in parts (docs/sharded-index.md)
UNPARTED_POINTER_FORMAT = "mirrorseed-pointer/2"  # shards without parts: read back from older destinations only
LEGACY_INDEX_FORMAT = "mirrorseed-index/1"  # one whole index: read back from older destinations only
LEGACY_POINTER_FORMAT = "mirrorseed-pointer/1"
MAX_SEQUENCE = 2**53 - 1  # clients parse JSON numbers as doubles and reject anything larger

# Measured on a 56-62 MB synthetic bookworm index (63,440 packages, random hashes), one core: level 6
# compresses in ~0.4 s to the best ratio below level 16 (levels 9-15 are slower and no smaller; 16 takes
# ~9 s, 19 ~35 s for ~15 % less). Changing it changes every index's bytes, hence its SHA-256.
# The frame is always produced by zstd's streaming API with the size pledged up front (`_compress`):
# for inputs larger than the window (~2 MB at level 6) a one-shot `ZstdCompressor.compress()` picks
# slightly different matches, so the two are not interchangeable; the streaming output does not depend
# on how the input is chunked, which lets `encode_json` and `encode_document` agree byte for byte.
ZSTD_LEVEL = 6

_DECODE_STEP = 256  # compressed bytes fed per step of decode_index and iter_index
_TEXT_STEP = 16 * 1024  # decompressed bytes decoded to text at a time by iter_index
_MAX_VALUE_CHARS = 4 * 1024 * 1024  # iter_index: longest single JSON value (a package, a header field)
_WHITESPACE_RE = re.compile(r"[ \t\n\r]*")
# The header keys of a shard (mirrorseed-index/2) and of a legacy whole index (mirrorseed-index/1).
_HEADER_KEYS_OF = {
    INDEX_FORMAT: frozenset({"format", "repo", "shard", "webseeds", "trackers"}),
    LEGACY_INDEX_FORMAT: frozenset({"format", "repo", "sequence", "generated", "webseeds", "trackers"}),
}
_ANY_HEADER_KEY = frozenset().union(*_HEADER_KEYS_OF.values())
# Deltas (docs/sharded-index.md): a zstd frame of the new shard's JSON with the previous shard's JSON as its
# raw-content dictionary, which `zstd -d --patch-from=OLD` reads. Matches reach into the dictionary only
# through the hash table, so it must grow with old + new: hash log = bits of (old + new) - 3 (measured:
# 2.3 MB shards, 1 % changed: hash 20 gives a 3.7 kB delta, 13 MB of tables; 31 MB shards: hash 23 gives
# 53 kB (1.3 % of the 4.2 MB compressed shard) in 0.45 s with 113 MB more RSS, hash 22 gives 315 kB and
# hash 21 none at all). The chain stays at 2^20: longer ones cost memory and found nothing more. Level 12's
# strategy (lower levels do not search far enough back). Shards over DELTA_MAX_BYTES get no delta: the
# tables would pass 2^23 entries and the window zstd's default limit of 2^27.
DELTA_LEVEL = 12
DELTA_MAX_BYTES = 32 * 1024 * 1024
# A shard whose JSON would pass this is published in parts of at most this many bytes (the records split by
# path, in order, each part a whole shard document), so that every part can have a delta. 8 MiB, not the
# 32 MiB a delta can take: making a part's delta holds both JSONs and zstd's tables, ~60 MB at 8 MiB against
# ~180 MB at 32 MiB, and the delta stays about the changed share of the part (1 % changed: 0.2 % of it).
PART_MAX_BYTES = 8 * 1024 * 1024
_DELTA_MAX_HASH_LOG = 23
_DELTA_CHAIN_LOG = 20
# Header keys written only when not empty (an index without them reads as empty lists): the DHT
# bootstrap nodes its torrents carry ("host:port", in order).
_OPTIONAL_HEADER_KEYS = frozenset({"dht_nodes"})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_INFOHASH_RE = re.compile(r"[0-9a-f]{40}")
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def rfc3339(dt: datetime) -> str:
    """Aware datetime -> `YYYY-MM-DDTHH:MM:SSZ` in UTC (seconds, no fraction)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{dt!r}: a naive datetime has no time zone; pass an aware UTC datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """`YYYY-MM-DDTHH:MM:SSZ` -> aware UTC datetime; anything else ValueError."""
    if not _RFC3339_RE.fullmatch(text):
        raise ValueError(f"{text!r}: not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def shard_document(
    *,
    repo: str,
    shard: str,
    webseeds: Sequence[str],
    trackers: Sequence[str],
    packages: Sequence[PackageRecord],
    dht_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """A shard of the index (docs/sharded-index.md), packages sorted by path; a duplicate path is a
    SnapshotError."""
    ordered = sorted(packages, key=lambda record: record.path)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.path == after.path:
            raise SnapshotError(f"{after.path}: listed twice in the snapshot: remove the duplicate entry")
    return _shard_header(repo, shard, webseeds, trackers, dht_nodes) | {
        "packages": [record.to_json() for record in ordered]
    }


def distinct(values: Iterable[str]) -> list[str]:
    """Each value once, the first occurrence kept: how a shard's header lists webseeds, trackers and DHT nodes."""
    return list(dict.fromkeys(values))


def _shard_header(
    repo: str, shard: str, webseeds: Sequence[str], trackers: Sequence[str], dht_nodes: Sequence[str]
) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "repo": repo,
        "shard": shard,
        "webseeds": distinct(webseeds),
        "trackers": distinct(trackers),
    } | ({"dht_nodes": distinct(dht_nodes)} if dht_nodes else {})


@dataclass(frozen=True)
class EncodedIndex:
    """A compressed shard as published: bytes, their SHA-256 (hex) and size, and the JSON's size and
    SHA-256."""

    data: bytes
    sha256: str
    size: int
    uncompressed_size: int
    uncompressed_sha256: str


def encode_document(doc: dict[str, Any]) -> EncodedIndex:
    """Canonical JSON (sorted keys, no spaces, UTF-8) in one zstd frame with content size and checksum.

    Same document, same bytes: level fixed, single-threaded, no timestamps in zstd frames. The bytes are
    those of `encode_json(shard_json(...))` for the same arguments (both compress through `_compress`).
    """
    return encode_json(_canonical(doc).encode("utf-8"))


def encode_json(raw: bytes | bytearray, raw_sha256: str | None = None) -> EncodedIndex:
    """A shard's JSON (`shard_json`, or a part of it from `shard_parts`) compressed: the published bytes.
    `raw_sha256`: the JSON's SHA-256, when the caller has it."""
    data = _compress([raw], len(raw))
    raw_sha256 = raw_sha256 or hashlib.sha256(raw).hexdigest()
    return EncodedIndex(data, hashlib.sha256(data).hexdigest(), len(data), len(raw), raw_sha256)


def _frame(header: dict[str, Any]) -> tuple[bytes, bytes]:
    """The canonical JSON of `header` plus a "packages" array, as the text before and after the array's items."""
    keys = sorted([*header, "packages"])
    at = keys.index("packages")

    def members(names: list[str]) -> str:
        return ",".join(f"{_canonical(name)}:{_canonical(header[name])}" for name in names)

    before, after = members(keys[:at]), members(keys[at + 1 :])
    head = "{" + (before + "," if before else "") + '"packages":['
    tail = "]" + ("," + after if after else "") + "}"
    return head.encode("utf-8"), tail.encode("utf-8")


def shard_json(
    *,
    repo: str,
    shard: str,
    webseeds: Sequence[str],
    trackers: Sequence[str],
    records: Sequence[PackageRecord],
    dht_nodes: Sequence[str] = (),
) -> bytes:
    """The whole JSON of a shard: `shard_parts`' one part when it fits (a delta is made from two parts)."""
    head, tail = _frame(_shard_header(repo, shard, webseeds, trackers, dht_nodes))
    return head + b",".join(_package_json(records)) + tail


def shard_parts(
    *,
    repo: str,
    shard: str,
    webseeds: Sequence[str],
    trackers: Sequence[str],
    packages: Iterable[str],
    dht_nodes: Sequence[str] = (),
    max_bytes: int | None = None,
) -> Iterator[tuple[int, bytearray]]:
    """The shard's JSON in parts of at most `max_bytes` (default PART_MAX_BYTES), one at a time: (packages,
    JSON) of each, a whole shard document (the shard's header) holding the next records that fit. One part,
    that of `shard_json`, when the whole JSON fits; a record too large for a part alone is a part alone.

    `packages`: each record's `package_json`, sorted by path (the caller's order is not checked: at a million
    files each record's JSON is made once, in the build, and read here without its record)."""
    limit = PART_MAX_BYTES if max_bytes is None else max_bytes
    head, tail = _frame(_shard_header(repo, shard, webseeds, trackers, dht_nodes))
    part = bytearray(head)
    count = 0
    for text in packages:
        package = text.encode("utf-8")
        if count and len(part) + 1 + len(package) + len(tail) > limit:
            part += tail
            done, part = part, bytearray(head)  # handed over, not copied: one part is alive at a time
            yield count, done
            del done
            count = 0
        if count:
            part += b","
        part += package
        count += 1
    part += tail
    yield count, part


def make_delta(old: bytes, new: bytes | bytearray) -> bytes:
    """`new` as one zstd frame with `old` as its raw-content dictionary: `zstd -d --patch-from=OLD`
    reads it (docs/sharded-index.md). Deterministic for the same two inputs."""
    if len(old) > DELTA_MAX_BYTES or len(new) > DELTA_MAX_BYTES:
        raise ValueError(f"a delta takes shards of at most {DELTA_MAX_BYTES} bytes")
    total = len(old) + len(new)
    window_log = min(27, max(17, total.bit_length()))
    hash_log = min(_DELTA_MAX_HASH_LOG, max(17, total.bit_length() - 3))
    params = zstandard.ZstdCompressionParameters.from_level(
        DELTA_LEVEL, source_size=len(new), window_log=window_log, hash_log=hash_log,
        chain_log=min(_DELTA_CHAIN_LOG, window_log), write_content_size=True, write_checksum=True,
        write_dict_id=False,
    )  # fmt: skip
    dictionary = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new)


def apply_delta(old: bytes, delta: bytes, *, uncompressed_size: int) -> bytes:
    """The JSON a delta gives from `old`, exactly `uncompressed_size` bytes, with `decode_index`'s checks
    (one complete frame, nothing after it, the size never passed); StorageError otherwise."""
    _check_declared_size(delta, uncompressed_size)
    return b"".join(_inflate(delta, uncompressed_size, dictionary=old, what="index delta"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def package_json(record: PackageRecord) -> str:
    """A record as a shard lists it: its canonical JSON, `_canonical(record.to_json())` byte for byte, written
    field by field in sorted key order (a third of the time: a run makes it twice for each of a million
    records)."""
    text, optional = _json_string, _json_optional
    signature = record.signature
    return "".join(
        (
            "{" if record.arch is None else '{"arch":' + text(record.arch) + ",",
            '"infohash":', optional(record.infohash),
            ',"magnet":', optional(record.magnet),
            ',"metalink":', text(record.metalink),
            "" if record.name is None else ',"name":' + text(record.name),
            ',"path":', text(record.path),
            ',"piece_size":', "null" if record.piece_size is None else str(int(record.piece_size)),
            ',"sha256":', text(record.sha256),
            ',"signature":',
            "null"
            if signature is None
            else '{"path":' + text(signature.path) + ',"sha256":' + text(signature.sha256) + ',"size":'
            + str(int(signature.size)) + "}",
            ',"size":', str(int(record.size)),
            ',"torrent":', optional(record.torrent),
            "}" if record.version is None else ',"version":' + text(record.version) + "}",
        )
    )  # fmt: skip


def _json_optional(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _package_json(records: Iterable[PackageRecord]) -> Iterator[bytes]:
    """Each record's canonical JSON (UTF-8), checking that the paths strictly increase."""
    previous: str | None = None
    for record in records:
        if previous is not None and record.path <= previous:
            if record.path == previous:
                raise SnapshotError(f"{record.path}: listed twice in the snapshot: remove the duplicate entry")
            raise SnapshotError(f"{record.path}: comes after {previous}: pass the records sorted by path")
        previous = record.path
        yield package_json(record).encode("utf-8")


def _compress(chunks: Iterable[bytes | bytearray], size: int) -> bytes:
    """One zstd frame (level ZSTD_LEVEL, content size `size`, checksum) of the concatenated chunks.

    Streaming with the size pledged: the output depends only on the concatenation, not on the chunking.
    """
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)
    stream = compressor.compressobj(size=size)
    out = io.BytesIO()  # grows in place; getvalue() then hands over its buffer without a copy
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        if fed > size:
            break
        out.write(stream.compress(chunk))
    if fed != size:
        raise ValueError(f"{fed} bytes of JSON to compress where {size} were declared")
    out.write(stream.flush())
    return out.getvalue()


def decode_index(data: bytes, *, uncompressed_size: int, expected: str = INDEX_FORMAT) -> dict[str, Any]:
    """Decompress and parse a shard (or, `expected` = LEGACY_INDEX_FORMAT, a whole index of format 1)
    whose JSON is exactly `uncompressed_size` bytes (from the pointer).

    The frame's declared size is checked first (python-zstandard ignores output caps when a frame
    declares its size), then the frame is decompressed in small steps, counting the output and stopping
    as soon as it passes `uncompressed_size`, since a frame may declare nothing or lie. One complete
    frame (checksum verified), nothing after it. StorageError on any mismatch.

    This holds the whole document; `iter_index` reads it with bounded memory.
    """
    doc = loads_strict(decompress_index(data, uncompressed_size=uncompressed_size), what="index")
    if not isinstance(doc, dict) or doc.get("format") != expected:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise StorageError(f"index: format is {found!r}, expected {expected!r}")
    return doc


def decompress_index(data: bytes, *, uncompressed_size: int) -> bytes:
    """The JSON of a compressed shard, exactly `uncompressed_size` bytes, checked as `decode_index` does
    (a delta is made against it)."""
    _check_declared_size(data, uncompressed_size)
    raw = bytearray()
    for chunk in _inflate(data, uncompressed_size):
        raw += chunk
    return bytes(raw)


def _check_declared_size(data: bytes, uncompressed_size: int) -> None:
    if uncompressed_size < 0:
        raise StorageError(f"index: uncompressed_size {uncompressed_size} is negative")
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise StorageError(f"index: not a zstd frame ({err}): the object is corrupt; re-publish") from err
    if declared != -1 and declared != uncompressed_size:
        raise StorageError(
            f"index: the zstd frame declares {declared} bytes, the pointer says {uncompressed_size}: "
            "refusing to decompress a mismatched (possibly hostile) index"
        )


def _inflate(
    data: bytes, uncompressed_size: int, *, dictionary: bytes | None = None, what: str = "index"
) -> Iterator[bytes]:
    """The decompressed bytes of one zstd frame, step by step; StorageError as soon as anything is off.

    Small input steps bound each step's output (at most ~32,768:1 for RLE blocks, so ~8 MiB); the
    output is counted and refused as soon as it passes `uncompressed_size`. After the last chunk: the
    frame is complete (checksum verified by zstd), nothing follows it, and the size is exact.
    """
    if dictionary is None:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
    else:  # a delta: the previous shard's JSON as its raw-content dictionary (`make_delta`)
        raw_content = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        decompressor = zstandard.ZstdDecompressor(dict_data=raw_content, max_window_size=2**27).decompressobj()
    consumed = produced = 0
    while consumed < len(data) and not decompressor.eof:
        step = data[consumed : consumed + _DECODE_STEP]
        consumed += len(step)
        try:
            chunk = decompressor.decompress(step)
        except zstandard.ZstdError as err:
            raise StorageError(f"{what}: zstd decompression failed ({err}): the object is corrupt") from err
        produced += len(chunk)
        if produced > uncompressed_size:
            raise StorageError(
                f"{what}: decompresses to more than the {uncompressed_size} bytes the pointer declares: "
                "refused (zstd bomb?)"
            )
        if chunk:
            yield chunk
    if not decompressor.eof:
        raise StorageError(f"{what}: the zstd frame is truncated: the object is corrupt")
    if consumed - len(decompressor.unused_data) != len(data):
        raise StorageError(f"{what}: unexpected data after the zstd frame: the object is corrupt")
    if produced != uncompressed_size:
        raise StorageError(
            f"{what}: decompresses to {produced} bytes, the pointer declares {uncompressed_size}: refused"
        )


def iter_index(data: bytes, *, uncompressed_size: int, expected: str = INDEX_FORMAT) -> IndexReader:
    """Read an index with bounded memory: `reader.packages()` yields the package objects in document order.

    The same checks as `decode_index`; the declared frame size is checked here, everything else while
    iterating, as a StorageError from the iterator (a bad checksum or trailing data only at its end).
    `reader.header` is available once the iterator is exhausted.
    """
    return IndexReader(data, uncompressed_size=uncompressed_size, expected=expected)


class IndexReader:
    """One pass over a compressed index, parsing one JSON value at a time.

    Memory is bounded by one decompression step plus one JSON value (a package, a header field; longer
    than `_MAX_VALUE_CHARS` characters is refused): the decompressed text is kept in a buffer that is
    trimmed as values are consumed. Every top-level key is required, none may repeat or be unknown, and
    `format` is checked as soon as it is read (canonical order puts it before the packages).
    """

    def __init__(self, data: bytes, *, uncompressed_size: int, expected: str = INDEX_FORMAT) -> None:
        _check_declared_size(data, uncompressed_size)
        self._expected = expected
        self._chunks = _inflate(data, uncompressed_size)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._raw = b""  # the decompressed chunk being decoded, from _raw_pos
        self._raw_pos = 0
        self._buf = ""  # decompressed text not yet consumed starts at _pos
        self._pos = 0
        self._offset = 0  # characters of the document dropped before _buf
        self._eof = False
        self._started = False
        self._header: dict[str, Any] | None = None

    def packages(self) -> Iterator[dict[str, Any]]:
        """The package objects in document order; one pass only (RuntimeError when called again)."""
        if self._started:
            raise RuntimeError("index: packages() reads the index once; call iter_index again")
        self._started = True
        return self._parse()

    @property
    def header(self) -> dict[str, Any]:
        """The other top-level fields, checked: format, repo, generated (str), sequence (int), webseeds,
        trackers and, when present, dht_nodes (lists of str). A fresh dict; RuntimeError until
        `packages()` was iterated to its end."""
        if self._header is None:
            raise RuntimeError("index: the header is known only once packages() has been iterated to its end")
        return {key: list(value) if isinstance(value, list) else value for key, value in self._header.items()}

    def _parse(self) -> Iterator[dict[str, Any]]:
        if self._peek() != "{":
            raise self._unexpected("a JSON object")
        self._pos += 1
        fields: dict[str, Any] = {}
        if self._peek() == "}":
            self._pos += 1
        else:
            while True:
                if self._peek() != '"':
                    raise self._unexpected("a key")
                key = self._value()
                if key in fields:
                    raise StorageError(f"index: the key {key!r} appears twice")
                if key != "packages" and key not in _ANY_HEADER_KEY | _OPTIONAL_HEADER_KEYS:
                    raise StorageError(f"index: unexpected key {key!r}")
                if self._peek() != ":":
                    raise self._unexpected("':'")
                self._pos += 1
                if key == "packages":
                    yield from self._packages()
                    fields[key] = None
                else:
                    fields[key] = self._value()
                    if key == "format" and fields[key] != self._expected:
                        raise StorageError(f"index: format is {fields[key]!r}, expected {self._expected!r}")
                separator = self._peek()
                if separator not in (",", "}"):
                    raise self._unexpected("',' or '}'")
                self._pos += 1
                if separator == "}":
                    break
        if self._peek() != "":  # also runs the frame's final checks
            raise StorageError(f"index: unexpected data after the JSON object at character {self._where()}")
        self._header = _index_header(fields, self._expected)

    def _packages(self) -> Iterator[dict[str, Any]]:
        if self._peek() != "[":
            raise self._unexpected("the 'packages' array")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
            return
        number = 0
        while True:
            if self._peek() != "{":
                raise self._unexpected(f"packages[{number}] as an object")
            package: dict[str, Any] = self._value()
            yield package
            number += 1
            separator = self._peek()
            if separator not in (",", "]"):
                raise self._unexpected("',' or ']'")
            self._pos += 1
            if separator == "]":
                return

    def _value(self) -> Any:
        """The JSON value at the next non-whitespace character, reading more text until it is complete."""
        self._peek()
        while True:
            try:
                value, end = STRICT_DECODER.raw_decode(self._buf, self._pos)
                if may_hold_surrogates(self._buf, self._pos, end):
                    check_strings(value)
            except StrictJSONError as err:
                raise StorageError(f"index: not strict JSON at character {self._where()}: {err}") from err
            except json.JSONDecodeError as err:
                incomplete = err.msg.startswith("Unterminated string") or err.pos >= len(self._buf) - 8
                if self._eof or not incomplete:
                    raise StorageError(
                        f"index: not valid JSON at character {self._offset + err.pos}: {err.msg}"
                    ) from err
                self._read_more()
                continue
            except (ValueError, RecursionError) as err:
                raise StorageError(f"index: not valid JSON at character {self._where()} ({err})") from err
            # A number cut by the buffer's end may parse short ("12" of "123", "1.5" of "1.5e+3"): the
            # unmatched rest is at most 2 characters ("e+"), so 3 more characters prove it complete.
            if self._eof or len(self._buf) - end >= 3:
                if end - self._pos > _MAX_VALUE_CHARS:
                    raise self._too_long()
                self._pos = end
                return value
            self._read_more()

    def _read_more(self) -> None:
        """Double the unconsumed text (so retrying a parse stays linear), up to just past the longest value."""
        pending = len(self._buf) - self._pos
        if pending > _MAX_VALUE_CHARS:
            raise self._too_long()
        self._fill(max(1, min(pending, _MAX_VALUE_CHARS + 1 - pending)))

    def _too_long(self) -> StorageError:
        return StorageError(
            f"index: a JSON value at character {self._where()} is longer than {_MAX_VALUE_CHARS} characters: refused"
        )

    def _fill(self, wanted: int) -> bool:
        """Append at least `wanted` characters of decompressed text, or up to the end of the frame (whose
        final checks then run), dropping what was consumed; False if no text came.

        zstd hands out whole blocks (up to 128 KiB); they are decoded `_TEXT_STEP` bytes at a time so the
        text buffer holds little more than the value being parsed.
        """
        pieces: list[str] = []
        got = 0
        while got < wanted and not self._eof:
            if self._raw_pos < len(self._raw):
                piece = self._raw[self._raw_pos : self._raw_pos + _TEXT_STEP]
                self._raw_pos += len(piece)
                final = False
            else:
                chunk = next(self._chunks, None)
                if chunk is not None:
                    self._raw, self._raw_pos = chunk, 0
                    continue
                piece, final = b"", True
            try:
                text = self._utf8.decode(piece, final=final)
            except UnicodeDecodeError as err:
                raise StorageError(f"index: not UTF-8 ({err})") from err
            self._eof = final
            pieces.append(text)
            got += len(text)
        if got:
            self._offset += self._pos
            self._buf = self._buf[self._pos :] + "".join(pieces)
            self._pos = 0
        return got > 0

    def _peek(self) -> str:
        """The next character that is not JSON whitespace (not consumed), or "" at the end of the text."""
        while True:
            match = _WHITESPACE_RE.match(self._buf, self._pos)
            self._pos = match.end() if match else self._pos
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill(1):
                return ""

    def _where(self) -> int:
        return self._offset + self._pos

    def _unexpected(self, wanted: str) -> StorageError:
        found = self._peek()
        if not found:
            return StorageError(f"index: the JSON ends where {wanted} was expected: truncated")
        return StorageError(f"index: expected {wanted} at character {self._where()}, found {found!r}")


def _index_header(fields: dict[str, Any], expected: str) -> dict[str, Any]:
    keys = _HEADER_KEYS_OF[expected]
    missing, extra = (
        sorted((keys | {"packages"}) - fields.keys()),
        sorted(fields.keys() - keys - {"packages", "dht_nodes"}),
    )
    if missing or extra:
        raise StorageError(f"index: missing keys {missing}, unexpected keys {extra}")
    if expected == INDEX_FORMAT:
        problems = _want_str(fields, "repo", "shard")
    else:
        problems = [*_want_str(fields, "repo", "generated"), *_want_int(fields, "sequence")]
    problems += [
        f"{key} is not a list of strings"
        for key in ("webseeds", "trackers", *(_OPTIONAL_HEADER_KEYS & fields.keys()))
        if not isinstance(fields[key], list) or not all(isinstance(item, str) for item in fields[key])
    ]
    if problems:
        raise StorageError(f"index: {'; '.join(problems)}")
    return {key: fields[key] for key in sorted((keys | _OPTIONAL_HEADER_KEYS) & fields.keys())}


def check_sequence(sequence: int) -> None:
    """ValueError unless `sequence` is an integer clients accept (1 to 2^53-1)."""
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence!r}: must be an integer from 1 to 2^53-1")


def encode_pointer(pointer: Pointer) -> bytes:
    """The pointer payload: JSON, keys sorted, 2-space indent (users read it), UTF-8, trailing newline."""
    return (json.dumps(pointer.to_json(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_POINTER_KEYS = {"format", "repo", "sequence", "generated", "expires", "shards"}
_SHARD_KEYS = {
    "name", "path", "size", "sha256", "uncompressed_size", "uncompressed_sha256", "packages", "torrent", "infohash",
    "delta",
}  # fmt: skip
_DELTA_KEYS = {"from_sha256", "path", "size", "sha256"}
_LEGACY_POINTER_KEYS = {
    "format",
    "repo",
    "sequence",
    "generated",
    "expires",
    "index",
    "index_torrent",
    "infohash",
    "magnet",
}
_INDEX_REF_KEYS = {"path", "size", "uncompressed_size", "sha256"}


def decode_pointer(data: bytes) -> Pointer:
    """Parse and validate a pointer payload (after its signature was checked); StorageError if invalid.

    A `mirrorseed-pointer/1` (one whole index, written by earlier versions) is read too, as a Pointer with
    no shards and the keys of its index in `legacy_keys`: the next run replaces it.
    """
    doc = loads_strict(data, what="latest.asc: the payload")
    if not isinstance(doc, dict):
        raise StorageError("latest.asc: the payload is not a JSON object")
    if doc.get("format") == LEGACY_POINTER_FORMAT:
        return _decode_legacy_pointer(doc)
    if doc.get("format") not in (POINTER_FORMAT, UNPARTED_POINTER_FORMAT):
        raise StorageError(f"latest.asc: format is {doc.get('format')!r}, expected {POINTER_FORMAT!r}")
    parted = doc["format"] == POINTER_FORMAT
    _exact_keys("latest.asc", doc, _POINTER_KEYS)
    problems = [*_want_str(doc, "repo", "generated", "expires"), *_want_int(doc, "sequence")]
    if not isinstance(doc["shards"], list):
        problems.append("shards is not a list")
    if problems:
        raise StorageError(f"latest.asc: {'; '.join(problems)}")
    _check_times_and_sequence(doc)
    shards = tuple(_decode_shard_ref(number, item, parted) for number, item in enumerate(doc["shards"]))
    order = [(shard.name, shard.part) for shard in shards]
    if order != sorted(set(order)):
        raise StorageError("latest.asc: the shards are not sorted by name and part, or a part repeats")
    for number, (name, part) in enumerate(order):  # the parts of a name are 0, 1, 2, ...
        expected = order[number - 1][1] + 1 if number and order[number - 1][0] == name else 0
        if part != expected:
            raise StorageError(f"latest.asc: shard {name!r} has part {part} where part {expected} belongs")
    return Pointer(doc["repo"], doc["sequence"], doc["generated"], doc["expires"], shards, outdated=not parted)


def _decode_shard_ref(number: int, item: Any, parted: bool) -> ShardRef:
    where = f"latest.asc: shards[{number}]"
    if not isinstance(item, dict):
        raise StorageError(f"{where} is not an object")
    _exact_keys(where, item, _SHARD_KEYS | {"part"} if parted else _SHARD_KEYS)
    problems = [
        *_want_str(item, "name", "path", "sha256", "uncompressed_sha256", "torrent", "infohash"),
        *_want_int(item, "size", "uncompressed_size", "packages", *(("part",) if parted else ())),
    ]
    if problems:
        raise StorageError(f"{where}: {'; '.join(problems)}")
    delta = item["delta"]
    checks = [
        (_shard_name_ok(item["name"]), "name is not a shard name"),
        (min(item[key] for key in ("size", "uncompressed_size", "packages", "part") if key in item) >= 0,
         "a count is negative"),
        (all(_SHA256_RE.fullmatch(item[key]) for key in ("sha256", "uncompressed_sha256")), "a SHA-256 is malformed"),
        (bool(_INFOHASH_RE.fullmatch(item["infohash"])), "infohash is not 40 lowercase hex digits"),
        (_relative(item["path"]) and _relative(item["torrent"]), "a path is not relative"),
        (delta is None or isinstance(delta, dict), "delta is neither null nor an object"),
    ]  # fmt: skip
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise StorageError(f"{where}: {'; '.join(failed)}")
    ref = None
    if delta is not None:
        _exact_keys(f"{where}.delta", delta, _DELTA_KEYS)
        problems = [*_want_str(delta, "from_sha256", "path", "sha256"), *_want_int(delta, "size")]
        if not problems and not (
            all(_SHA256_RE.fullmatch(delta[key]) for key in ("from_sha256", "sha256"))
            and _relative(delta["path"])
            and delta["size"] >= 0
        ):
            problems.append("a SHA-256, the path or the size is malformed")
        if problems:
            raise StorageError(f"{where}.delta: {'; '.join(problems)}")
        ref = DeltaRef(delta["from_sha256"], delta["path"], delta["size"], delta["sha256"])
    return ShardRef(
        item["name"], item["path"], item["size"], item["sha256"], item["uncompressed_size"],
        item["uncompressed_sha256"], item["packages"], item["torrent"], item["infohash"], ref, item.get("part", 0),
    )  # fmt: skip


def _shard_name_ok(name: str) -> bool:
    return name == "." or (_relative(name) and not any(ord(c) < 0x20 or c == "\x7f" for c in name))


def _check_times_and_sequence(doc: dict[str, Any]) -> None:
    checks = [
        (1 <= doc["sequence"] <= MAX_SEQUENCE, "sequence must be from 1 to 2^53-1"),
        (bool(_RFC3339_RE.fullmatch(doc["generated"])), "generated is not YYYY-MM-DDTHH:MM:SSZ"),
        (bool(_RFC3339_RE.fullmatch(doc["expires"])), "expires is not YYYY-MM-DDTHH:MM:SSZ"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise StorageError(f"latest.asc: {'; '.join(failed)}")
    try:
        parse_rfc3339(doc["generated"])
        parse_rfc3339(doc["expires"])
    except ValueError as err:
        raise StorageError(f"latest.asc: {err}") from err


def _decode_legacy_pointer(doc: dict[str, Any]) -> Pointer:
    _exact_keys("latest.asc", doc, _LEGACY_POINTER_KEYS)
    ref = doc["index"]
    if not isinstance(ref, dict):
        raise StorageError("latest.asc: 'index' is not an object")
    _exact_keys("latest.asc: index", ref, _INDEX_REF_KEYS)
    problems = [
        *_want_str(doc, "repo", "generated", "expires", "index_torrent", "infohash", "magnet"),
        *_want_str(ref, "path", "sha256"),
        *_want_int(doc, "sequence"),
        *_want_int(ref, "size", "uncompressed_size"),
    ]
    if problems:
        raise StorageError(f"latest.asc: {'; '.join(problems)}")
    _check_times_and_sequence(doc)
    if not (_relative(ref["path"]) and _relative(doc["index_torrent"])):
        raise StorageError("latest.asc: an index path is not relative")
    keys = (ref["path"], ref["path"] + ".sig", doc["index_torrent"])
    return Pointer(doc["repo"], doc["sequence"], doc["generated"], doc["expires"], (), legacy_keys=keys, outdated=True)


def _exact_keys(where: str, doc: dict[str, Any], keys: set[str]) -> None:
    missing, extra = sorted(keys - doc.keys()), sorted(doc.keys() - keys)
    if missing or extra:
        raise StorageError(f"{where}: missing keys {missing}, unexpected keys {extra}")


def _want_str(doc: dict[str, Any], *keys: str) -> list[str]:
    return [f"{key} is not a string" for key in keys if not isinstance(doc[key], str)]


def _want_int(doc: dict[str, Any], *keys: str) -> list[str]:
    return [f"{key} is not an integer" for key in keys if isinstance(doc[key], bool) or not isinstance(doc[key], int)]


def _relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and all(part not in ("", ".", "..") for part in parts) and "\\" not in path
