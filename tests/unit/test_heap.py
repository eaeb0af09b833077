"""pipeline.heap: glibc's malloc gives freed buffers back to the system once `bound_heap` ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.heap import bound_heap

ROOT = Path(__file__).resolve().parents[2]

# A freed 16 MiB block raises glibc's dynamic mmap threshold; then 64 buffers of 1 MiB, each followed by a
# small block that stays (above pymalloc's 512 bytes: from malloc), are freed: how much RSS falls.
_PROBE = textwrap.dedent(
    """
    import sys
    from pipeline.heap import bound_heap

    def rss_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    if sys.argv[1] == "bound":
        assert bound_heap()
    big = b"x" * (16 << 20)
    del big
    buffers, kept = [], []
    for number in range(64):
        buffers.append(bytes([number % 251]) * (1 << 20))
        kept.append(bytearray(1024))
    before = rss_kib()
    del buffers
    print((before - rss_kib()) // 1024)
    """
)


def _returned_mib(mode: str) -> int:
    # without MALLOC_* variables: distributed's nanny sets some in the environment of the process it runs in
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


def test_freed_buffers_go_back_to_the_system_once_bounded() -> None:
    assert _returned_mib("bound") >= 56
    assert _returned_mib("default") <= 16  # glibc's default keeps them: what bound_heap is for


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX_"])
def test_the_operators_own_malloc_tuning_wins(name: str) -> None:
    assert bound_heap({name: "65536"}) is False


def test_what_is_left_to_exit_is_out_of_the_collectors_reach_and_still_finalized(tmp_path: Path) -> None:
    # in a process of its own: freezing is for good
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(
        f"""
        import atexit, gc, weakref
        from pipeline.heap import leave_to_exit

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, which only the collector frees
        weakref.finalize(a, open, {str(marker)!r}, "w")  # run at exit, as TemporaryDirectory's cleanup is
        tracked = len(gc.get_objects())
        leave_to_exit()
        assert gc.get_freeze_count() >= tracked, (gc.get_freeze_count(), tracked)
        assert len(gc.get_objects()) < 50  # what the collector would still walk
        print("frozen")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "frozen\n"
    assert marker.exists()
