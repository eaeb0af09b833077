"""pipeline.spool: artifacts kept on disk, read back exactly."""

from __future__ import annotations

import hashlib
import tracemalloc
from array import array

import pytest

from pipeline.model import Artifact
from pipeline.objects import make_artifact
from pipeline.spool import Spool, SpooledArtifact


def test_spooled_artifacts_read_back_byte_for_byte_with_their_headers() -> None:
    artifacts = [make_artifact(f"torrents/p/{i}.torrent", bytes([i % 251]) * (i * 37)) for i in range(300)]
    with Spool() as spool:
        refs = spool.add_all(artifacts)
        assert spool.bytes_written == sum(len(a.data) for a in artifacts)
        for artifact, ref in zip(artifacts, refs, strict=True):
            assert ref.sha256 == hashlib.sha256(artifact.data).hexdigest() and ref.size == len(artifact.data)
            assert spool.load(ref) == artifact
        assert spool.load_many(list(reversed(refs))) == list(reversed(artifacts))


def test_a_ref_holds_no_bytes() -> None:
    with Spool() as spool:
        ref = spool.ref(spool.put(Artifact("k", b"x" * 100_000, "application/octet-stream", "no-cache")))
    assert not hasattr(ref, "data") and not hasattr(ref, "__dict__")
    assert isinstance(ref, SpooledArtifact) and ref.offset == 0


def test_refs_are_entry_numbers_made_into_refs_when_read() -> None:
    """SpoolRefs hold numbers: slicing, joining and reordering keep the entries, their keys and digests."""
    artifacts = [make_artifact(f"metalinks/p/{i}.meta4", b"%d" % i) for i in range(10)]
    with Spool() as spool:
        first = spool.add_all(artifacts[:6])
        second = spool.add_all(artifacts[6:])
        joined = first + second
        assert [ref.key for ref in joined] == [a.key for a in artifacts] == list(joined.keys())
        assert [ref.key for ref in joined[2:4]] == [artifacts[2].key, artifacts[3].key]
        assert joined[-1] == spool.ref(9) and joined[-1].sha256 == hashlib.sha256(b"9").hexdigest()
        backwards = spool.refs(reversed(range(10)))
        assert [spool.load(ref) for ref in backwards] == list(reversed(artifacts))
        assert joined[7].content_type == artifacts[7].content_type and len(spool.add_all(())) == 0
        with Spool() as other, pytest.raises(ValueError, match="two spools"):
            joined + other.add_all(artifacts[:1])
        # joined runs of entries stay a range; anything else is an array of 4-byte numbers, in the order given
        assert joined._numbers == range(10) and (spool.add_all(()) + first)._numbers == range(6)
        mixed = second + first + backwards[:2]
        assert [ref.key for ref in mixed] == [a.key for a in artifacts[6:] + artifacts[:6] + artifacts[:7:-1]]
        assert isinstance(mixed._numbers, array) and mixed._numbers.itemsize == 4


def test_an_entry_holds_a_few_bytes_in_memory() -> None:
    """Keys and SHA-256s go to the scratch file, sizes are the distance between offsets: ~10 bytes an entry
    where a SpooledArtifact costs ~260."""
    count = 20_000
    artifacts = [
        make_artifact(f"torrents/pool/main/p{i // 7}/package{i}_1.0_all.deb.torrent", b"%d" % i) for i in range(count)
    ]
    with Spool() as spool:
        tracemalloc.start()
        try:
            refs = spool.add_all(artifacts)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held / count < 16
        for number in (0, 255, 256, 257, count - 1):
            data = artifacts[number].data
            assert refs[number].size == len(data) == spool.size(number)
            assert spool.sha256(number) == hashlib.sha256(data).hexdigest()
            assert spool.load(refs[number]) == artifacts[number]


def test_bytes_put_before_and_after_a_flush_read_back_with_reads_between_puts() -> None:
    """The spool writes its file a megabyte at a time: an entry still in memory, one across the flush and
    one on disk all read back exactly, whether read before the next put or after the last."""
    from pipeline.spool import _FLUSH_AT

    artifacts = [make_artifact(f"torrents/p/{i}.torrent", bytes([i]) * (_FLUSH_AT // 3 + i)) for i in range(8)]
    with Spool() as spool:
        for number, artifact in enumerate(artifacts):
            assert spool.load(spool.ref(spool.put(artifact))) == artifact
            assert spool.load(spool.ref(number // 2)) == artifacts[number // 2]
        assert spool.load_many(spool.refs(range(8))) == artifacts
    with Spool() as spool:
        refs = spool.add_all(artifacts)
        assert 0 < spool._flushed < spool.bytes_written == sum(len(a.data) for a in artifacts)  # some in memory
        assert spool.load_many(reversed(refs)) == artifacts[::-1]


@pytest.mark.parametrize("read_run", [1, 150, 8 << 20])
def test_load_many_reads_each_run_of_entries_that_follow_in_the_file_at_once(
    monkeypatch: pytest.MonkeyPatch, read_run: int
) -> None:
    from pipeline import spool as spool_module

    monkeypatch.setattr(spool_module, "_READ_RUN", read_run)
    artifacts = [make_artifact(f"torrents/p/{i}.torrent", bytes([i]) * (100 + i)) for i in range(10)]
    order = [0, 1, 2, 5, 6, 3, 4, 9, 8, 7]  # runs: 0-2, 5-6, 3-4, then three of one
    reads: list[int] = []
    real = spool_module.os.pread
    with Spool() as spool:
        refs = spool.add_all(artifacts)
        spool.load(refs[0])  # flushed: the reads below are those of load_many
        monkeypatch.setattr(spool_module.os, "pread", lambda fd, n, at: reads.append(n) or real(fd, n, at))
        assert spool.load_many(refs[i] for i in order) == [artifacts[i] for i in order]
    sizes = [len(a.data) for a in artifacts]
    expected = {
        1: [sizes[i] for i in order],  # no run fits: one read an entry
        150: [sizes[i] for i in order],  # two entries are over 200 bytes: still one an entry
        8 << 20: [sum(sizes[0:3]), sum(sizes[5:7]), sum(sizes[3:5]), sizes[9], sizes[8], sizes[7]],
    }[read_run]
    assert reads == expected
