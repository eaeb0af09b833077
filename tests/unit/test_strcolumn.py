"""pipeline.strcolumn: strings appended in order read back by number, in compressed blocks."""

from __future__ import annotations

import tracemalloc

import pytest

from pipeline.strcolumn import _CACHED, BLOCK, StringColumn


@pytest.mark.parametrize("count", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 7 * BLOCK + 3])
def test_strings_read_back_by_number_and_in_order(count: int) -> None:
    texts = [f"torrents/pool/main/p/pkg{i}/pkg{i}_1.0_amd64.deb.torrent" for i in range(count)]
    column = StringColumn()
    for text in texts:
        column.append(text)
    assert len(column) == count and list(column) == texts
    for number in (*range(count), *reversed(range(count))):  # in order, then against it
        assert column[number] == texts[number]
    for bad in (-1, count, count + BLOCK):
        with pytest.raises(IndexError):
            column[bad]


def test_any_text_round_trips_and_few_blocks_stay_decoded() -> None:
    odd = ["", "ü/日本.deb", "with\0nul", "lone \udc80 surrogate", "x" * 5000, "\ud800 high surrogate"]
    column = StringColumn()
    texts = [odd[i % len(odd)] + str(i) for i in range(3 * BLOCK)] + ["last"]
    for text in texts:
        column.append(text)
    assert list(column) == texts and [column[i] for i in range(len(texts))] == texts
    many = StringColumn()
    for i in range((_CACHED + 5) * BLOCK):
        many.append(str(i))
    assert [many[i] for i in range(len(many))] == [str(i) for i in range(len(many))]
    assert len(many._cache) <= _CACHED


def test_a_key_costs_a_fraction_of_a_list_of_str() -> None:
    count = 20_000
    tracemalloc.start()
    try:
        column = StringColumn()
        for i in range(count):
            column.append(f"metalinks/pool/main/{i % 26:02}/source{i // 4}/package{i}_1.{i % 9}-1_amd64.deb.meta4")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(column) == count
    assert held / count < 40  # a list of these str: ~130 bytes a key
