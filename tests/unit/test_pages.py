"""pipeline.pages: the run's pages in columns, read back as given."""

from __future__ import annotations

import hashlib
import tracemalloc

from pipeline.objects import browse_directory, browse_key
from pipeline.pages import PageDigests


def hexdigest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_pages_read_back_in_order_with_their_digests() -> None:
    rows = [
        ("browse/index.html", hexdigest("i0"), hexdigest("s0")),
        ("index.html", "", hexdigest("s1")),  # rendered on every run: no inputs
        ("browse/a/index.html", hexdigest("i2"), hexdigest("s2")),
        ("odd", "i3", "s3"),  # not hex: kept as given
        ("browse/b\u00e9/index.html", "", hexdigest("s4").upper()),
        *((f"browse/p/{i}/index.html", hexdigest(f"i{i}"), hexdigest(f"s{i}")) for i in range(600)),  # blocks on disk
    ]
    pages = PageDigests()
    for row in rows:
        pages.add(*row)
    assert len(pages) == len(rows) and list(pages) == rows
    assert list(pages.digests()) == [(key, sha256) for key, _, sha256 in rows]
    assert list(PageDigests()) == []


def test_a_page_costs_a_few_bytes_in_memory() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pages = PageDigests()
        for i in range(20_000):
            pages.add(f"browse/pool/main/{i % 26}/package-{i:06d}/index.html", hexdigest(f"i{i}"), hexdigest(f"{i}"))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(pages) == 20_000 and held / 20_000 < 8  # keys and digests on disk; a tuple of strings: ~300


def test_a_browse_key_names_its_directory_and_no_other_key_does() -> None:
    for directory in ("", "a", "pool/main/h/hello", "x/index.html", "a b/c"):
        assert browse_directory(browse_key(directory)) == directory
    for key in ("browse/", "browse/x.html", "browse//index.html", "index.html", "torrents/a/index.html", "browsex"):
        assert browse_directory(key) is None, key
