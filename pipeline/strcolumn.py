"""A column of strings by number, kept in compressed blocks: the object keys of a run at a million files.

A list of str costs ~150 bytes an object key (the str object and its slot); a run that publishes a
million packages spools over two million objects. Here the strings are appended in order and every
`BLOCK` of them joined and compressed (`scratch.pack`) (keys written in order share long prefixes, ~30 bytes a key),
and the block set aside in the scratch file (`pipeline.scratch`): memory keeps 12 bytes a block.
Reading one decodes its block; the few blocks decoded last are kept, since readers go in order.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from pipeline.scratch import SpilledBlocks, pack, unpack
from pipeline.sequences import ItemEquality

BLOCK = 64
_CACHED = 64  # decoded blocks kept: a merge of ~40 sorted runs reads ~40 blocks at once (publish._Written)
_SEP = "\0"  # a block holding it (never in an object key) is kept as a tuple


def copied(text: str) -> str:
    """A new string equal to `text`. Kept instead of one string in 64 of the caller's (a block's first), so
    that those do not keep alive every memory arena the caller's strings shared: at a million paths, ~100 MB
    of freed strings would still count in RSS."""
    return text[:1] + text[1:]


class StringColumn:
    """Strings appended in order, read by number."""

    __slots__ = ("_blocks", "_cache", "_odd", "_open", "_recent")

    def __init__(self) -> None:
        self._blocks = SpilledBlocks()
        self._odd: dict[int, tuple[str, ...]] = {}  # a block holding the separator, kept as it is (empty on disk)
        self._open: list[str] = []  # the block being filled
        self._cache: dict[int, tuple[str, ...]] = {}
        # the block read last and its strings (one tuple: threads may race to replace it, never tear it)
        self._recent: tuple[int, tuple[str, ...]] = (-1, ())

    def __len__(self) -> int:
        return len(self._blocks) * BLOCK + len(self._open)

    def append(self, text: str) -> None:
        self._open.append(text)
        if len(self._open) == BLOCK:
            self._close_block()

    def extend(self, texts: Sequence[str]) -> None:
        """`append` each of `texts`, a block's worth at a time."""
        at = 0
        while at < len(texts):
            room = BLOCK - len(self._open)
            self._open += texts[at : at + room]
            at += room
            if len(self._open) == BLOCK:
                self._close_block()

    def _close_block(self) -> None:
        if any(_SEP in item for item in self._open):
            self._odd[len(self._blocks)] = tuple(self._open)
            self._blocks.append(b"")
        else:
            self._blocks.append(pack(_SEP.join(self._open).encode("utf-8", "surrogatepass")))
        self._open = []

    def __getitem__(self, number: int) -> str:
        if number < 0:
            raise IndexError(number)
        block, at = divmod(number, BLOCK)
        recent, items = self._recent
        if block == recent:
            return items[at]
        return self.block(block)[at]

    def block(self, block: int) -> Sequence[str]:
        """The strings of block number `block` (`BLOCK` of them, fewer in the last)."""
        if block == len(self._blocks):
            return self._open
        return self._block(block)

    def _block(self, block: int) -> tuple[str, ...]:
        cached = self._cache.get(block)
        if cached is not None:
            self._recent = (block, cached)
            return cached
        items = self._decoded(block)
        if len(self._cache) >= _CACHED:
            try:
                del self._cache[next(iter(self._cache))]
            except (KeyError, RuntimeError, StopIteration):  # another thread (the mirror probes) evicted it
                pass
        self._cache[block] = items
        self._recent = (block, items)
        return items

    def _decoded(self, block: int) -> tuple[str, ...]:
        odd = self._odd.get(block)
        if odd is not None:
            return odd
        return tuple(unpack(self._blocks[block]).decode("utf-8", "surrogatepass").split(_SEP))

    def __iter__(self) -> Iterator[str]:
        """Every string in order, each block decoded once and not kept (a reader in order needs no cache)."""
        for block in range(len(self._blocks)):
            yield from self._decoded(block)
        yield from list(self._open)


class SortedColumn(ItemEquality, Sequence[str]):
    """Strings in ascending order in a StringColumn, found by binary search (`bisect_left`, `in`): the scan's
    paths at a million files, ~15 bytes a path where a list of str costs ~100. The first string of each
    block is kept as it is, to find a string's block without decoding any other."""

    __slots__ = ("_column", "_firsts", "_last")

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._column = StringColumn()
        self._firsts: list[str] = []
        self._last: str | None = None
        for text in texts:
            self.append(text)

    def append(self, text: str) -> None:
        """Add `text`, which must not sort before the last one added (ValueError)."""
        if self._last is not None and text < self._last:
            raise ValueError(f"{text!r} sorts before {self._last!r}: the strings must ascend")
        if len(self._column) % BLOCK == 0:
            self._firsts.append(copied(text))
        self._column.append(text)
        self._last = text

    def extend(self, texts: Sequence[str]) -> None:
        """`append` each of `texts`; ValueError, with none of them added, when they do not ascend from the last."""
        if not texts:
            return
        last = self._last
        for text in texts:
            if last is not None and text < last:
                raise ValueError(f"{text!r} sorts before {last!r}: the strings must ascend")
            last = text
        count = len(self._column)
        self._firsts += [copied(texts[at]) for at in range(-count % BLOCK, len(texts), BLOCK)]
        self._column.extend(texts)
        self._last = last

    def __len__(self) -> int:
        return len(self._column)

    @property
    def last(self) -> str | None:
        """The string added last (None: none yet)."""
        return self._last

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if type(index) is int and index >= 0:  # the common case, read millions of times: no range made
            return self._column[index]  # IndexError past the end
        if isinstance(index, slice):
            return [self._column[number] for number in range(len(self))[index]]
        return self._column[range(len(self))[index]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._column)

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        at = self.bisect_left(text)
        return at < len(self) and self._column[at] == text

    def bisect_left(self, text: str) -> int:
        """Where `text` would go: the number of strings that sort before it (`bisect.bisect_left`)."""
        block = bisect_left(self._firsts, text)  # the blocks before it start below `text`
        if block == 0:
            return 0
        return (block - 1) * BLOCK + bisect_left(self._column.block(block - 1), text)
