"""Equality for the project's lazy sequences (a file table, a sorted column, a plan's keys): item by item,
in order, as a tuple's, with any sequence but a str or bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ItemEquality:
    """Mixin for a Sequence: equal to another sequence of equal items in the same order; unhashable."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(self, Sequence) or not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        mine: Sequence[Any] = self
        return len(mine) == len(other) and all(a == b for a, b in zip(mine, other, strict=True))

    __hash__ = None  # type: ignore[assignment]
