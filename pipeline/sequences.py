"""Helpers for the project's lazy sequences: equality (a file table, a sorted column, a plan's keys) item by
item, in order, as a tuple's, with any sequence but a str or bytes; and a sort by key that never holds every
key at once."""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

SORT_RUN = 65536  # numbers sorted at once by `sorted_by_key` (their keys held meanwhile)


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

    Sorted a run of `SORT_RUN` numbers at a time, then the runs merged, so that only one run's keys are held
    at once: the keys of a million objects would be ~80 MB of strings."""
    runs = [
        array("q", sorted(numbers[start : start + SORT_RUN], key=key)) for start in range(0, len(numbers), SORT_RUN)
    ]
    return heapq.merge(*(((key(number), number) for number in run) for run in runs), key=itemgetter(0))
