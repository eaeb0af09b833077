"""Stanzas of a Debian `Packages` stream, read the way python-debian's own parser reads them, several times faster.

`read_stanzas` yields, for each stanza (paragraph), the values of the requested fields, exactly as
python-debian's `Deb822` (its pure-Python parser) gives them, field names compared case-insensitively
in ASCII (Debian policy §5.1; apt does the same); an absent field is "". Its rules, kept here:

- A line is split at `\\n` only; `\\r` at either end of a line is dropped; a line starting with `#` is
  dropped as a comment. A line that is then empty or only ASCII whitespace ends the stanza.
- `Name: value` starts a field (no space or tab in the name; spaces before the colon allowed); the value
  is stripped of (Unicode) whitespace. A later line starting with whitespace continues the current
  field: it is appended, as `"\\n" + line`, unless it is only whitespace. Any other line is ignored
  (it does not end the field). A field given twice keeps its last value.

Where python-debian dropped part of the file or failed, this refuses or reads on: a stanza with none of
the requested fields is yielded (all ""), where python-debian ended the whole file at it; OpenPGP armor
lines (`-----BEGIN PGP …`), which made it skip or merge stanzas, are refused; a value holding a line
break other than `\\n` (`\\v`, `\\x1c`, U+2028, …) before a non-space, which made it raise ValueError,
is kept as it is (the scanner's checks refuse it in a Filename, Size or SHA256).

Ordinary text takes a fast path: one regular expression finds the requested fields' lines and the
stanza ends in a block of whole stanzas (about a read chunk), so Python handles ~8 matches a stanza, not
every line. A block holding anything the fast path does not model (comments, `-----` lines, blank lines
of whitespace or more than one in a row, `\\r`, `\\v`, `\\f`, `\\x1c`-`\\x1f`, a line after a requested
field that is neither a field nor a continuation) is parsed line by line instead, by a port of
python-debian's loop (tests/unit compare both with python-debian on tricky and on random text).
Memory: a block and the stanza the read ends inside (bounded), never the whole stream.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

from pipeline.errors import SnapshotError
from pipeline.snapshot import bounded
from pipeline.snapshot.bounded import Readable, size_text

_RESYNC = "re-sync the mirror"
# str.isspace() (and `\s` in a str pattern) beyond ASCII: python-debian strips values of these and
# takes a line starting with one as a continuation line (tests/unit check the list against isspace()).
UNICODE_SPACES = (
    "\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_BYTES_SPACE = " \t\n\r\x0b\x0c"  # bytes.isspace(): what python-debian's blank-line test takes as blank
# Characters that send a block down the line-by-line path: python-debian strips `\r` from line ends and
# takes `\v`, `\f` as blank; `\x1c`-`\x1f` are whitespace to str.isspace() but not to bytes.isspace().
_FAST_BLOCKERS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")
# A stanza boundary in raw bytes when there is no b"\n\n" (CRLF files): a line of ASCII whitespace only.
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
# python-debian's `_gpgre` and `_new_field_re` (for one line without its newline).
_ARMOR = re.compile(r"-----(?:BEGIN|END) PGP [^-]+-----[\r\t ]*\Z")
_FIELD_LINE = re.compile(r"(?P<key>[^: \t\n\r\f\v]+)\s*:\s*(?P<data>(?:\S+(?:\s+\S+)*)?)\s*\Z")


def read_stanzas(
    reader: Readable, rel: str, fields: Sequence[str], *, max_line_bytes: int, max_stanza_bytes: int
) -> Iterator[list[str]]:
    """The values of `fields` (in that order) for each stanza of the UTF-8 stream `reader` (`rel` in messages).

    Reads `bounded.CHUNK_BYTES` at a time; a line longer than `max_line_bytes` or a stanza longer than
    `max_stanza_bytes` is refused (damage or a decompression bomb), as is text that is not UTF-8 (its
    byte offset in the message).
    """
    parser = _parser(tuple(fields))
    pending = bytearray(b"\n")  # a stanza boundary before the first byte: `pending` starts at one
    consumed = -1  # the stream offset of pending[0]
    while chunk := reader.read(bounded.CHUNK_BYTES):
        searched = len(pending) - 1  # a boundary may start at the last byte already held
        pending += chunk
        cut = _last_boundary(pending, searched)
        if cut:
            text = decode_utf8(pending[:cut], rel, consumed)
            del pending[:cut]
            consumed += cut
            yield from parser.parse(text, rel)
        line_start = pending.rfind(b"\n") + 1
        if len(pending) - line_start > max_line_bytes:
            raise SnapshotError(
                f"{rel}: a line longer than {size_text(max_line_bytes)} (byte {consumed + line_start}); it is "
                f"damaged or a decompression bomb, {_RESYNC}"
            )
        if len(pending) > max_stanza_bytes:
            raise SnapshotError(
                f"{rel}: a stanza longer than {size_text(max_stanza_bytes)} (byte {consumed + 1}); it is "
                f"damaged or a decompression bomb, {_RESYNC}"
            )
    yield from parser.parse(decode_utf8(pending, rel, consumed), rel)


def decode_utf8(data: bytes | bytearray, rel: str, offset: int = 0) -> str:
    """`data` (which starts at byte `offset` of `rel`) as text; refused in one line unless it is UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"{rel}: not valid UTF-8 (byte {offset + exc.start}); {_RESYNC}") from None


def _last_boundary(data: bytearray, start: int) -> int:
    """Where the last stanza boundary at or after `start` is: the offset of its blank line, or 0 if none.

    Everything before it is whole stanzas; its blank line (and what follows) stays for the next block.
    """
    at = data.rfind(b"\n\n", start)
    if at >= 0:
        return at + 1
    line_start = max(data.rfind(b"\n", 0, start + 1), 0)  # a blank line of `\r` or spaces may begin earlier
    starts = [blank.start() for blank in _BLANK_LINE.finditer(data, line_start)]
    return starts[-1] + 1 if starts else 0


@functools.cache
def _parser(fields: tuple[str, ...]) -> _Parser:
    return _Parser(fields)


class _Parser:
    """Parses blocks of whole stanzas for one tuple of field names."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self._count = len(fields)
        self._index = {name.lower(): i for i, name in enumerate(fields)}
        self._exact = {name: i for i, name in enumerate(fields)} | self._index  # most files: no lower() needed
        names = "|".join(map(re.escape, fields))
        # One match per line start that matters, as (mark, name, first line, continuation lines, odd):
        # - mark "\n": a blank line, the end of a stanza; any other mark is a line `_parse_fast` does not
        #   model (a second blank line, a comment, `-----`, a line of spaces or tabs only);
        # - a requested field: between its name and the colon python-debian allows whitespace after a
        #   space or tab (a name runs up to a space, tab or colon: "Size\xa0:" names another field); a
        #   continuation line is not blank; `odd` is the next line when it is neither a field nor blank
        #   (python-debian ignores it, and takes continuation lines after it as the field's).
        self._fast = re.compile(
            r"\n(?:(?=(\n\n|\n|#|-----|[ \t]+(?:\n|\Z)))"
            rf"|({names})(?:[ \t][ \t{UNICODE_SPACES}]*)?:([^\n]*)((?:\n[ \t]+[^ \t\n][^\n]*)*)"
            r"(?:(?=\n[^: \t\n]+[ \t]*:)|(?=(\n[^\n])))?)",
            re.ASCII | re.IGNORECASE,
        )

    def parse(self, text: str, rel: str) -> list[list[str]]:
        """The stanzas of `text`, which holds whole stanzas (and blank lines around them)."""
        core = "\n" + text.strip("\n")
        if len(core) == 1:
            return []
        if any(char in core for char in _FAST_BLOCKERS):
            return self._parse_lines(core, rel)
        return self._parse_fast(core) or self._parse_lines(core, rel)

    def _parse_fast(self, core: str) -> list[list[str]] | None:
        """`core` ("\n" + stanzas), or None if a line in it needs `_parse_lines`."""
        stanzas: list[list[str]] = []
        exact, index, count = self._exact, self._index, self._count
        values = [""] * count
        for mark, name, first, continued, odd in self._fast.findall(core):
            if mark:
                if mark != "\n":
                    return None
                stanzas.append(values)
                values = [""] * count
            elif odd:
                return None
            else:
                value = first.strip()
                if continued:
                    value += continued if continued.isascii() else _without_space_lines(continued)
                position = exact.get(name)
                values[index[name.lower()] if position is None else position] = value
        stanzas.append(values)
        return stanzas

    def _parse_lines(self, core: str, rel: str) -> list[list[str]]:
        """Line by line, as python-debian's `Deb822._internal_parser` and the loops feeding it do."""
        stanzas: list[list[str]] = []
        values: list[str] | None = None
        current: int | None = None
        for raw in core.split("\n"):
            if raw.startswith("#"):
                continue
            line = raw.strip("\r")
            if not line.strip(_BYTES_SPACE):
                if values is not None:
                    stanzas.append(values)
                    values = None
                continue
            if line.startswith("-----") and _ARMOR.match(line):
                raise SnapshotError(
                    f"{rel}: an OpenPGP armor line ({line.strip()!r}) in a Packages file, which is never "
                    f"signed inline; {_RESYNC}"
                )
            if values is None:
                values, current = [""] * self._count, None
            match = _FIELD_LINE.match(line)
            if match is not None:
                key = match["key"]
                current = self._index.get(key.lower()) if key.isascii() else None
                if current is not None:
                    values[current] = match["data"]
            elif current is not None and line[0].isspace() and not line.isspace():
                values[current] += "\n" + line
        if values is not None:
            stanzas.append(values)
        return stanzas


def _without_space_lines(continued: str) -> str:
    """Continuation lines ("\\n"-prefixed) without those that are only (Unicode) whitespace."""
    return "".join("\n" + line for line in continued.split("\n")[1:] if not line.isspace())
