"""Helpers for the project's lazy sequences: equality (a file table, a sorted column, a plan's keys) item by
item, in order, as a tuple's, with any sequence but a str or bytes; and sorts that never hold every key
(`sorted_by_key`) or every row (`sorted_spilled`) at once."""

from __future__ import annotations

import heapq
import marshal
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from pipeline.scratch import SpilledBlocks

SORT_RUN = 65536  # numbers sorted at once by `sorted_by_key` (their keys held meanwhile)
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


def sorted_by_key(numbers: Sequence[int], key: Callable[[int], str]) -> Iterator[tuple[str, int]]:
    """(key, number) of each of `numbers`, sorted by key; of equal keys, the one given first comes first.

    Sorted a run of `SORT_RUN` numbers at a time, each sorted run set aside in the scratch file, then the
    runs merged, reading `_RUN_WINDOW` numbers of each at a time: only one run's keys are held at once (the
    keys of a million objects would be ~80 MB of strings), and the numbers are not held either (8 bytes
    an object: ~24 MB for the ~3 million objects of a million Debian files)."""
    runs = SpilledBlocks()
    for start in range(0, len(numbers), SORT_RUN):
        runs.append(array("q", sorted(numbers[start : start + SORT_RUN], key=key)).tobytes())
    return heapq.merge(
        *(((key(number), number) for number in _run(runs, run)) for run in range(len(runs))), key=itemgetter(0)
    )


_RUN_WINDOW = 1024  # numbers of a sorted run read back at once


def _run(runs: SpilledBlocks, run: int) -> Iterator[int]:
    width = array("q").itemsize
    size = runs.size(run)
    for start in range(0, size, _RUN_WINDOW * width):
        yield from array("q", runs.read(run, start, min(_RUN_WINDOW * width, size - start)))


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
        blocks.append(zlib.compress(marshal.dumps(rows[start : start + SPILL_BLOCK]), 1))
    return blocks


def _run_rows(blocks: SpilledBlocks) -> Iterator[tuple[Any, ...]]:
    for number in range(len(blocks)):
        rows: list[tuple[Any, ...]] = marshal.loads(zlib.decompress(blocks[number]))
        yield from rows
