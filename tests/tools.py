"""The real programs a test needs: a missing one fails the test with the fix, never skips it (CI runs
every real-component test; ./bootstrap.sh installs them all)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest


def require_tools(*names: str) -> None:
    """Fail, naming ./bootstrap.sh, unless every program in `names` is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run ./bootstrap.sh (it installs every tool the tests use)")


def require_root(why: str) -> None:
    """Fail unless running as root (CI runs the suite as root)."""
    if os.geteuid() != 0:
        pytest.fail(f"run the tests as root, as CI does: {why}")


def forks_seen(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each fork `pipeline.forked` tries from now on (True: a child started). Threads earlier tests left in this
    process (their servers) are taken as harmless: else they would keep every item in the process."""
    import threading

    from pipeline import forked

    started: list[bool] = []
    real = forked._fork

    def spy(*args: Any) -> Any:
        child = real(*args)
        started.append(child is not None)
        return child

    monkeypatch.setattr(forked, "_fork", spy)
    monkeypatch.setattr(forked, "_HARMLESS", forked._HARMLESS | {t.name for t in threading.enumerate()})
    return started


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren…), read from /proc as the bench's sampler reads it."""
    from bench.harness import _read_stat

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            status = _read_stat(int(entry.name))
            if status is not None:  # else it exited meanwhile
                children.setdefault(status[0], []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`'s process group and the group of every process below it, even those that started a session
    of their own (a benchmark's measured runs do): nothing the test started is left behind."""
    groups = {pid}
    for below in descendants(pid):
        try:
            groups.add(os.getpgid(below))
        except ProcessLookupError:
            continue
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
