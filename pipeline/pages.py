"""What a run keeps of its listing pages until they are published and remembered, in columns.

A full build of a million-file pool renders ~540,000 browse pages; a re-run reuses most of them. A tuple
of (key, inputs digest, SHA-256) strings costs ~300 bytes a page, a dict entry of the reused ones ~250.
Here the keys are in compressed blocks (`pipeline.strcolumn`) and the two digests 32 raw bytes each, all
set aside in the scratch file (`pipeline.scratch`): a few bytes a page in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.scratch import FixedColumn
from pipeline.strcolumn import StringColumn

_HEX = frozenset("0123456789abcdef")
_NONE, _RAW, _ODD = 0, 1, 2  # a page's inputs: none (""), 32 raw bytes, or kept as given (with its SHA-256)


class PageDigests:
    """Pages in the order added: each key with the SHA-256 of its bytes and the digest of the inputs it was
    rendered from ("" for a page rendered on every run)."""

    __slots__ = ("_inputs", "_keys", "_kinds", "_odd", "_sha256")

    def __init__(self) -> None:
        self._keys = StringColumn()
        self._kinds = bytearray()
        self._inputs = FixedColumn(32)  # of each page whose inputs are raw, none for the others
        self._sha256 = FixedColumn(32)  # of each page (zeros for an odd one)
        self._odd: dict[int, tuple[str, str]] = {}  # (inputs, SHA-256) not both lowercase hex: kept as given

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, inputs: str, sha256: str) -> None:
        number = len(self._keys)
        self._keys.append(key)
        if not _is_hex(sha256) or (inputs and not _is_hex(inputs)):
            self._odd[number] = (inputs, sha256)
            self._kinds.append(_ODD)
            self._sha256.append(bytes(32))
            return
        self._sha256.append(bytes.fromhex(sha256))
        if inputs:
            self._kinds.append(_RAW)
            self._inputs.append(bytes.fromhex(inputs))
        else:
            self._kinds.append(_NONE)

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        """(key, inputs, SHA-256) of each page, in the order added."""
        raw = iter(self._inputs)  # the raw inputs, in the order of their pages
        for number, (key, kind, digest) in enumerate(zip(self._keys, self._kinds, self._sha256, strict=True)):
            if kind == _ODD:
                yield (key, *self._odd[number])
            elif kind == _RAW:
                yield key, next(raw).hex(), digest.hex()
            else:
                yield key, "", digest.hex()

    def digests(self) -> Iterator[tuple[str, str]]:
        """(key, SHA-256) of each page, in the order added."""
        for key, _, sha256 in self:
            yield key, sha256


def _is_hex(text: str) -> bool:
    return len(text) == 64 and _HEX.issuperset(text)
