"""pipeline.scratch: blocks set aside on disk, read back exactly, in this process and a forked child; and
the external sorts of pipeline.sequences, which set their runs aside there."""

from __future__ import annotations

import gc
import os
import random
import weakref
from array import array
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline import sequences
from pipeline.errors import PipelineError
from pipeline.scratch import RECORDS, FixedColumn, RecordArray, SpilledBlocks, own_scratch, pack, scratch, unpack


def test_blocks_read_back_whole_and_the_last_comes_off() -> None:
    blocks = SpilledBlocks()
    written = [bytes([i % 251]) * (i * 13) for i in range(50)]
    for data in written:
        blocks.append(data)
    assert len(blocks) == 50
    assert [blocks[i] for i in range(50)] == written
    assert blocks.pop() == written[-1] and len(blocks) == 49
    blocks.append(b"again")
    assert blocks[49] == b"again" and blocks[48] == written[48]


@pytest.mark.parametrize("count", [0, 1, RECORDS - 1, RECORDS, RECORDS + 1, 3 * RECORDS + 5])
def test_fixed_records_read_back_by_number_and_in_order_at_block_edges(count: int) -> None:
    column = FixedColumn(5)
    records = [i.to_bytes(5, "big") for i in range(count)]
    for record in records:
        column.append(record)
    assert len(column) == count
    assert [column[i] for i in range(count)] == records
    assert list(column) == records
    with pytest.raises(IndexError):
        column[count]
    with pytest.raises(ValueError, match="4 bytes in a column of 5"):
        column.append(b"abcd")
    extended = FixedColumn(5)
    if records:
        extended.append(records[0])  # an open block not empty: the first extend fills it up first
    for start in range(min(1, count), count, 7):  # 7 records at a time, across the blocks' edges
        extended.extend(b"".join(records[start : start + 7]))
    assert len(extended) == count and list(extended) == records == [extended[i] for i in range(count)]
    with pytest.raises(ValueError, match="9 bytes of records in a column of 5"):
        extended.extend(b"123456789")


def test_a_forked_child_reads_its_parents_blocks_and_writes_its_own_file() -> None:
    blocks = SpilledBlocks()
    blocks.append(b"parent's block")
    before = scratch().size
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: read, refuse to grow the parent's blocks, write a file of its own
        try:
            ok = blocks[0] == b"parent's block"
            try:
                blocks.append(b"would overwrite the parent's next block")
                ok = False
            except PipelineError:
                pass
            mine = SpilledBlocks()
            mine.append(b"child's block")
            ok = ok and mine[0] == b"child's block" and scratch().pid == os.getpid()
            os.write(writer, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(writer)
    try:
        answer = os.read(reader, 2)
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    assert answer == b"ok"
    assert scratch().size == before  # nothing the child wrote went to the parent's file
    blocks.append(b"parent's next block")
    assert blocks[0] == b"parent's block" and blocks[1] == b"parent's next block"


@pytest.mark.parametrize("run", [4, 100])
def test_sorted_by_key_merges_runs_and_keeps_equal_keys_in_the_order_given(
    monkeypatch: pytest.MonkeyPatch, run: int
) -> None:
    """Each key is asked for once, in the order the numbers are given, however many runs there are."""
    monkeypatch.setattr(sequences, "SPILL_RUN", run)
    monkeypatch.setattr(sequences, "SPILL_BLOCK", 3)
    keys = ["d", "b", "a", "b", "c", "a", "e", "b", "a", "z", "b"]
    numbers = array("q", [10, 3, 7, 1, 0, 5, 2, 9, 8, 4, 6])  # not ascending: ties follow the order given
    name = dict(zip(numbers, keys, strict=True))
    asked: list[int] = []

    def key(number: int) -> str:
        asked.append(number)
        return name[number]

    merged = list(sequences.sorted_by_key(numbers, key))
    assert merged == sorted(zip(keys, numbers, strict=True), key=lambda pair: pair[0])
    assert asked == list(numbers)
    assert list(sequences.sorted_by_key(range(0), str)) == []


@pytest.mark.parametrize("run", [3, 100])
def test_sorted_spilled_merges_spilled_runs_and_keeps_equal_keys_in_the_order_given(
    monkeypatch: pytest.MonkeyPatch, run: int
) -> None:
    """With more rows than a run, the runs go to the scratch file in blocks and are merged back."""
    monkeypatch.setattr(sequences, "SPILL_RUN", run)
    monkeypatch.setattr(sequences, "SPILL_BLOCK", 2)
    keys = ["d", "b", "a", "b", "c", "a", "e", "b", "a", "z", "b"]
    rows = [(key, number, None if number % 2 else f"text {number}") for number, key in enumerate(keys)]
    before = scratch().size

    merged = list(sequences.sorted_spilled(iter(rows)))

    assert merged == sorted(rows, key=lambda row: row[0])
    assert (scratch().size > before) == (run < len(rows))  # spilled only when there is more than one run
    assert list(sequences.sorted_spilled(iter([]))) == []


def test_records_are_zeros_until_written_and_read_back_in_any_order() -> None:
    count = 3 * RECORDS + 7
    records = RecordArray(count, 6)
    assert len(records) == count and records[count - 1] == bytes(6) and records[0] == bytes(6)
    order = list(range(count))
    random.Random(5).shuffle(order)
    for number in order:
        records[number] = number.to_bytes(6, "big")
        assert records[number] == number.to_bytes(6, "big")  # a write over the block read last is seen
    assert [records[number] for number in range(count)] == [n.to_bytes(6, "big") for n in range(count)]
    other = RecordArray(10, 6)  # set aside after the first: neither writes over the other
    other[9] = b"abcdef"
    assert records[count - 1] == (count - 1).to_bytes(6, "big") and other[0] == bytes(6)
    for bad in (-1, count):
        with pytest.raises(IndexError):
            records[bad]
    with pytest.raises(ValueError, match="5 bytes in an array of 6"):
        records[0] = b"12345"


def test_a_run_has_a_scratch_file_of_its_own_freed_with_what_it_made() -> None:
    outer = scratch()
    with own_scratch():
        inner = scratch()
        blocks = SpilledBlocks()
        blocks.append(b"made in the run")
    assert inner is not outer and scratch() is outer
    assert blocks[0] == b"made in the run"  # still readable after the run, from its own file
    gone = weakref.ref(inner)
    del inner, blocks
    gc.collect()
    assert gone() is None  # the file is closed: its space goes back to TMPDIR


def test_packed_blocks_come_back_whole_in_threads_packing_at_once() -> None:
    blocks = [b"", b"\x00", *(f"pool/main/p/pkg{n}/pkg{n}_1.{n}_amd64.deb".encode() * (n % 50 + 1) for n in range(400))]

    def round_trip(start: int) -> list[bytes]:
        return [unpack(pack(block)) for block in blocks[start:] + blocks[:start]]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(round_trip, range(0, 400, 25)))
    for start, result in zip(range(0, 400, 25), results, strict=True):
        assert result == blocks[start:] + blocks[:start]
    assert len(pack(blocks[-1])) < len(blocks[-1]) // 4  # compressed
