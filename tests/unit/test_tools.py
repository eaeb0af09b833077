"""The tests' own process helper: `kill_tree` leaves nothing behind, even a process in a session of its own."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.tools import descendants, kill_tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_tree_kills_a_grandchild_in_a_session_of_its_own() -> None:
    shell = subprocess.Popen(
        ["bash", "-c", "setsid sleep 300 & sleep 300 & wait"], stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while len(below := descendants(shell.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(below) == 2, below
        kill_tree(shell.pid)
        shell.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in below), below
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait(timeout=10)
