"""The one strict JSON reader for every document mirrorseed reads (RFC 8259, I-JSON where it matters).

Python's `json` accepts more than JSON: the constants `NaN`, `Infinity` and `-Infinity`, repeated
object keys (the last one wins, so two readers of one signed document can disagree), and `\\ud800`
escapes that decode to lone surrogates (not Unicode text: they cannot be encoded back to UTF-8).
`loads_strict` refuses all of them, and bytes that are not UTF-8, with a `StrictJSONError` whose
one-line message names the document. A streaming reader uses `STRICT_DECODER.raw_decode` (its
hooks refuse the constants and repeated keys with `StrictJSONError`, never `json.JSONDecodeError`)
and calls `check_strings` on each value whose text `may_hold_surrogates`.

Encoding is unchanged everywhere: this module only reads.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.errors import StorageError

# Any surrogate code point left after decoding is a lone one: json joins an escaped pair into one
# character, and UTF-8 input cannot hold a surrogate at all, so only a `\u` escape can make one.
_SURROGATE = re.compile("[\ud800-\udfff]")


class StrictJSONError(StorageError, ValueError):
    """A document is not strict JSON. A StorageError (one line, names the document) and a ValueError,
    so a caller that already treats unparsable JSON as invalid (`except ValueError`) keeps doing so."""


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate key {key!r}")
            seen.add(key)
    return doc


def check_strings(value: Any) -> None:
    """StrictJSONError if any string (or key) in a decoded value holds a lone surrogate. Only needed
    when its JSON text contains a `\\u` escape (`may_hold_surrogates`)."""
    if isinstance(value, str):
        if not value.isascii():  # isascii() is O(1) in CPython
            match = _SURROGATE.search(value)
            if match is not None:
                raise StrictJSONError(f"lone surrogate U+{ord(match.group()):04X} in {value[:40]!r}")
    elif isinstance(value, list):
        for item in value:
            check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key)
            check_strings(item)


def may_hold_surrogates(text: str, start: int = 0, end: int | None = None) -> bool:
    """Whether text[start:end] has a `\\u` escape, the only way JSON text can make a lone surrogate."""
    return text.find("\\u", start, len(text) if end is None else end) != -1


STRICT_DECODER = json.JSONDecoder(parse_constant=_constant, object_pairs_hook=_object)


def loads_strict(data: str | bytes, *, what: str) -> Any:
    """Parse one JSON document (bytes must be UTF-8) or raise StrictJSONError("<what>: ...")."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as err:
        raise StrictJSONError(f"{what}: not UTF-8 ({err})") from err
    try:
        value = STRICT_DECODER.decode(text)
        if may_hold_surrogates(text):
            check_strings(value)
    except StrictJSONError as err:
        raise StrictJSONError(f"{what}: not strict JSON: {err}") from err
    except (ValueError, RecursionError) as err:
        raise StrictJSONError(f"{what}: not valid JSON ({err})") from err
    return value
