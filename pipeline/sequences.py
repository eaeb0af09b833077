"""Helpers for the project's lazy sequences: equality (a file table, a sorted column, a plan's keys) item by
item, in order, as a tuple's, with any sequence but a str or bytes; and sorts that never hold every key
(`sorted_by_key`) or every row (`sorted_spilled`) at once."""

from __future__ import annotations

import heapq
import marshal
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from pipeline.scratch import SpilledBlocks, pack, unpack

SPILL_RUN = 32768  # rows sorted at once by `sorted_spilled` (a Packages stanza's row is ~600 bytes)
SPILL_BLOCK = 256  # rows of a spilled run read back at once: the merge holds one block of each run


class ItemEquality:
    """Mixin for a Sequence: equal to another sequence of equal items in the same order; unhashable."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(self, Sequence) or not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        mine: Sequence[Any] = self
        return len(mine) == len(other) and all(a == b for a, b in zip(mine, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


def sorted_by_key(numbers: Iterable[int], key: Callable[[int], str]) -> Iterator[tuple[str, int]]:
    """(key, number) of each of `numbers`, sorted by key; of equal keys, the one given first comes first.

    Through `sorted_spilled`: each key is made once, in the order given (a column's keys are read in the
    order they are stored, a block at a time), and at most one run of keys is held at once (the keys of a
    million objects would be ~80 MB of strings)."""
    return sorted_spilled((key(number), number) for number in numbers)


def sorted_spilled(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """`rows` sorted by their first item; of equal ones, the one given first comes first.

    Each row is a tuple of values `marshal` writes (str, int, None...). `SPILL_RUN` rows are sorted at once and,
    when there are more, each sorted run is set aside in the scratch file (`SPILL_BLOCK` rows to a
    compressed block) and the runs merged: memory holds one run while sorting, one block a run while
    merging (a million Packages stanzas as rows would be ~600 MB)."""
    first, run = itemgetter(0), SPILL_RUN
    runs: list[SpilledBlocks] = []
    held: list[tuple[Any, ...]] = []
    for row in rows:
        held.append(row)
        if len(held) == run:
            held.sort(key=first)
            runs.append(_spilled_run(held))
            held = []
    held.sort(key=first)
    if not runs:
        yield from held
        return
    if held:
        runs.append(_spilled_run(held))
    del held
    yield from heapq.merge(*(_run_rows(blocks) for blocks in runs), key=first)


def _spilled_run(rows: list[tuple[Any, ...]]) -> SpilledBlocks:
    blocks = SpilledBlocks()
    for start in range(0, len(rows), SPILL_BLOCK):
        blocks.append(pack(marshal.dumps(rows[start : start + SPILL_BLOCK])))
    return blocks


def _run_rows(blocks: SpilledBlocks) -> Iterator[tuple[Any, ...]]:
    for number in range(len(blocks)):
        rows: list[tuple[Any, ...]] = marshal.loads(unpack(blocks[number]))
        yield from rows
