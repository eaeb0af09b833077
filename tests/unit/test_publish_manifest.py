"""pipeline.publish: the upload plan trusts the key -> SHA-256 manifest only where the listing agrees."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import zstandard

import pipeline.publish as publishing
from pipeline import sequences
from pipeline.manifest import ManifestEntry
from pipeline.model import Artifact
from pipeline.objects import MANIFEST_KEY, OLD_MANIFEST_KEYS, make_artifact
from pipeline.publish import (
    _SEND_EVERY,
    MANIFEST_BATCH,
    MANIFEST_FORMAT,
    NewContent,
    Publication,
    _listed_or_written,
    _manifest_line,
    _Written,
    load_manifest,
    publish,
    read_destination,
    write_new_content,
)
from pipeline.spool import Spool
from pipeline.storage import ObjectInfo
from pipeline.storage.local import LocalStorage

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def publication(spool: Spool, pages: dict[str, bytes], new_content: NewContent | None = None) -> Publication:
    torrents = (make_artifact(f"torrents/{k}.torrent", v) for k, v in pages.items())
    content = spool.add_all(torrents) if new_content is None else new_content.spool_all(torrents)
    listings = spool.add_all(make_artifact(f"browse/{k}/index.html", v) for k, v in pages.items())
    keys = frozenset(ref.key for ref in (*content, *listings))
    return Publication(spool, content, spool.add_all(()), None, None, listings, keys, "0" * 64)


def test_manifest_round_trip_and_unchanged_objects_are_skipped(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    pages = {f"p{i}": f"page {i} ü".encode() * (i + 1) for i in range(50)}
    with Spool() as spool:
        first = publish(storage, publication(spool, pages), now=NOW)
    assert len(first.plan.put) == 100 and first.plan.skip == ()
    assert first.plan.put_bytes == 2 * sum(map(len, pages.values()))  # a torrent and a page of each
    manifest = load_manifest(storage, {info.key: info for info in storage.list()})
    assert manifest["torrents/p7.torrent"].sha256 == hashlib.sha256(pages["p7"]).hexdigest()
    assert len(manifest) >= 100

    pages["p3"] = b"changed"
    with Spool() as spool:
        second = publish(storage, publication(spool, pages), now=NOW)
    assert sorted(second.plan.put) == ["browse/p3/index.html", "torrents/p3.torrent"]
    assert second.plan.put_bytes == 2 * len(b"changed")
    assert (tmp_path / "torrents/p3.torrent").read_bytes() == b"changed"


def test_a_manifest_that_disagrees_with_the_listing_is_not_trusted(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    pages = {"a": b"one", "b": b"two"}
    with Spool() as spool:
        publish(storage, publication(spool, pages), now=NOW)
    (tmp_path / "torrents/a.torrent").write_bytes(b"tampered")  # new ETag: its manifest entry no longer counts
    with Spool() as spool:
        again = publish(storage, publication(spool, pages), now=NOW)
    assert again.plan.put == ("torrents/a.torrent",)
    assert (tmp_path / "torrents/a.torrent").read_bytes() == b"one"


def test_an_old_or_garbled_manifest_is_reported_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = LocalStorage(tmp_path)
    pages = {"a": b"one"}
    with Spool() as spool:
        publish(storage, publication(spool, pages), now=NOW)
    (tmp_path / MANIFEST_KEY).write_bytes(b"not zstd")
    old = tmp_path / OLD_MANIFEST_KEYS[0]
    old.write_text(json.dumps({"format": "mirrorseed-manifest/1", "objects": {}}))
    with caplog.at_level(logging.WARNING), Spool() as spool:
        again = publish(storage, publication(spool, pages), now=NOW)
    assert again.plan.put == ()  # compared by content instead: equal, so nothing is re-sent
    assert any("unreadable manifest" in r.getMessage() for r in caplog.records)
    assert not old.exists()
    assert len(load_manifest(storage, {info.key: info for info in storage.list()})) >= 2


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_a_manifest_line_with_a_non_json_number_is_not_trusted(
    bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """json.loads reads `NaN` as a float: the entry would be trusted with a NaN last-reached time
    (retention compares against it). Strict JSON refuses the line; the manifest is rebuilt."""
    storage = LocalStorage(tmp_path)
    with Spool() as spool:
        publish(storage, publication(spool, {"a": b"one"}), now=NOW)
    stored = (tmp_path / MANIFEST_KEY).read_bytes()
    lines = zstandard.ZstdDecompressor().stream_reader(stored).read().decode().splitlines()
    assert lines[0] == MANIFEST_FORMAT and len(lines) >= 3
    entry = json.loads(lines[1])
    lines[1] = json.dumps(entry[:4]).removesuffix("]") + f", {bad}]"
    (tmp_path / MANIFEST_KEY).write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(storage, {info.key: info for info in storage.list()})
    assert manifest == {}
    assert any(f"{bad} is not a JSON number" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "line",
    [
        ('torrents/a b/ü\u2028"q\\.deb.torrent', "0" * 64, '"d41d8cd98f00b204e9800998ecf8427e"', 0, 1764000000.123456),
        ("k\x01\x7f", "s", "e", 12345678901, 1e20),
        ("k", "s", "e-5", 5, 0.1),
    ],
)
def test_a_manifest_line_is_what_json_dumps_writes(line: tuple[str, str, str, int, float]) -> None:
    """The manifest's lines are formatted without json.dumps (a million objects a run), to the same bytes."""
    assert _manifest_line(*line) == json.dumps(list(line), ensure_ascii=False) + "\n"


def write_manifest_lines(root: Path, lines: list[str]) -> None:
    (root / MANIFEST_KEY).parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([MANIFEST_FORMAT, *lines]) + "\n"
    (root / MANIFEST_KEY).write_bytes(zstandard.ZstdCompressor().compress(text.encode()))


def test_a_manifest_of_several_batches_is_read_whole(tmp_path: Path) -> None:
    """Lines are parsed a batch at a time: every entry on either side of a batch's end is kept, blank lines
    are skipped."""
    count = 2 * MANIFEST_BATCH + 3
    lines = [json.dumps([f"torrents/{i:06}.torrent", f"{i:064x}", f"e{i}", i, 1.5]) for i in range(count)]
    lines.insert(MANIFEST_BATCH, "   ")
    write_manifest_lines(tmp_path, lines)
    manifest = load_manifest(LocalStorage(tmp_path), None)
    assert len(manifest) == count
    assert manifest[f"torrents/{MANIFEST_BATCH:06}.torrent"].sha256 == f"{MANIFEST_BATCH:064x}"
    assert manifest[f"torrents/{count - 1:06}.torrent"].size == count - 1


def test_a_manifest_not_in_key_order_is_read_whole(tmp_path: Path) -> None:
    """This tool writes the manifest's keys in order and keeps them so; one in another order (an earlier or
    another writer) is sorted when read, a key given twice keeping its last entry."""
    lines = [json.dumps([f"torrents/{i % 7}-{i}.torrent", f"{i:064x}", f"e{i}", i, 1.5]) for i in range(200)]
    lines.append(json.dumps(["torrents/0-0.torrent", "f" * 64, "again", 9, 2.5]))
    write_manifest_lines(tmp_path, lines)
    manifest = load_manifest(LocalStorage(tmp_path), None)
    assert len(manifest) == 200 and list(manifest) == sorted(manifest)
    assert manifest["torrents/3-10.torrent"].sha256 == f"{10:064x}"
    assert manifest["torrents/0-0.torrent"] == ManifestEntry("f" * 64, "again", 9, 2.5)


@pytest.mark.parametrize("line", ['["a", "s", "e", 1, 1.5], ["b", "s", "e", 2, 1.5]', '["a", "s", "e", 1, 1.5]]'])
def test_a_manifest_line_that_is_not_one_array_is_not_trusted(
    line: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifest_lines(tmp_path, ['["z", "s", "e", 1, 1.5]', line])
    with caplog.at_level(logging.WARNING):
        assert load_manifest(LocalStorage(tmp_path), None) == {}
    assert any("unreadable manifest" in r.getMessage() for r in caplog.records)


def test_what_a_run_wrote_is_read_back_by_key_its_last_write_each() -> None:
    with Spool() as spool:
        spooled = spool.put(make_artifact("torrents/b.torrent", b"b"))
        written = _Written(spool)
        written.add(ObjectInfo("torrents/b.torrent", 1, "e1", 5.0), spooled)
        written.add(ObjectInfo("latest.asc", 3, "e2", None), "f" * 64)
        written.add(ObjectInfo("a", 2, "e3", 7.5), "0" * 64)
        written.add(ObjectInfo("latest.asc", 4, "e4", 9.0), "1" * 64)  # written again: the last write counts
        got = list(written.by_key())
    assert len(written) == 4
    assert got == [
        ("a", (2, "e3", 7.5, "0" * 64)),
        ("latest.asc", (4, "e4", 9.0, "1" * 64)),
        ("torrents/b.torrent", (1, "e1", 5.0, hashlib.sha256(b"b").hexdigest())),
    ]
    nameless = _Written(spool)
    nameless.add(ObjectInfo("k", 1, "e", None), "2" * 64)
    assert next(nameless.by_key())[1][2] is None


def test_writes_the_background_writer_reports_are_read_back_as_added_one_by_one() -> None:
    """`add_spooled` (the background writer's results, in job order) keeps what `add` of each would: the
    same items by key; a count of results other than the entries' is an error, never a shifted manifest."""
    with Spool() as spool:
        numbers = [spool.put(make_artifact(f"torrents/{name}.torrent", name.encode())) for name in "cab"]
        results = [(1, "e-c", 3.0), (1, "e-a", None), (1, "e-b", 5.5)]
        bulk, one_by_one = _Written(spool), _Written(spool)
        bulk.add_spooled(numbers, iter(results))
        for number, (size, etag, modified) in zip(numbers, results, strict=True):
            one_by_one.add(ObjectInfo(spool.key(number), size, etag, modified), number)
        assert list(bulk.by_key()) == list(one_by_one.by_key())
        assert [key for key, _ in bulk.by_key()] == ["torrents/a.torrent", "torrents/b.torrent", "torrents/c.torrent"]
        assert next(bulk.by_key())[1] == (1, "e-a", None, hashlib.sha256(b"a").hexdigest())
        with pytest.raises(ValueError, match="2 writes reported for 3 objects"):
            _Written(spool).add_spooled(numbers, iter(results[:2]))


def test_writes_of_several_sort_runs_merge_sorted_with_the_last_write_of_each_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """by_key sorts SPILL_RUN writes at a time and merges the runs: a key written in two runs (and twice in
    one) comes once, as its last write; spool entries and given digests mix."""
    monkeypatch.setattr(sequences, "SPILL_RUN", 7)
    rng = random.Random(5)
    keys = [f"{rng.choice(('torrents', 'metalinks', 'browse'))}/k{rng.randrange(40):02}" for _ in range(60)]
    expected: dict[str, tuple[int, str, float | None, str]] = {}
    with Spool() as spool:
        written = _Written(spool)
        for i, key in enumerate(keys):
            info = ObjectInfo(key, i, f"etag-{i}", float(i) if i % 3 else None)
            if i % 2:
                number = spool.put(make_artifact(key, f"data {i}".encode()))
                written.add(info, number)
                expected[key] = (i, info.etag, info.modified, hashlib.sha256(f"data {i}".encode()).hexdigest())
            else:
                written.add(info, f"{i:064x}")
                expected[key] = (i, info.etag, info.modified, f"{i:064x}")
        got = list(written.by_key())
    assert [key for key, _ in got] == sorted(expected)
    assert dict(got) == expected


def test_listed_and_written_keys_merge_sorted_once_each() -> None:
    b, c = (1, "e", None, "s"), (1, "e", 2.0, "t")
    merged = list(_listed_or_written(["a", "b", "d"], [("b", b), ("c", c)]))
    assert merged == [("a", None), ("b", b), ("c", c), ("d", None)]
    assert list(_listed_or_written([], [("b", b), ("c", c)])) == [("b", b), ("c", c)]  # a first publication
    assert list(_listed_or_written(["a"], [])) == [("a", None)]
    assert list(_listed_or_written([], [])) == []


def _objects(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not str(path.relative_to(root)).startswith(".mirrorseed")  # manifest: other ETags
    }


def _manifest_rows(storage: LocalStorage) -> list[tuple[str, str, int, str]]:
    manifest = load_manifest(storage, {info.key: info for info in storage.list()})
    return sorted((key, entry.sha256, entry.size, entry.etag) for key, entry in manifest.items())


class _Told:
    def __init__(self) -> None:
        self.objects = self.nbytes = 0

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        return None

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        self.objects += count
        self.nbytes += nbytes

    def finish(self) -> None:
        return None


def test_new_content_written_early_by_a_child_publishes_what_one_process_does(tmp_path: Path) -> None:
    pages = {f"tools/café/p{i} #1": f"page {i} ü".encode() * (i + 1) for i in range(40)}
    serial, early_root = tmp_path / "serial", tmp_path / "early"
    for root, minimum in ((serial, None), (early_root, 1)):
        storage = LocalStorage(root)
        with Spool() as spool:
            destination = read_destination(storage)
            if minimum is None:
                publish(storage, publication(spool, pages), now=NOW, destination=destination)
                continue
            with write_new_content(storage, spool, destination, dry_run=False, minimum=1) as new_content:
                release = publication(spool, pages, new_content)
                early = new_content.written_early()
                assert early is not None and len(early.numbers) == 40
                # the child writes while this process goes on: the torrents appear before publish is called
                last = root / "torrents/tools/café/p39 #1.torrent"
                deadline = time.monotonic() + 10
                while not last.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert (root / "torrents/tools/café/p0 #1.torrent").read_bytes() == pages["tools/café/p0 #1"]
                assert not (root / "browse").exists() and not (root / MANIFEST_KEY).exists()
                told = _Told()
                result = publish(storage, release, now=NOW, destination=destination, early=early, progress=told)
                # the child's writes are told as they are taken, then the others': each once
                assert (told.objects, told.nbytes) == (len(result.plan.put), result.plan.put_bytes)
                assert early.writer.count == 80  # the pages too, sent after the pointer
            assert len(result.plan.put) == 80 and result.plan.put_bytes == 2 * sum(map(len, pages.values()))
    assert _objects(early_root) == _objects(serial)
    early_rows = _manifest_rows(LocalStorage(early_root))
    assert [row[:3] for row in early_rows] == [row[:3] for row in _manifest_rows(LocalStorage(serial))]
    etags = {info.key: info.etag for info in LocalStorage(early_root).list()}
    assert all(etags[key] == etag for key, _, _, etag in early_rows)  # the child's ETags are the files'


def test_new_content_is_written_while_the_rest_is_still_being_built(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    first = tmp_path / "dest/torrents/d0/t0.torrent"
    seen_while_building: list[bool] = []

    def torrents() -> Iterator[Artifact]:
        for i in range(3 * _SEND_EVERY):
            if i == 2 * _SEND_EVERY:  # two batches were sent: the child writes them while this one is made
                deadline = time.monotonic() + 10
                while not first.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen_while_building.append(first.exists())
            yield make_artifact(f"torrents/d{i % 9}/t{i}.torrent", b"t%d" % i)

    with (
        Spool() as spool,
        write_new_content(storage, spool, read_destination(storage), dry_run=False, minimum=_SEND_EVERY) as new,
    ):
        refs = new.spool_all(torrents())
        early = new.written_early()
        assert early is not None and list(early.numbers) == list(refs.numbers)
        results = list(early.writer.results())
    assert seen_while_building == [True]
    assert len(results) == 3 * _SEND_EVERY
    assert (tmp_path / "dest/torrents/d5/t1535.torrent").read_bytes() == b"t1535"


def test_only_new_keys_are_written_early_and_a_replaced_object_waits_for_publish(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with Spool() as spool:
        publish(storage, publication(spool, {"a": b"one", "b": b"two"}), now=NOW)
    changed = {"a": b"ONE", "b": b"two", "c": b"three"}
    with Spool() as spool:
        destination = read_destination(storage)
        with write_new_content(storage, spool, destination, dry_run=False, minimum=1) as new_content:
            release = publication(spool, changed, new_content)
            early = new_content.written_early()
            assert early is not None and [spool.key(n) for n in early.numbers] == ["torrents/c.torrent"]
            written = tmp_path / "torrents/c.torrent"  # created in place: it exists before its bytes are in
            deadline = time.monotonic() + 10
            while not (written.exists() and written.read_bytes() == b"three") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert written.read_bytes() == b"three"  # written by the child
            assert (tmp_path / "torrents/a.torrent").read_bytes() == b"one"  # not before publish
            result = publish(storage, release, now=NOW, destination=destination, early=early)
        assert sorted(result.plan.put) == ["browse/a/index.html", "browse/c/index.html", "torrents/a.torrent",
                                           "torrents/c.torrent"]  # fmt: skip
    assert (tmp_path / "torrents/a.torrent").read_bytes() == b"ONE"
    assert (tmp_path / "torrents/c.torrent").read_bytes() == b"three"
    empty = LocalStorage(tmp_path / "empty")
    for dry_run, minimum, starts in ((True, 1, False), (False, 4, False), (False, 3, True)):
        with Spool() as spool:
            with write_new_content(empty, spool, read_destination(empty), dry_run=dry_run, minimum=minimum) as new:
                release = publication(spool, changed, new)  # three new torrents there
                assert len(release.content) == 3
                early = new.written_early()
                assert (early is not None) == starts  # not in a dry run, nor for fewer new objects than `minimum`
                if early is not None:
                    assert early.writer.count == 3 and len(list(early.writer.results())) == 3


def test_into_an_empty_destination_the_child_starts_at_once_when_enough_objects_are_expected(tmp_path: Path) -> None:
    objects = {"a": b"one", "b": b"two", "c": b"three"}
    held = LocalStorage(tmp_path / "held")
    with Spool() as spool:
        publish(held, publication(spool, {"z": b"old"}), now=NOW)
    for root, expected, starts in (("empty", 4, True), ("empty-few", 3, False), ("held", 4, False)):
        storage = LocalStorage(tmp_path / root)
        with (
            Spool() as spool,
            write_new_content(
                storage, spool, read_destination(storage), dry_run=False, minimum=4, expected=expected
            ) as new,
        ):
            assert _writers() == (1 if starts else 0), root  # before anything is built
            release = publication(spool, objects, new)  # three new torrents: fewer than `minimum`
            early = new.written_early()
            assert (early is not None) == starts, root
            if early is not None:  # started: it takes every new object
                assert early.writer.count == 3 and len(list(early.writer.results())) == 3
                assert len(release.content) == 3


def _writers() -> int:
    """How many background writers this process has running (its children running that module)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            count += parent == os.getpid() and b"pipeline.storage.background" in (stat.parent / "cmdline").read_bytes()
    return count


def test_pages_the_child_writes_after_the_pointer_enter_the_manifest_at_their_place(tmp_path: Path) -> None:
    """A second publication: pages rewritten, kept and new, keys that sort before, among and after the others;
    the child writes the new torrents, then the pages while the manifest's other lines are made."""
    first = {"m/é": b"one", "b": b"two", "z/last": b"three", "k": b"kept"}
    second = {"m/é": b"ONE", "b": b"two", "z/last": b"THREE", "k": b"kept", "a": b"new", "zz": b"new too"}
    roots = {"serial": tmp_path / "serial", "child": tmp_path / "child"}
    for name, root in roots.items():
        storage = LocalStorage(root)
        with Spool() as spool:
            publish(storage, publication(spool, first), now=NOW)
        with Spool() as spool:
            destination = read_destination(storage)
            if name == "serial":
                publish(storage, publication(spool, second), now=NOW, destination=destination)
                continue
            with write_new_content(storage, spool, destination, dry_run=False, minimum=1) as new_content:
                release = publication(spool, second, new_content)
                early = new_content.written_early()
                assert early is not None and len(early.numbers) == 2  # the two new torrents
                manifest_file = root / MANIFEST_KEY
                first_manifest, seen = manifest_file.read_bytes(), []
                result = publish(
                    storage, release, now=NOW, destination=destination, early=early,
                    alongside=partial(lambda file, old, seen: seen.append(file.read_bytes() == old),
                                      manifest_file, first_manifest, seen),
                )  # fmt: skip
                assert early.writer.count == 2 + 4  # and the pages of a, m/é, z/last, zz (b and k kept)
                assert seen == [True]  # the caller's work, once, before the new manifest
                assert manifest_file.read_bytes() != first_manifest
        assert sorted(result.plan.put)[:4] == ["browse/a/index.html", "browse/m/é/index.html",
                                               "browse/z/last/index.html", "browse/zz/index.html"]  # fmt: skip
    assert _objects(roots["child"]) == _objects(roots["serial"])
    rows = _manifest_rows(LocalStorage(roots["child"]))
    assert [row[:3] for row in rows] == [row[:3] for row in _manifest_rows(LocalStorage(roots["serial"]))]
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    etags = {info.key: info.etag for info in LocalStorage(roots["child"]).list()}
    assert all(etags[key] == etag for key, _, _, etag in rows)  # the child's ETags are the files'
    assert {key for key, *_ in rows} >= {f"browse/{k}/index.html" for k in second}


class _ReadSizes(io.BytesIO):
    """A spill that records the size of every read, and of every write when it is the output."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.reads: list[int] = []
        self.writes: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.reads.append(len(data))
        return data

    def write(self, data: bytes | bytearray | memoryview, /) -> int:  # type: ignore[override]
        self.writes.append(len(memoryview(data)))
        return super().write(data)


@pytest.mark.parametrize("seed", range(5))
def test_the_manifest_spill_is_merged_a_chunk_at_a_time(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "_MERGE_CHUNK", 64)
    rng = random.Random(seed)
    other = [f"line {n}\n".encode() for n in range(rng.randint(0, 300))]
    marks = sorted(rng.sample(range(len(other) + 1), rng.randint(0, len(other) + 1)))
    later = [f"later {n}\n" for n in range(len(marks))]
    if marks and seed % 2:
        marks = [0] * len(marks)  # every later line before the first other one; the rest is one long tail
    spill = _ReadSizes(b"".join(other))
    offsets = [sum(len(line) for line in other[:at]) for at in marks]
    expected = bytearray()
    for at, line in enumerate(other):
        expected += b"".join(later[n].encode() for n, mark in enumerate(marks) if mark == at)
        expected += line
    expected += b"".join(later[n].encode() for n, mark in enumerate(marks) if mark == len(other))
    out = _ReadSizes()
    publishing._merge_spill(spill, offsets, later, out)
    assert out.getvalue() == bytes(expected)
    assert max(spill.reads, default=0) <= 64  # never the rest of the spill at once
    longest = max(len(line) for line in [*other, *later, ""])
    assert max(out.writes) < 64 + max(64, longest)  # nor every later line at one mark at once


class _Asked(frozenset[str]):
    """The keys a publication reaches, noting each key the manifest asks about."""

    asked: list[str]

    def __contains__(self, key: object) -> bool:
        self.asked.append(str(key))
        return super().__contains__(key)


def test_the_manifest_asks_what_is_referenced_only_of_keys_the_run_did_not_write(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with Spool() as spool:
        publish(storage, publication(spool, {"a": b"one", "b": b"two"}), now=NOW)
    later = NOW + timedelta(days=1)
    with Spool() as spool:
        second = publication(spool, {"a": b"one", "b": b"TWO"})  # a: kept as it is; b: written again
        referenced = _Asked(second.referenced)
        referenced.asked = []
        publish(storage, replace(second, referenced=referenced), now=later)
    # each listed key once for the deletions' plan, then by the manifest only those it held and did not write
    assert Counter(key for key in referenced.asked if "/" in key and not key.startswith(".")) == {
        "browse/a/index.html": 2, "torrents/a.torrent": 2, "browse/b/index.html": 1, "torrents/b.torrent": 1,
    }  # fmt: skip
    manifest = load_manifest(storage, {info.key: info for info in storage.list()})
    assert {key: entry.referenced for key, entry in manifest.items() if "/" in key} == dict.fromkeys(
        ["browse/a/index.html", "browse/b/index.html", "torrents/a.torrent", "torrents/b.torrent"],
        later.timestamp(),
    )  # every key of the publication: referenced now, asked or not


def test_new_browse_pages_go_to_the_child_as_rendered_and_a_rewritten_page_waits_for_the_pointer(
    tmp_path: Path,
) -> None:
    """Pages rendered in another order than their keys' (a directory's page before its parent's); the new ones
    are written before publish is called, a rewritten one only after the pointer; the manifest as one process
    makes it."""
    first = {"m/é": b"one", "b": b"two", "k": b"kept"}
    second = {"m/é": b"ONE", "b": b"two", "k": b"kept", "a": b"new", "zz/y": b"new too", "c/d": b"new 3"}
    roots = {"serial": tmp_path / "serial", "child": tmp_path / "child"}
    for name, root in roots.items():
        storage = LocalStorage(root)
        with Spool() as spool:
            publish(storage, publication(spool, first), now=NOW)
        with Spool() as spool:
            destination = read_destination(storage)
            if name == "serial":
                publish(storage, publication(spool, second), now=NOW, destination=destination)
                continue
            with write_new_content(storage, spool, destination, dry_run=False, minimum=1) as new_content:
                content = new_content.spool_all(make_artifact(f"torrents/{k}.torrent", v) for k, v in second.items())
                early = new_content.written_early()
                rendered = [spool.put(make_artifact(f"browse/{k}/index.html", v)) for k, v in reversed(second.items())]
                for number in rendered:
                    new_content.add_page(number)
                early = new_content.pages_written_early(early)
                assert early is not None
                assert [spool.key(n) for n in early.pages] == [
                    "browse/c/d/index.html", "browse/zz/y/index.html", "browse/a/index.html"
                ], "the new pages, as rendered"  # fmt: skip
                new_page, rewritten = root / "browse/c/d/index.html", root / "browse/m/é/index.html"
                deadline = time.monotonic() + 10
                while not (new_page.exists() and new_page.read_bytes() == b"new 3") and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert new_page.read_bytes() == b"new 3"  # written by the child before publish
                assert rewritten.read_bytes() == b"one"  # not before the pointer
                listings = spool.refs(array("I", sorted(rendered, key=spool.key)))
                keys = frozenset(ref.key for ref in (*content, *listings))
                release = Publication(spool, content, spool.add_all(()), None, None, listings, keys, "0" * 64)
                told = _Told()
                result = publish(storage, release, now=NOW, destination=destination, early=early, progress=told)
                assert (told.objects, told.nbytes) == (len(result.plan.put), result.plan.put_bytes)
                assert early.writer.count == 3 + 3 + 1  # new torrents, new pages, then m/é's page after the pointer
            assert rewritten.read_bytes() == b"ONE"
    assert _objects(roots["child"]) == _objects(roots["serial"])
    rows = _manifest_rows(LocalStorage(roots["child"]))
    assert [row[:3] for row in rows] == [row[:3] for row in _manifest_rows(LocalStorage(roots["serial"]))]
    etags = {info.key: info.etag for info in LocalStorage(roots["child"]).list()}
    assert all(etags[key] == etag for key, _, _, etag in rows)
