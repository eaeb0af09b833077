"""pipeline.storage.local: listing, atomic writes, conditional puts."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pipeline.errors import PublishConflictError, StorageError
from pipeline.objects import make_artifact
from pipeline.storage import ObjectInfo, local
from pipeline.storage.local import LOCK_NAME, LocalStorage


def test_list_is_sorted_by_key_filtered_by_prefix_and_skips_what_is_not_an_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    keys = ["b/z.html", "a.txt", "a/b/c.torrent", "a/b.torrent", "browse/index.html", "browse/x y/index.html"]
    for key in keys:
        storage.put(key, key.encode(), content_type="text/plain", cache_control="no-cache")
    root = tmp_path / "dest"
    (root / LOCK_NAME).write_text("")
    (root / "a" / ".c.torrent.123.tmp").write_text("partial")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_text("outside")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    listed = storage.list()
    assert [info.key for info in listed] == sorted(keys)
    assert all(info.size == len(info.key) for info in listed)
    assert [info.key for info in storage.list("browse/")] == ["browse/index.html", "browse/x y/index.html"]
    assert [info.key for info in storage.list("a/b")] == ["a/b.torrent", "a/b/c.torrent"]
    assert LocalStorage(tmp_path / "missing").list() == []


def test_etag_changes_with_every_write_and_conditional_put_checks_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    first = storage.put("latest.asc", b"one", content_type="text/plain", cache_control="no-cache")
    second = storage.put_conditional(
        "latest.asc", b"two", content_type="text/plain", cache_control="no-cache", if_match=first.etag
    )
    assert second.etag != first.etag and (tmp_path / "latest.asc").read_bytes() == b"two"
    with pytest.raises(PublishConflictError):
        storage.put_conditional("latest.asc", b"three", content_type="text/plain", cache_control="no-cache",
                                if_match=first.etag)  # fmt: skip
    with pytest.raises(PublishConflictError):
        storage.put_conditional("latest.asc", b"three", content_type="text/plain", cache_control="no-cache",
                                if_match=None)  # fmt: skip


def test_directories_made_are_remembered_a_bounded_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MADE_MAX", 3)
    storage = LocalStorage(tmp_path / "dest")
    keys = [f"d{i}/sub/x.torrent" for i in range(8)] + ["d0/sub/y.torrent"]
    for key in keys:
        storage.put(key, key.encode(), content_type="text/plain", cache_control="no-cache")
        assert len(storage._made) <= 3
    assert [info.key for info in storage.list()] == sorted(keys)
    assert all((tmp_path / "dest" / key).read_bytes() == key.encode() for key in keys)


def test_put_many_writes_on_threads_and_gives_infos_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "dest")
    threads: set[str] = set()
    write = storage._write

    def spy(key: str, data: bytes, *, durable: bool) -> ObjectInfo:
        threads.add(threading.current_thread().name)
        return write(key, data, durable=durable)

    monkeypatch.setattr(storage, "_write", spy)
    artifacts = [make_artifact(f"t/{i % 7}/{i}.torrent", f"object {i}".encode() * (i + 1)) for i in range(100)]
    infos = storage.put_many(artifacts)
    assert all(name.startswith("local-put") for name in threads) and len(threads) > 1
    assert [info.key for info in infos] == [a.key for a in artifacts]
    assert [info.size for info in infos] == [len(a.data) for a in artifacts]
    assert infos[12] == storage.head("t/5/12.torrent")
    assert (tmp_path / "dest/t/5/12.torrent").read_bytes() == b"object 12" * 13
    assert sorted(p.name for p in (tmp_path / "dest/t/3").iterdir()) == sorted(f"{i}.torrent" for i in range(3, 100, 7))
    # a key given twice in one call: written in order on one thread, the last write stays
    threads.clear()
    twice = [*artifacts[:20], make_artifact("t/0/0.torrent", b"the last write")]
    assert [info.key for info in storage.put_many(twice)] == [a.key for a in twice]
    assert (tmp_path / "dest/t/0/0.torrent").read_bytes() == b"the last write"
    assert threads == {threading.current_thread().name}


def test_put_many_stops_at_the_first_failure_with_its_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    storage.put("blocked", b"a file where a directory is needed", content_type="text/plain", cache_control="x")
    artifacts = [make_artifact(f"ok/{i}.torrent", b"x") for i in range(40)]
    artifacts.insert(20, make_artifact("blocked/a.torrent", b"y"))
    with pytest.raises(StorageError, match="blocked/a.torrent: cannot write"):
        storage.put_many(artifacts)
    assert not list((tmp_path / "dest").rglob("*.tmp"))  # no temp file left behind
