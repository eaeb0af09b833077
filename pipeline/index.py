"""The index document and the pointer payload (DESIGN section 5): build, encode, decode, decide.

Pure functions: no gpg, no storage. Decoding treats its input as hostile (it comes back from the
destination or a mirror): sizes are checked before anything is decompressed, and every error is a
one-line StorageError.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import zstandard

from pipeline.errors import PipelineError, SnapshotError, StorageError
from pipeline.model import IndexRef, PackageRecord, Pointer

INDEX_FORMAT = "mirrorseed-index/1"
POINTER_FORMAT = "mirrorseed-pointer/1"
MAX_SEQUENCE = 2**53 - 1  # clients parse JSON numbers as doubles and reject anything larger

# Measured on a 56-62 MB synthetic bookworm index (63,440 packages, random hashes), one core: level 6
# compresses in ~0.4 s to the best ratio below level 16 (levels 9-15 are slower and no smaller; 16 takes
# ~9 s, 19 ~35 s for ~15 % less). Changing it changes every index's bytes, hence its SHA-256.
ZSTD_LEVEL = 6

_DECODE_STEP = 256  # compressed bytes fed per step of decode_index
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


def index_document(
    *,
    repo: str,
    sequence: int,
    generated: datetime,
    webseeds: Sequence[str],
    trackers: Sequence[str],
    packages: Sequence[PackageRecord],
) -> dict[str, Any]:
    """The index document (DESIGN 5), packages sorted by path; a duplicate path is a SnapshotError."""
    _check_sequence(sequence)
    ordered = sorted(packages, key=lambda record: record.path)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.path == after.path:
            raise SnapshotError(f"{after.path}: listed twice in the snapshot: remove the duplicate entry")
    return {
        "format": INDEX_FORMAT,
        "repo": repo,
        "sequence": sequence,
        "generated": rfc3339(generated),
        "webseeds": list(dict.fromkeys(webseeds)),  # de-duplicated, first occurrence kept
        "trackers": list(dict.fromkeys(trackers)),
        "packages": [record.to_json() for record in ordered],
    }


@dataclass(frozen=True)
class EncodedIndex:
    """The compressed index as published: bytes, their SHA-256 (hex), size, and the JSON's size."""

    data: bytes
    sha256: str
    size: int
    uncompressed_size: int


def encode_index(doc: dict[str, Any]) -> EncodedIndex:
    """Canonical JSON (sorted keys, no spaces, UTF-8) in one zstd frame with content size and checksum.

    Same document, same bytes: level fixed, single-threaded, no timestamps in zstd frames.
    """
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=True)
    data = compressor.compress(raw)
    return EncodedIndex(data=data, sha256=hashlib.sha256(data).hexdigest(), size=len(data), uncompressed_size=len(raw))


def decode_index(data: bytes, *, uncompressed_size: int) -> dict[str, Any]:
    """Decompress and parse an index whose JSON is exactly `uncompressed_size` bytes (from the pointer).

    The frame's declared size is checked first (python-zstandard ignores output caps when a frame
    declares its size), then the frame is decompressed in small steps, counting the output and stopping
    as soon as it passes `uncompressed_size`, since a frame may declare nothing or lie. One complete
    frame (checksum verified), nothing after it. StorageError on any mismatch.
    """
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
    raw = bytearray()
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    consumed = 0
    try:
        # Small input steps bound each step's output (at most ~32,768:1 for RLE blocks, so ~8 MiB).
        while consumed < len(data) and not decompressor.eof:
            chunk = data[consumed : consumed + _DECODE_STEP]
            consumed += len(chunk)
            raw += decompressor.decompress(chunk)
            if len(raw) > uncompressed_size:
                raise StorageError(
                    f"index: decompresses to more than the {uncompressed_size} bytes the pointer declares: "
                    "refused (zstd bomb?)"
                )
    except zstandard.ZstdError as err:
        raise StorageError(f"index: zstd decompression failed ({err}): the object is corrupt") from err
    if not decompressor.eof:
        raise StorageError("index: the zstd frame is truncated: the object is corrupt")
    if consumed - len(decompressor.unused_data) != len(data):
        raise StorageError("index: unexpected data after the zstd frame: the object is corrupt")
    if len(raw) != uncompressed_size:
        raise StorageError(
            f"index: decompresses to {len(raw)} bytes, the pointer declares {uncompressed_size}: refused"
        )
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise StorageError(f"index: not UTF-8 JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise StorageError(f"index: format is {found!r}, expected {INDEX_FORMAT!r}")
    return doc


def _h12(sha256: str) -> str:
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"{sha256!r}: not a lowercase hex SHA-256")
    return sha256[:12]


def index_key(sequence: int, sha256: str) -> str:
    """Destination key of the compressed index: `index/<seq>-<h12>/index.json.zst`."""
    _check_sequence(sequence)
    return f"index/{sequence}-{_h12(sha256)}/index.json.zst"


def index_torrent_key(sequence: int, sha256: str) -> str:
    """Destination key of the index torrent: `index/<seq>-<h12>.torrent`."""
    _check_sequence(sequence)
    return f"index/{sequence}-{_h12(sha256)}.torrent"


def _check_sequence(sequence: int) -> None:
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence!r}: must be an integer from 1 to 2^53-1")


def encode_pointer(pointer: Pointer) -> bytes:
    """The pointer payload: JSON, keys sorted, 2-space indent (users read it), UTF-8, trailing newline."""
    return (json.dumps(pointer.to_json(), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_POINTER_KEYS = {"format", "repo", "sequence", "generated", "expires", "index", "index_torrent", "infohash", "magnet"}
_INDEX_REF_KEYS = {"path", "size", "uncompressed_size", "sha256"}


def decode_pointer(data: bytes) -> Pointer:
    """Parse and validate a pointer payload (after its signature was checked); StorageError if invalid."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise StorageError(f"latest.asc: the payload is not UTF-8 JSON ({err})") from err
    if not isinstance(doc, dict):
        raise StorageError("latest.asc: the payload is not a JSON object")
    if doc.get("format") != POINTER_FORMAT:
        raise StorageError(f"latest.asc: format is {doc.get('format')!r}, expected {POINTER_FORMAT!r}")
    _exact_keys("latest.asc", doc, _POINTER_KEYS)
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
    checks = [
        (1 <= doc["sequence"] <= MAX_SEQUENCE, "sequence must be from 1 to 2^53-1"),
        (ref["size"] >= 0 and ref["uncompressed_size"] >= 0, "index sizes must not be negative"),
        (bool(_SHA256_RE.fullmatch(ref["sha256"])), "index.sha256 is not 64 lowercase hex digits"),
        (bool(_INFOHASH_RE.fullmatch(doc["infohash"])), "infohash is not 40 lowercase hex digits"),
        (bool(_RFC3339_RE.fullmatch(doc["generated"])), "generated is not YYYY-MM-DDTHH:MM:SSZ"),
        (bool(_RFC3339_RE.fullmatch(doc["expires"])), "expires is not YYYY-MM-DDTHH:MM:SSZ"),
        (_relative(ref["path"]) and _relative(doc["index_torrent"]), "an index path is not relative"),
        (doc["magnet"].startswith("magnet:?"), "magnet is not a magnet URI"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise StorageError(f"latest.asc: {'; '.join(failed)}")
    try:
        parse_rfc3339(doc["generated"])
        parse_rfc3339(doc["expires"])
    except ValueError as err:
        raise StorageError(f"latest.asc: {err}") from err
    return Pointer(
        repo=doc["repo"],
        sequence=doc["sequence"],
        generated=doc["generated"],
        expires=doc["expires"],
        index=IndexRef(ref["path"], ref["size"], ref["uncompressed_size"], ref["sha256"]),
        index_torrent=doc["index_torrent"],
        infohash=doc["infohash"],
        magnet=doc["magnet"],
    )


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


@dataclass(frozen=True)
class Decision:
    """What this run publishes: a new index and pointer, only a re-signed pointer, or nothing."""

    action: Literal["publish", "resign", "noop"]
    sequence: int


def decide(
    *,
    current: Pointer | None,
    current_records: Sequence[PackageRecord] | None,
    current_webseeds: Sequence[str],
    current_trackers: Sequence[str],
    records: Sequence[PackageRecord],
    webseeds: Sequence[str],
    trackers: Sequence[str],
    now: datetime,
    resign_before: timedelta,
) -> Decision:
    """DESIGN 5: publish (sequence+1) on any change, else re-sign when expiry is near, else nothing.

    Records compare by value, ignoring `description` and input order; webseeds and trackers compare as
    sets. `current_records` None (the current index could not be read) counts as a change.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if current is None:
        return Decision("publish", 1)
    if not 1 <= current.sequence < 2**53:
        raise PipelineError(
            f"latest.asc: sequence {current.sequence} is outside 1..2^53-1; clients reject it: "
            "rotate the signing key and reset the destination"
        )
    changed = (
        current_records is None
        or _by_path(current_records) != _by_path(records)
        or set(current_webseeds) != set(webseeds)
        or set(current_trackers) != set(trackers)
    )
    if changed:
        if current.sequence >= MAX_SEQUENCE:
            raise PipelineError(
                f"latest.asc: sequence {current.sequence} cannot grow past 2^53-1: "
                "rotate the signing key and reset the destination"
            )
        return Decision("publish", current.sequence + 1)
    try:
        expires = parse_rfc3339(current.expires)
    except ValueError as err:
        raise PipelineError(f"latest.asc: expires {err}") from err
    if expires - now > resign_before:
        return Decision("noop", current.sequence)
    return Decision("resign", current.sequence)


def _by_path(records: Sequence[PackageRecord]) -> list[PackageRecord]:
    return sorted(records, key=lambda record: record.path)
