"""Bencoding (BEP 3), both directions: the one place that writes and reads it.

Writing is by small byte-level helpers, because building ~63,000 package torrents through a general
encoder (or torf) costs ~100x more; reading is a strict decoder for untrusted documents (canonical
integers and lengths, sorted unique dictionary keys, bounded nesting), which keeps the raw bytes of
the top-level `info` value: their SHA-1 is the v1 infohash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_DEPTH = 32
_INT_RE = re.compile(rb"-?(0|[1-9][0-9]*)")


def string(value: str | bytes) -> bytes:
    """A bencoded string (UTF-8 for str)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return b"%d:%s" % (len(raw), raw)


def string_list(values: Iterable[str | bytes]) -> bytes:
    """A bencoded list of strings."""
    return b"l" + b"".join(string(v) for v in values) + b"e"


def integer(value: int) -> bytes:
    return b"i%de" % value


def encode(value: object) -> bytes:
    """Any value `decode_dict` returns (bytes, int, list, dict with bytes keys), bencoded again; dictionary
    keys sorted, so a decoded canonical document encodes to the same bytes."""
    if isinstance(value, bytes):
        return string(value)
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, list):
        return b"l" + b"".join(encode(item) for item in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(encode(key) + encode(value[key]) for key in sorted(value)) + b"e"
    raise ValueError(f"cannot bencode {type(value).__name__}")


@dataclass(frozen=True)
class Decoded:
    """A decoded top-level dictionary and the raw bytes of its `info` value (None if it has none)."""

    value: dict[bytes, object]
    info: bytes | None


def decode_dict(data: bytes) -> Decoded:
    """Decode `data`, which must be exactly one bencoded dictionary; ValueError naming the first problem."""
    decoder = _Decoder(data)
    top = decoder.value(0)
    if decoder.pos != len(data):
        raise ValueError(f"unexpected data after the dictionary at byte {decoder.pos}")
    if not isinstance(top, dict):
        raise ValueError("not a bencoded dictionary")
    return Decoded(top, decoder.info)


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.info: bytes | None = None

    def _need(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("truncated")
        return self.data[self.pos]

    def value(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise ValueError("nested too deeply")
        lead = self._need()
        if lead == ord("i"):
            end = self.data.find(b"e", self.pos + 1)
            text = self.data[self.pos + 1 : end] if end >= 0 else b""
            if end < 0 or not _INT_RE.fullmatch(text) or text == b"-0":
                raise ValueError(f"malformed integer at byte {self.pos}")
            self.pos = end + 1
            return int(text)
        if lead == ord("l"):
            self.pos += 1
            items: list[object] = []
            while self._need() != ord("e"):
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if lead == ord("d"):
            self.pos += 1
            out: dict[bytes, object] = {}
            last: bytes | None = None
            while self._need() != ord("e"):
                key = self.value(depth + 1)
                if not isinstance(key, bytes):
                    raise ValueError(f"a dictionary key is not a string (byte {self.pos})")
                if last is not None and key <= last:
                    raise ValueError(f"dictionary keys not sorted or repeated at {key[:40]!r}")
                start = self.pos
                out[key] = self.value(depth + 1)
                if depth == 0 and key == b"info":
                    self.info = self.data[start : self.pos]
                last = key
            self.pos += 1
            return out
        if ord("0") <= lead <= ord("9"):
            colon = self.data.find(b":", self.pos, self.pos + 21)
            text = self.data[self.pos : colon] if colon >= 0 else b""
            if colon < 0 or not text.isdigit() or (len(text) > 1 and text.startswith(b"0")):
                raise ValueError(f"malformed string length at byte {self.pos}")
            start = colon + 1
            end = start + int(text)
            if end > len(self.data):
                raise ValueError("truncated")
            self.pos = end
            return self.data[start:end]
        raise ValueError(f"unexpected byte {lead:#04x} at {self.pos}")
