"""A column of strings by number, kept in compressed blocks: the object keys of a run at a million files.

A list of str costs ~150 bytes an object key (the str object and its slot); a run that publishes a
million packages spools over two million objects. Here the strings are appended in order and every
`BLOCK` of them joined and zlib-compressed (keys written in order share long prefixes): ~30 bytes a key.
Reading one decodes its block; the few blocks decoded last are kept, since readers go in order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

BLOCK = 64
_CACHED = 64  # decoded blocks kept: a merge of ~40 sorted runs reads ~40 blocks at once (publish._Written)
_SEP = "\0"  # a block holding it (never in an object key) is kept as a tuple


class StringColumn:
    """Strings appended in order, read by number."""

    __slots__ = ("_blocks", "_cache", "_open")

    def __init__(self) -> None:
        self._blocks: list[bytes | tuple[str, ...]] = []
        self._open: list[str] = []  # the block being filled
        self._cache: dict[int, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._blocks) * BLOCK + len(self._open)

    def append(self, text: str) -> None:
        self._open.append(text)
        if len(self._open) == BLOCK:
            if any(_SEP in item for item in self._open):
                self._blocks.append(tuple(self._open))
            else:
                self._blocks.append(zlib.compress(_SEP.join(self._open).encode("utf-8", "surrogatepass"), 1))
            self._open = []

    def __getitem__(self, number: int) -> str:
        if number < 0:
            raise IndexError(number)
        block, at = divmod(number, BLOCK)
        if block == len(self._blocks):
            return self._open[at]
        return self._block(block)[at]

    def _block(self, block: int) -> tuple[str, ...]:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        stored = self._blocks[block]
        items = (
            stored
            if isinstance(stored, tuple)
            else tuple(zlib.decompress(stored).decode("utf-8", "surrogatepass").split(_SEP))
        )
        if len(self._cache) >= _CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[block] = items
        return items

    def __iter__(self) -> Iterator[str]:
        for block in range(len(self._blocks)):
            yield from self._block(block)
        yield from list(self._open)
