"""pipeline.strcolumn: strings appended in order read back by number, in compressed blocks."""

from __future__ import annotations

import bisect
import tracemalloc

import pytest

from pipeline.strcolumn import _CACHED, BLOCK, SortedColumn, StringColumn, copied


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
    assert held / count < 8  # blocks on disk (pipeline.scratch); a list of these str: ~130 bytes a key


@pytest.mark.parametrize("count", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 7])
def test_a_sorted_column_finds_strings_as_bisect_does(count: int) -> None:
    """bisect_left and `in` answer like the list's, for every string, every gap, duplicates across a block
    edge and strings before the first or after the last."""
    texts = sorted([f"pool/main/{i % 7}/p{i // 3}" for i in range(count)] + ["pool/main/3/p1"] * (count > 0) * BLOCK)
    column = SortedColumn(texts)
    assert len(column) == len(texts) and list(column) == texts and column == texts and column != [*texts, "z"]
    assert column[-1:] == texts[-1:] and [column[i] for i in range(-len(texts), len(texts))] == texts + texts
    probes = {
        "",
        "a",
        "zzz",
        "pool/main/3/p1",
        *texts,
        *(text + "\0" for text in texts),
        *(text[:-1] for text in texts),
    }
    for probe in sorted(probes):
        assert column.bisect_left(probe) == bisect.bisect_left(texts, probe), probe
        assert (probe in column) == (probe in texts), probe
    assert 3 not in column


def test_a_sorted_column_refuses_a_string_out_of_order() -> None:
    column = SortedColumn(["a", "b", "b"])
    with pytest.raises(ValueError, match="must ascend"):
        column.append("a")
    assert list(column) == ["a", "b", "b"]


def test_a_sorted_column_keeps_no_string_of_the_callers() -> None:
    """The blocks' first strings are copies: one caller's string in 64 kept alive would keep every memory
    arena the caller's strings shared (RSS then counts them all after they are freed)."""
    texts = [f"pool/main/p/pkg{i:05d}.deb" for i in range(3 * BLOCK)]
    column = SortedColumn(texts)
    firsts = column._firsts
    assert firsts == texts[::BLOCK]
    assert not any(first is text for first, text in zip(firsts, texts[::BLOCK], strict=True))
    text = texts[1]
    assert copied(text) == text and copied(text) is not text


@pytest.mark.parametrize("split", [0, 1, BLOCK - 1, BLOCK, BLOCK + 3])
def test_extend_is_append_of_each_across_block_edges(split: int) -> None:
    """Strings appended one by one, then in batches of every size across block edges: the same column, the
    same blocks' first strings; a batch that does not ascend from the last string adds nothing."""
    texts = [f"pool/main/p/pkg{i:05d}.deb" for i in range(3 * BLOCK + 5)]
    one_by_one, batched = SortedColumn(), SortedColumn()
    for text in texts:
        one_by_one.append(text)
    batched.extend(texts[:split])
    for at in range(split, len(texts), BLOCK - 1):
        batched.extend(texts[at : at + BLOCK - 1])
    assert list(batched) == texts and batched._firsts == one_by_one._firsts == texts[::BLOCK]
    assert [batched[i] for i in range(len(texts))] == texts and batched.last == texts[-1]
    with pytest.raises(ValueError, match="must ascend"):
        batched.extend(["zzz", "a"])
    with pytest.raises(ValueError, match="must ascend"):
        batched.extend(["a"])
    assert list(batched) == texts and batched.last == texts[-1]
    plain = StringColumn()
    plain.extend(texts)
    assert list(plain) == texts and plain[BLOCK] == texts[BLOCK]
