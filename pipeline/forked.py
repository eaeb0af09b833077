"""Work shared with a forked copy of this process: items made two at a time, given back in order.

The build makes every file's record once (`pipeline.records`), on one core while
the other idles: the hashing workers are done and the background writer has not started. A forked child
sees everything the run has built (the file table's columns in the scratch file, read through the
inherited descriptor) and needs none of it sent: it makes every other item and writes each, encoded, to a
pipe; this process makes the others and reads the child's in turn, so the caller gets the same items in
the same order as from one process.

Not used for the listing pages: while they render, the background writer already keeps the other core
busy, and a child rendering pages came to hold ~40 MB of its own at a million files (what it writes of
the pages it shares with the run), against the 300 MB bound.

Whatever the child did not make (it failed on an item, was killed, or could not start) is made here, in
order: an error is raised here exactly as it would be without the child. The child is named
`CHILD_NAME` (`ps -o comm`), dies with this process, and is stopped by its PID and reaped when the
iteration ends, early or not. Nothing is forked when another thread runs (a fork copies only this one, and
a lock another thread held would stay held in the child), but for the HTTP client's deadline watchdog, nor
on one CPU, nor for fewer than `MIN_ITEMS` items.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MIN_ITEMS = 256  # fewer items: a fork (~5 ms for a 150 MB process) is not worth it
SEGMENT = 16384  # items shared with one child (a million-file run's records: ~61 children)
CHILD_NAME = b"mirrorseed-fork"  # the child's name (comm): the bench counts its private memory by it
_LENGTH = struct.Struct("<I")
_PIPE_BYTES = 1 << 20  # the pipe's capacity asked for: the child runs up to ~1 MB ahead
_OUT_BYTES = 1 << 16  # the child writes its items in chunks of about this much
# Threads a fork may leave behind: the HTTP client's deadline watchdog (`pipeline.http.WATCHDOG_THREAD`, alive
# once a request was made: the mirror probes) only shuts down sockets, and holds no lock the child takes. Its
# name, not the constant: importing the HTTP client (ssl) only for it would slow every build.
_HARMLESS = frozenset({"http-deadlines"})
_F_SETPIPE_SZ = 1031
_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


def made_in_order(
    make: Callable[[int], T],
    count: int,
    encode: Callable[[T], bytes],
    decode: Callable[[bytes], T],
) -> Iterator[T]:
    """`make(0)`, …, `make(count - 1)`, in that order; the odd ones made by a forked child when one helps
    (`encode` and `decode` carry an item across), the others here. A child makes at most `SEGMENT` items'
    share, then a new one is forked: a child's own memory grows with each page of the parent's it writes
    to (a fresh object in a freed slot, a reference count), and a new child starts again from none."""
    if not _worth_a_child(count):
        yield from map(make, range(count))
        return
    start = 0
    while start < count:
        stop = start + SEGMENT
        if count - stop < MIN_ITEMS:
            stop = count  # a short tail joins this share
        yield from _made_with_a_child(make, start, stop, encode, decode)
        start = stop


def _made_with_a_child(
    make: Callable[[int], T], start: int, stop: int, encode: Callable[[T], bytes], decode: Callable[[bytes], T]
) -> Iterator[T]:
    """`make(start)`, …, `make(stop - 1)`; every other one (`start + 1`, `start + 3`…) made by a forked child."""
    child = _fork(make, start, stop, encode)
    if child is None:
        yield from map(make, range(start, stop))
        return
    pid, source = child
    number = start
    try:
        for number in range(start, stop):
            if (number - start) % 2 == 0:
                yield make(number)
                continue
            item = _read_item(source)
            if item is None:
                break  # the child stopped: this process makes the rest
            yield decode(item)
        else:
            return
        yield from map(make, range(number, stop))
    finally:
        source.close()
        _stop(pid)


def _worth_a_child(count: int) -> bool:
    if count < MIN_ITEMS or len(os.sched_getaffinity(0)) < 2 or not hasattr(os, "fork"):
        return False
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread() and t.name not in _HARMLESS]
    if others:
        log.debug("%d items made by this process alone: other threads run (%s)", count, ", ".join(others))
        return False
    return True


def _fork(make: Callable[[int], T], start: int, stop: int, encode: Callable[[T], bytes]) -> tuple[int, BinaryIO] | None:
    """The child's PID and the reading end of its pipe; None when no child could be started."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
    parent, libc = os.getpid(), _libc()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:  # the child: never returns
        try:
            _name_and_tie(parent, libc)
            os.close(read_end)
            _child(make, range(start + 1, stop, 2), encode, write_end)
        finally:
            os._exit(1)  # only reached when the child failed before it began: the parent makes every item
    os.close(write_end)
    log.debug("items %d to %d: every other one made by a forked child (pid %d)", start, stop - 1, pid)
    return pid, os.fdopen(read_end, "rb", buffering=_OUT_BYTES)


def _child(make: Callable[[int], T], numbers: range, encode: Callable[[T], bytes], out: int) -> None:
    status, chunk = 1, bytearray()
    try:
        # objects the parent made are never collected here: a collection would touch (and so copy) their pages
        gc.freeze()
        for number in numbers:
            data = encode(make(number))
            chunk += _LENGTH.pack(len(data))
            chunk += data
            if len(chunk) >= _OUT_BYTES:
                _write_all(out, chunk)
                chunk = bytearray()
        status = 0
    except BaseException:  # noqa: BLE001 (the parent makes what is left, and raises what this met)
        pass
    finally:
        with contextlib.suppress(BaseException):
            _write_all(out, chunk)  # the items made before a failure: the parent makes the rest
        os._exit(status)  # no atexit handlers, no flush of buffers this process inherited


def _libc() -> ctypes.CDLL | None:
    """The C library's symbols, loaded before a fork: the child names itself at once (the bench tells a copy of
    the run that holds memory of its own by that name)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _name_and_tie(parent: int, libc: ctypes.CDLL | None) -> None:
    """Name this child (`CHILD_NAME`) and have the kernel kill it when its parent dies."""
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.prctl(_PR_SET_NAME, ctypes.c_char_p(CHILD_NAME), 0, 0, 0)
    die_with_parent(parent, libc)


def die_with_parent(parent: int, libc: ctypes.CDLL | None = None) -> None:
    """Have the kernel kill this process (a child of `parent`) when its parent dies: a killed run leaves no
    child behind. `libc`: the C library's symbols, when loaded already."""
    with contextlib.suppress(OSError, AttributeError):
        (libc or ctypes.CDLL(None, use_errno=True)).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_item(source: BinaryIO) -> bytes | None:
    """The child's next item; None when it stopped before writing it whole."""
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = source.read(size)
    return data if len(data) == size else None


def _stop(pid: int) -> None:
    """Kill the child (it may still be writing: the iteration ended early) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
