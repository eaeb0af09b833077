"""pipeline.run.build_index_objects: a publication's index parts, compressed in threads, come out as one
thread would make them, in order, each with its torrent and, from a changed previous part, its delta."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

import pipeline.index
import pipeline.run
from pipeline.config import Settings
from pipeline.index import apply_delta, decompress_index
from pipeline.model import Pointer, ShardRef
from pipeline.run import build_index_objects
from pipeline.spool import Spool
from pipeline.strcolumn import StringColumn

GENERATED = datetime(2026, 12, 1, tzinfo=UTC)


def _records(shard: str, count: int, version: int = 1) -> StringColumn:
    column = StringColumn()
    for i in range(count):
        column.append(json.dumps({"path": f"{shard}/file-{i:04d}.bin", "size": i, "version": version}))
    return column


@dataclass(frozen=True)
class _Built:
    pointer: Pointer
    objects: dict[str, bytes]


def _build(threads: int, monkeypatch: pytest.MonkeyPatch, version: int = 1, previous: _Built | None = None) -> _Built:
    monkeypatch.setattr(pipeline.run, "SHARD_THREADS", threads)
    shards = {name: _records(name, 120, version) for name in ("a", "b", "c")}
    parts = {(shard.name, shard.part): shard for shard in previous.pointer.shards} if previous else {}
    with Spool() as spool:
        made = build_index_objects(
            spool=spool, settings=Settings(repo="r", trackers=("http://127.0.0.1:6969/announce",)),
            public_url="https://example.org/pub", sequence=7, generated=GENERATED,
            expires=GENERATED + timedelta(days=7), shard_json=shards,
            previous=lambda name, part: parts.get((name, part)),
            previous_json=lambda shard: None if previous is None else _json(previous, shard),
        )  # fmt: skip
        return _Built(made.pointer, {ref.key: spool.load(ref).data for ref in made.artifacts})


def _json(built: _Built, shard: ShardRef) -> bytes:
    return decompress_index(built.objects[shard.path], uncompressed_size=shard.uncompressed_size)


@pytest.mark.parametrize("threads", [2, 3])
def test_parts_compressed_in_threads_are_those_one_thread_makes_in_order(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline.index, "PART_MAX_BYTES", 1500)  # 120 records of ~60 bytes: ~5 parts a shard
    compressed_in: set[str] = set()
    encode_json = pipeline.run.encode_json

    def spied(raw: bytes | bytearray, raw_sha256: str | None = None) -> pipeline.index.EncodedIndex:
        compressed_in.add(threading.current_thread().name.rpartition("_")[0])
        return encode_json(raw, raw_sha256)

    monkeypatch.setattr(pipeline.run, "encode_json", spied)
    alone, threaded = _build(1, monkeypatch), _build(threads, monkeypatch)
    assert compressed_in == {"mirrorseed-shard"}, "every part is compressed in the threads"
    assert threaded == alone
    names = [(shard.name, shard.part) for shard in threaded.pointer.shards]
    assert names == [(name, part) for name in "abc" for part in range(len(names) // 3)] and len(names) >= 12
    listed = [json.loads(_json(threaded, shard))["packages"] for shard in threaded.pointer.shards]
    assert [record["path"] for part in listed for record in part] == [
        f"{name}/file-{i:04d}.bin" for name in "abc" for i in range(120)
    ], "every record once, in order"
    for shard in threaded.pointer.shards:
        assert shard.torrent in threaded.objects and shard.delta is None


def test_each_changed_part_has_its_delta_from_the_previous_part_of_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.index, "PART_MAX_BYTES", 1500)
    first = _build(2, monkeypatch)
    second = _build(2, monkeypatch, version=2, previous=first)
    assert second == _build(1, monkeypatch, version=2, previous=first)
    before = {(shard.name, shard.part): shard for shard in first.pointer.shards}
    assert [(s.name, s.part) for s in second.pointer.shards] == list(before)
    for shard in second.pointer.shards:
        old = before[(shard.name, shard.part)]
        assert shard.delta is not None and shard.delta.from_sha256 == old.uncompressed_sha256
        patched = apply_delta(
            _json(first, old), second.objects[shard.delta.path], uncompressed_size=shard.uncompressed_size
        )
        assert patched == _json(second, shard)
