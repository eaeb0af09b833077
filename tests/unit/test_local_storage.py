"""pipeline.storage.local: listing, atomic writes, conditional puts."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest

from pipeline.errors import PublishConflictError, StorageError
from pipeline.storage import local
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


def test_a_file_is_put_and_got_in_chunks_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "CHUNK", 1000)
    storage = LocalStorage(tmp_path / "dest")
    data = bytes(range(256)) * 40  # 10,240 bytes: eleven chunks
    with tempfile.TemporaryFile() as source:
        source.write(data)  # put_file reads from the start, wherever the file stands
        info = storage.put_file(
            "private/manifest.zst", source, content_type="application/zstd", cache_control="no-cache"
        )
    assert (tmp_path / "dest/private/manifest.zst").read_bytes() == data
    head = storage.head("private/manifest.zst")
    assert head is not None and (info.size, info.etag) == (head.size, head.etag) == (len(data), head.etag)
    with tempfile.TemporaryFile() as copy:
        copy.write(b"kept: ")
        got = storage.get_file("private/manifest.zst", copy)
        copy.seek(0)
        assert copy.read() == b"kept: " + data  # written at the file's position
    assert got == head
    with tempfile.TemporaryFile() as copy:
        assert storage.get_file("private/missing", copy) is None and copy.tell() == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_every_object_is_readable_by_the_web_server_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Mode 0644 on every object written (plain, from a file, conditional), and the ETag the put returned is
    the stored file's: the mode is set before the stat when it must be set at all."""
    storage = LocalStorage(tmp_path)
    before = os.umask(umask)
    try:
        infos = [
            storage.put("a/b.torrent", b"one", content_type="x", cache_control="y"),
            storage.put_conditional("latest.asc", b"two", content_type="x", cache_control="y", if_match=None),
        ]
        with tempfile.TemporaryFile() as file:
            file.write(b"three")
            infos.append(storage.put_file("c/d.html", file, content_type="x", cache_control="y"))
    finally:
        os.umask(before)
    for info in infos:
        assert os.stat(tmp_path / info.key).st_mode & 0o777 == 0o644
        head = storage.head(info.key)
        assert head is not None and head.etag == info.etag


def test_a_put_makes_missing_directories_and_names_a_file_in_the_way(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    storage.put("torrents/a/b/c/d.torrent", b"1", content_type="x", cache_control="x")
    storage.put("torrents/a/b/e/f.torrent", b"2", content_type="x", cache_control="x")  # parent there, dir not
    assert (tmp_path / "dest/torrents/a/b/c/d.torrent").read_bytes() == b"1"
    assert (tmp_path / "dest/torrents/a/b/e/f.torrent").read_bytes() == b"2"
    (tmp_path / "dest/metalinks").write_text("a file where a directory must be")
    for key in ("metalinks/x.meta4", "metalinks/y/z.meta4"):
        with pytest.raises(StorageError, match=f"{tmp_path}/dest/{key}: cannot write"):
            storage.put(key, b"3", content_type="x", cache_control="x")


def test_a_new_key_is_created_in_place_and_a_held_one_replaced_whole(tmp_path: Path) -> None:
    """A new key is written under its own name (no temp file, no rename); a key that holds a file gets a new
    file renamed over it, so a reader of the old one keeps reading the old bytes."""
    storage = LocalStorage(tmp_path)
    renames: list[str] = []
    real_replace = os.replace

    def counted(src: str, dst: str) -> None:
        renames.append(dst)
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local.os, "replace", counted)
        first = storage.put("torrents/a.torrent", b"one", content_type="x", cache_control="y")
        assert renames == []
        with open(tmp_path / "torrents/a.torrent", "rb") as reader:
            second = storage.put("torrents/a.torrent", b"two!", content_type="x", cache_control="y")
            assert reader.read() == b"one"
        assert renames == [f"{tmp_path}/torrents/a.torrent"]
    assert (tmp_path / "torrents/a.torrent").read_bytes() == b"two!"
    assert first.etag != second.etag and [p.name for p in (tmp_path / "torrents").iterdir()] == ["a.torrent"]


def test_a_write_that_fails_leaves_a_new_key_absent_and_a_held_one_as_it_was(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("browse/index.html", b"old page", content_type="x", cache_control="y")

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell():
                raise OSError(5, "Input/output error")
            return super().read(3)

    for key in ("browse/index.html", "browse/new/index.html"):
        with pytest.raises(StorageError, match=f"{key}: cannot write"):
            storage.put_file(key, Broken(b"new bytes"), content_type="x", cache_control="y")
    assert (tmp_path / "browse/index.html").read_bytes() == b"old page"
    assert not (tmp_path / "browse/new/index.html").exists()
    assert sorted(p.name for p in (tmp_path / "browse").rglob("*")) == ["index.html", "new"]  # no temp file


def test_a_symlink_at_a_key_is_replaced_never_written_through(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "dest")
    (tmp_path / "dest/metalinks").mkdir(parents=True)
    target = tmp_path / "outside.txt"
    target.write_bytes(b"not ours")
    (tmp_path / "dest/metalinks/a.meta4").symlink_to(target)
    (tmp_path / "dest/metalinks/dangling.meta4").symlink_to(tmp_path / "nowhere")
    for key in ("metalinks/a.meta4", "metalinks/dangling.meta4"):
        storage.put(key, b"ours", content_type="x", cache_control="y")
        assert not (tmp_path / "dest" / key).is_symlink() and (tmp_path / "dest" / key).read_bytes() == b"ours"
    assert target.read_bytes() == b"not ours" and not (tmp_path / "nowhere").exists()
