"""pipeline.seed without aria2: which packages are seeded, and the torrent aria2 is given."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.bencode import decode_dict
from pipeline.errors import SeedError
from pipeline.model import PackageRecord
from pipeline.seed import seed_metainfo, seed_order

INFO = b"d6:lengthi5e4:name5:a.bin12:piece lengthi16384e6:pieces20:" + b"\x01" * 20 + b"e"
TORRENT = b"d8:announce9:http://t/7:comment1:x4:info" + INFO + b"8:url-listl11:http://m/a/ee"


def record(path: str, size: int, infohash: str | None = "00" * 20) -> PackageRecord:
    return PackageRecord(
        path=path, size=size, sha256="0" * 64, infohash=infohash, piece_size=16384 if infohash else None,
        torrent=f"torrents/{path}.torrent" if infohash else None, metalink=f"metalinks/{path}.meta4",
        magnet=None,
    )  # fmt: skip


def test_seed_order_is_newest_file_first_bounded_and_skips_what_is_not_there(tmp_path: Path) -> None:
    for i, name in enumerate(["old", "mid", "new", "resized"]):
        (tmp_path / name).write_bytes(b"x" * 10)
        os.utime(tmp_path / name, ns=(i * 10**9, i * 10**9))
    records = [record("old", 10), record("mid", 10), record("new", 10), record("resized", 11), record("gone", 10),
               record("empty", 0, infohash=None)]  # fmt: skip
    chosen, skipped = seed_order(tmp_path, records, 2)
    assert [r.path for r in chosen] == ["new", "mid"] and skipped == 4
    chosen, skipped = seed_order(tmp_path, records, 100)
    assert [r.path for r in chosen] == ["new", "mid", "old"] and skipped == 3


def test_seed_metainfo_keeps_info_and_announce_and_drops_the_url_list() -> None:
    infohash = hashlib.sha1(INFO).hexdigest()
    metainfo, info = seed_metainfo(TORRENT, infohash=infohash, where="t.torrent")
    decoded = decode_dict(metainfo)
    assert decoded.info == INFO and info[b"name"] == b"a.bin"
    assert set(decoded.value) == {b"announce", b"info"}  # no url-list: aria2 never fetches from a mirror
    with pytest.raises(SeedError, match=r"t.torrent: its infohash is not 1111"):
        seed_metainfo(TORRENT, infohash="11" * 20, where="t.torrent")
    with pytest.raises(SeedError, match=r"t.torrent: not a torrent"):
        seed_metainfo(b"garbage", infohash=infohash, where="t.torrent")
