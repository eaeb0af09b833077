"""pipeline.manifest: the manifest's key -> entry map in compressed columns answers like the dict it replaces."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from pipeline.manifest import (
    _CACHED,
    BLOCK,
    ManifestEntry,
    ManifestTableBuilder,
    UnsortedError,
    manifest_table,
)


def entries(count: int, seed: int = 1) -> dict[str, ManifestEntry]:
    rng = random.Random(seed)
    found: dict[str, ManifestEntry] = {}
    for i in range(count):
        name = f"pool/main/{rng.choice('abcdefghij')}/pkg{i}_{rng.randrange(9)}.{rng.randrange(99)}_amd64.deb"
        key = f"{rng.choice(('torrents', 'metalinks'))}/{name}"
        found[key] = ManifestEntry(f"{rng.getrandbits(256):064x}", f"{rng.getrandbits(64):x}-{i}", i * 7, 1.5e9 + i)
    return found


@pytest.mark.parametrize("count", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 17])
def test_the_table_answers_like_the_dict(count: int) -> None:
    expected = entries(count)
    builder = ManifestTableBuilder()
    for key in sorted(expected):
        entry = expected[key]
        builder.add(key, entry.sha256, entry.etag, entry.size, entry.referenced)
    table = builder.build()
    assert len(table) == count and list(table) == sorted(expected)
    assert list(table.entries()) == sorted(expected.items())
    assert dict(table.items()) == expected and table == expected
    shuffled = list(expected)
    random.Random(2).shuffle(shuffled)
    for key in shuffled:  # out of order: each lookup decodes its block (or finds it among the last decoded)
        assert table[key] == expected[key] and key in table
    for missing in ("", "a", "metalinks/", "torrents/pool/main/a/pkg", "zzz", *(k + "x" for k in shuffled[:20])):
        assert missing not in table and table.get(missing) is None
        with pytest.raises(KeyError):
            table[missing]
    assert 5 not in table


def test_a_key_given_again_replaces_its_entry_at_a_block_end_too() -> None:
    builder = ManifestTableBuilder()
    keys = [f"k{i:04}" for i in range(2 * BLOCK)]
    for i, key in enumerate(keys):
        builder.add(key, "a" * 64, f"e{i}", i, 1.0)
        if i in (0, 5, BLOCK - 1, BLOCK):  # the last entry of a full block, and the first of the next
            builder.add(key, "b" * 64, f"again{i}", -i, 2.0)
    table = builder.build()
    assert list(table) == keys
    for i in (0, 5, BLOCK - 1, BLOCK):
        assert table[keys[i]] == ManifestEntry("b" * 64, f"again{i}", -i, 2.0)
    assert table[keys[1]] == ManifestEntry("a" * 64, "e1", 1, 1.0)


def test_keys_below_the_last_are_refused_and_manifest_table_sorts_them() -> None:
    builder = ManifestTableBuilder()
    builder.add("b", "a" * 64, "e", 1, 1.0)
    with pytest.raises(UnsortedError):
        builder.add("a", "a" * 64, "e", 1, 1.0)
    one, two = ManifestEntry("1" * 64, "e1", 1, 1.0), ManifestEntry("2" * 64, "e2", 2, 2.0)
    table = manifest_table([("b", one), ("a", two), ("b", two)])  # a key twice: the last
    assert list(table.entries()) == [("a", two), ("b", two)]


def test_odd_digests_and_separator_characters_are_kept_as_read() -> None:
    builder = ManifestTableBuilder()
    odd = {
        "a": ManifestEntry("A" * 64, "plain", 1, 1.0),  # upper case: not the hex the spool gives
        "b": ManifestEntry("s", "with\0nul", 2, 2.0),  # a block holding the separator stays as it is
        "c": ManifestEntry("", "", 0, 0.0),
    }
    for key, entry in odd.items():
        builder.add(key, entry.sha256, entry.etag, entry.size, entry.referenced)
    assert dict(builder.build().entries()) == odd


def test_only_a_few_decoded_blocks_are_kept() -> None:
    expected = entries(20 * BLOCK)
    table = manifest_table(expected.items())
    for key in expected:
        assert table[key] == expected[key]
    assert 0 < len(table._cache) <= _CACHED


def test_an_entry_costs_a_fraction_of_the_dict() -> None:
    expected = entries(20_000)
    rows = sorted((key, e.sha256, e.etag, e.size, e.referenced) for key, e in expected.items())
    tracemalloc.start()
    try:
        builder = ManifestTableBuilder()
        for row in rows:
            builder.add(*row)
        table = builder.build()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == len(expected)
    # on disk (pipeline.scratch): memory keeps a first key and a place a block. A dict: ~470 bytes an entry
    assert held / len(expected) < 8
