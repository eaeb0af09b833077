"""pipeline.snapshot.seen: what a walk stat'ed, read back by ascending paths."""

from __future__ import annotations

from pipeline.scratch import own_scratch
from pipeline.snapshot import seen
from pipeline.snapshot.seen import SeenFiles, SeenStat


def test_files_are_found_by_ascending_paths_across_blocks_and_the_others_are_not() -> None:
    with own_scratch():
        files = SeenFiles()
        rows = [(f"pool/{n:05}.deb", f"/m/pool/{n:05}.deb", n, 10 * n, 3, 2**63 + n) for n in range(0, 3000, 3)]
        files.add_rows(rows[:500])
        files.add_rows(rows[500:])
        assert len(files) == 1000
        cursor = files.cursor()
        assert cursor.stat("a") is None  # before the first
        assert cursor.stat("pool/00003.deb") == SeenStat(3, 30, 3, 2**63 + 3)
        assert cursor.stat("pool/00004.deb") is None  # between two
        assert cursor.stat("pool/02997.deb") == SeenStat(2997, 29970, 3, 2**63 + 2997)  # many passed over
        assert cursor.stat("pool/00006.deb") is None  # below the last asked: passed
        assert cursor.stat("pool/02998.deb") is None and cursor.stat("z") is None  # after the last
        every = files.cursor()
        assert all(every.stat(row[0]) == SeenStat(*row[2:]) for row in rows)
        assert SeenFiles().cursor().stat("pool/a") is None
        assert seen.SeenStat._fields == ("st_size", "st_mtime_ns", "st_dev", "st_ino")
